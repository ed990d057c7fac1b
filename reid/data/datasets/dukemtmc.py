"""DukeMTMC-reID (Zheng et al., ICCV 2017): 1,404 identities from 8 cameras."""

from __future__ import annotations

from reid.data.datasets.base import DATASET_REGISTRY, README_HINT, MarketStyleSource


@DATASET_REGISTRY.register("dukemtmcreid")
@DATASET_REGISTRY.register("dukemtmc")
class DukeMTMCreID(MarketStyleSource):
    """``<ROOT>/DukeMTMC-reID/`` with the Market layout and names like ``0001_c2_f0046182.jpg``."""

    folders = ("DukeMTMC-reID", "dukemtmc-reid", "dukemtmc-reid/DukeMTMC-reID")
    num_cameras = 8
    example_name = "0001_c2_f0046182.jpg"
    how_to_get = (
        "DukeMTMC-reID is distributed through the layumi/DukeMTMC-reID_evaluation repository; " + README_HINT
    )
