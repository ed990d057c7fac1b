"""Optimizers and learning-rate schedules."""

from reid.solver.lr_scheduler import build_lr_scheduler, lr_factor
from reid.solver.optimizer import OPTIMIZER_REGISTRY, build_optimizer, parameter_groups

__all__ = ["OPTIMIZER_REGISTRY", "build_optimizer", "parameter_groups", "build_lr_scheduler", "lr_factor"]
