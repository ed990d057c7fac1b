"""Learning-rate schedule: linear warm-up (stepped per iteration), then multistep or cosine decay, or none
(``constant``)."""

from __future__ import annotations

import math

import torch
from yacs.config import CfgNode


def lr_factor(cfg: CfgNode, epoch: float) -> float:
    """Multiplier of SOLVER.BASE_LR at a fractional epoch (e.g. 2.5 = halfway through the third epoch).

    The warm-up ramps linearly from WARMUP_FACTOR to 1 over WARMUP_EPOCHS; decay uses whole epochs, so
    multistep with STEPS (40, 70) gives 0.1x from the first iteration of epoch 40 (0-based) on.
    """
    s = cfg.SOLVER
    if s.SCHED == "constant":
        decay = 1.0
    elif s.SCHED == "cosine":
        start = s.WARMUP_EPOCHS
        progress = min(max(epoch - start, 0.0) / max(s.MAX_EPOCHS - start, 1e-12), 1.0)
        decay = s.MIN_LR_FACTOR + (1 - s.MIN_LR_FACTOR) * 0.5 * (1 + math.cos(math.pi * progress))
    else:
        decay = s.GAMMA ** sum(1 for step in s.STEPS if math.floor(epoch) >= step)
    if epoch < s.WARMUP_EPOCHS:
        alpha = epoch / s.WARMUP_EPOCHS
        decay *= s.WARMUP_FACTOR * (1 - alpha) + alpha
    return decay


def build_lr_scheduler(cfg: CfgNode, optimizer: torch.optim.Optimizer,
                       iters_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: lr_factor(cfg, it / iters_per_epoch))
