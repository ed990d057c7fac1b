"""Optimizers and learning-rate schedules."""

from reid.solver.lr_scheduler import build_lr_scheduler, lr_factor
from reid.solver.optimizer import build_center_optimizer, build_optimizer, parameter_groups

__all__ = ["build_optimizer", "build_center_optimizer", "parameter_groups", "build_lr_scheduler", "lr_factor"]
