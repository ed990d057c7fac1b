"""Optimizers with BoT's parameter groups: weights, normalisation parameters and biases apart."""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

_NORM_TYPES = (nn.BatchNorm1d, nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def parameter_groups(cfg: CfgNode, model: nn.Module) -> list[dict]:
    """One group per (lr, weight decay) pair so SOLVER.WEIGHT_DECAY_NORM/BIAS and BIAS_LR_FACTOR apply."""
    s = cfg.SOLVER
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    seen: set[int] = set()
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or id(param) in seen:
                continue  # e.g. the BNNeck's frozen bias
            seen.add(id(param))
            # As in BoT, the bias lr factor applies to every bias, normalisation layers' included.
            lr = s.BASE_LR * s.BIAS_LR_FACTOR if name == "bias" else s.BASE_LR
            if isinstance(module, _NORM_TYPES):
                key = (lr, s.WEIGHT_DECAY_NORM)
            else:
                key = (lr, s.WEIGHT_DECAY_BIAS if name == "bias" else s.WEIGHT_DECAY)
            groups.setdefault(key, []).append(param)
    return [{"params": params, "lr": lr, "initial_lr": lr, "weight_decay": wd} for (lr, wd), params in groups.items()]


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER over the model's trainable parameters."""
    groups = parameter_groups(cfg, model)
    name = cfg.SOLVER.OPTIMIZER
    if name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.SOLVER.BASE_LR, momentum=cfg.SOLVER.MOMENTUM,
                               nesterov=cfg.SOLVER.NESTEROV)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.SOLVER.BASE_LR)
    return torch.optim.Adam(groups, lr=cfg.SOLVER.BASE_LR)


def build_center_optimizer(cfg: CfgNode, center_loss: nn.Module | None) -> torch.optim.Optimizer | None:
    """BoT trains the centers with their own SGD at MODEL.CENTER.LR, undoing the loss weight on the gradient."""
    if center_loss is None:
        return None
    return torch.optim.SGD(center_loss.parameters(), lr=cfg.MODEL.CENTER.LR)
