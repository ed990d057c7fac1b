"""No regulariser (the baseline), and Random Erasing, which regularises the input in the data transforms."""

from __future__ import annotations

from torch import nn
from yacs.config import CfgNode

from reid.modeling.regularizers import REGULARIZER_REGISTRY
from reid.utils.errors import ConfigError


@REGULARIZER_REGISTRY.register("none")
def no_regularizer() -> nn.Module:
    """The baseline: nothing at the stage."""
    return nn.Identity()


def _input_level_only() -> None:
    """Nothing goes into the network: the data transforms erase (INPUT.RE_PROB, INPUT.RE_AREA)."""
    return None


def _check_random_erasing(cfg: CfgNode) -> None:
    if cfg.INPUT.RE_PROB <= 0:
        raise ConfigError(
            "MODEL.REGULARIZER.NAME random_erasing regularises the input, not a feature map: it needs "
            "INPUT.RE_PROB > 0 (BoT: 0.5)."
        )


REGULARIZER_REGISTRY.register("random_erasing", check=_check_random_erasing)(_input_level_only)
