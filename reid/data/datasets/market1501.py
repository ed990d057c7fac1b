"""Market-1501 (Zheng et al., ICCV 2015): 1,501 identities from 6 cameras."""

from __future__ import annotations

from reid.data.datasets.base import DATASET_REGISTRY, README_HINT, MarketStyleSource


@DATASET_REGISTRY.register("market1501")
class Market1501(MarketStyleSource):
    """``<ROOT>/market1501/`` (or ``Market-1501-v15.09.15/``), names like ``0002_c1s1_000451_03.jpg``."""

    folders = ("market1501", "Market-1501-v15.09.15", "market1501/Market-1501-v15.09.15")
    num_cameras = 6
    example_name = "0002_c1s1_000451_03.jpg"
    how_to_get = "Market-1501 is distributed on Liang Zheng's page; " + README_HINT
