"""Center loss (Wen et al., 2016), with the centers trained by their own optimiser as in BoT."""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from reid.config import ConfigNode, Option
from reid.modeling.losses import LOSS_REGISTRY
from reid.utils import comm

CENTER_CONFIG = ConfigNode(
    "MODEL.CENTER",
    WEIGHT=Option(5e-4, "weight of the center loss (BoT: 5e-4)", range=(0.0, None)),
    LR=Option(0.5, "learning rate of the centers' own SGD optimizer (BoT: 0.5)", range=(0.0, None)),
)


@LOSS_REGISTRY.register("center", config=CENTER_CONFIG)
class CenterLoss(nn.Module):
    """Mean squared distance of each feature to its class center.

    The centers are not in the model's optimiser: :meth:`step` updates them with their own SGD at ``lr``,
    the loss weight divided out of their gradient (BoT), after the model's step.
    """

    input_key = "feat"

    def __init__(self, num_classes: int, feat_dim: int, weight: float = 1.0, lr: float = 0.5) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))
        self.weight = weight
        self.optimizer = torch.optim.SGD([self.centers], lr=lr)

    @classmethod
    def from_config(cls, cfg: CfgNode, num_classes: int, feat_dim: int) -> dict:
        return {"num_classes": num_classes, "feat_dim": feat_dim, "weight": cfg.MODEL.CENTER.WEIGHT,
                "lr": cfg.MODEL.CENTER.LR}

    def forward(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return (features.float() - self.centers[labels]).pow(2).sum(1).clamp(1e-12, 1e12).mean()

    def step(self, grad_scale: float | None = None) -> None:
        """One SGD step of the centers from the gradient of ``weight * loss`` (``grad_scale``: AMP's scale)."""
        grad = self.centers.grad
        if grad is None or self.weight == 0:
            return
        if grad_scale is not None:
            grad /= grad_scale
            if not bool(torch.isfinite(grad).all()):  # the scaler skips the model's step on an overflow: skip too
                return
        if comm.get_world_size() > 1:  # the centers live outside DDP: average their gradient by hand
            torch.distributed.all_reduce(grad)
            grad /= comm.get_world_size()
        grad /= self.weight
        self.optimizer.step()

    def optimizer_state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_optimizer_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state)
