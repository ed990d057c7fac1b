"""The ID loss: cross-entropy with label smoothing (BoT's CrossEntropyLabelSmooth)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from yacs.config import CfgNode

from reid.config import ConfigNode, Option
from reid.modeling.losses import LOSS_REGISTRY

CE_CONFIG = ConfigNode(
    "MODEL.CE",
    EPSILON=Option(0.1, "label-smoothing epsilon; 0 = plain cross-entropy", range=(0.0, 1.0)),
    WEIGHT=Option(1.0, "weight of the ID loss in the total", range=(0.0, None)),
)


@LOSS_REGISTRY.register("ce", config=CE_CONFIG)
class LabelSmoothingCrossEntropy(nn.Module):
    """Cross-entropy of the classifier's logits; ``epsilon`` of the target mass is spread over all classes."""

    input_key = "logits"

    def __init__(self, epsilon: float = 0.1, weight: float = 1.0) -> None:
        super().__init__()
        self.epsilon = epsilon
        self.weight = weight

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int = 0, feat_dim: int = 0) -> dict:
        return {"epsilon": cfg.MODEL.CE.EPSILON, "weight": cfg.MODEL.CE.WEIGHT}

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.float(), labels, label_smoothing=self.epsilon)
