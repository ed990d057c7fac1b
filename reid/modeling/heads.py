"""The BoT head: global pooling, BNNeck and a bias-free classifier."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GeneralizedMeanPooling(nn.Module):
    """GeM pooling (Radenovic et al.): ``mean(x^p)^(1/p)`` with a learnable ``p``; p=1 is average pooling."""

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(p))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(x.clamp(min=self.eps).pow(self.p), 1).pow(1.0 / self.p)


class BNNeckHead(nn.Module):
    """Pool -> feature (for the triplet loss) -> BatchNorm1d with a frozen zero bias -> classifier.

    Training returns a dict with ``logits`` (None without classifier), ``feat`` (pre-BN) and
    ``bn_feat``; evaluation returns the inference feature chosen by ``neck_feat``.
    """

    def __init__(self, in_channels: int, num_classes: int, pooling: str = "avg", neck: str = "bnneck",
                 neck_feat: str = "after") -> None:
        super().__init__()
        self.pool = GeneralizedMeanPooling() if pooling == "gem" else nn.AdaptiveAvgPool2d(1)
        self.neck_feat = neck_feat
        if neck == "bnneck":
            self.bottleneck = nn.BatchNorm1d(in_channels)
            nn.init.ones_(self.bottleneck.weight)
            nn.init.zeros_(self.bottleneck.bias)
            self.bottleneck.bias.requires_grad_(False)  # BNNeck: a shift would undo the normalisation's benefit
        else:
            self.bottleneck = nn.Identity()
        self.classifier = nn.Linear(in_channels, num_classes, bias=False) if num_classes > 0 else None
        if self.classifier is not None:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def forward(self, features: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor | None]:
        feat = self.pool(features).flatten(1)
        bn_feat = self.bottleneck(feat)
        if not self.training:
            return bn_feat if self.neck_feat == "after" else feat
        logits = self.classifier(bn_feat) if self.classifier is not None else None
        return {"logits": logits, "feat": feat, "bn_feat": bn_feat}
