"""Training loop, hooks, and the train/test entry functions."""

from reid.engine.trainer import HookBase, NonFiniteLossError, Trainer

__all__ = ["Trainer", "HookBase", "NonFiniteLossError"]
