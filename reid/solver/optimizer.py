"""Optimizers with BoT's parameter groups: weights, normalisation parameters and biases apart."""

from __future__ import annotations

import torch
from torch import nn
from yacs.config import CfgNode

from reid.config import ComponentRegistry

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


#: Optimisers by name (``SOLVER.OPTIMIZER``); ``from_config(cfg, params)`` gives their arguments.
OPTIMIZER_REGISTRY = ComponentRegistry("optimizer", selector="SOLVER.OPTIMIZER")


def _common(cfg: CfgNode, params: list[dict]) -> dict:
    return {"params": params, "lr": cfg.SOLVER.BASE_LR}


OPTIMIZER_REGISTRY.register("adam", from_config=_common)(torch.optim.Adam)
OPTIMIZER_REGISTRY.register("adamw", from_config=_common)(torch.optim.AdamW)
OPTIMIZER_REGISTRY.register("sgd", from_config=lambda cfg, params: {
    **_common(cfg, params), "momentum": cfg.SOLVER.MOMENTUM, "nesterov": cfg.SOLVER.NESTEROV})(torch.optim.SGD)


def build_optimizer(cfg: CfgNode, model: nn.Module) -> torch.optim.Optimizer:
    """SOLVER.OPTIMIZER over the model's trainable parameters, in BoT's parameter groups."""
    return OPTIMIZER_REGISTRY.build(cfg, params=parameter_groups(cfg, model))
