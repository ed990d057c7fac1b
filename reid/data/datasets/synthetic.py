"""The synthetic domains of ``tools/make_synthetic.py``: Market- and Duke-style trees for offline runs."""

from __future__ import annotations

from reid.data.datasets.base import DATASET_REGISTRY
from reid.data.datasets.dukemtmc import DukeMTMCreID
from reid.data.datasets.market1501 import Market1501

_GENERATE = (
    "Generate it with `python tools/make_synthetic.py --style {style} --root {{root}}` (or `make data`)."
)


@DATASET_REGISTRY.register("synthetic_market")
class SyntheticMarket(Market1501):
    """Market-1501 layout (6 cameras, 0000 distractors, -1 junk) under ``<ROOT>/synthetic_market/``."""

    folders = ("synthetic_market",)
    how_to_get = _GENERATE.format(style="market")


@DATASET_REGISTRY.register("synthetic_duke")
class SyntheticDuke(DukeMTMCreID):
    """DukeMTMC-reID layout (8 cameras) under ``<ROOT>/synthetic_duke/``."""

    folders = ("synthetic_duke",)
    how_to_get = _GENERATE.format(style="duke")
