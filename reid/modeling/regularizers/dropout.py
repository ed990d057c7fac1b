"""Element-wise dropout and channel-wise (spatial) dropout, the classic comparison points of the paper."""

from __future__ import annotations

from torch import nn

from reid.config import ConfigNode, Option
from reid.modeling.regularizers import REGULARIZER_REGISTRY

DROPOUT_CONFIG = ConfigNode(
    "MODEL.DROPOUT",
    P=Option(0.1, 'drop probability of "dropout" (elements) and "spatial_dropout" (channels)', range=(0.0, 1.0)),
)


def _from_config(cfg) -> dict:
    return {"p": cfg.MODEL.DROPOUT.P}


REGULARIZER_REGISTRY.register("dropout", config=DROPOUT_CONFIG, from_config=_from_config)(nn.Dropout)
REGULARIZER_REGISTRY.register("spatial_dropout", config=DROPOUT_CONFIG, from_config=_from_config)(nn.Dropout2d)
