"""Training losses, registered by name; ``MODEL.LOSSES`` selects any of them and :class:`ReIDLoss` sums them.

Each loss is one module of this package, registered in :data:`LOSS_REGISTRY` with the config node it reads
(``MODEL.CE``, ``MODEL.TRIPLET``, ``MODEL.CENTER``); every module here is imported below, so adding a loss
is one file. A loss is an ``nn.Module`` with:

- ``input_key``: which output of the model it reads (``"logits"``, ``"feat"`` or ``"bn_feat"``);
- ``weight``: its weight in the total;
- ``forward(inputs, labels)``: the unweighted loss;
- optionally ``step(grad_scale)``, ``optimizer_state_dict()`` and ``load_optimizer_state_dict(state)`` when
  it trains parameters of its own with its own optimiser (the center loss's centers, as in BoT).

``from_config(cfg, num_classes, feat_dim)`` gives its keyword arguments (see reid.config.configurable).
"""

from __future__ import annotations

import importlib
import pkgutil

import torch
from torch import nn
from yacs.config import CfgNode

from reid.config import ComponentRegistry

#: Losses by name; ``MODEL.LOSSES`` lists the selected ones.
LOSS_REGISTRY = ComponentRegistry("loss", selector="MODEL.LOSSES")


class ReIDLoss(nn.Module):
    """The configured loss terms (``MODEL.LOSSES``), each weighted and reported separately as ``loss_<name>``.

    Each term is a submodule named after its loss (``self.center``), so checkpoints keep the keys they had.
    """

    def __init__(self, cfg: CfgNode, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.names = tuple(dict.fromkeys(cfg.MODEL.LOSSES))
        for name in self.names:
            self.add_module(name, LOSS_REGISTRY.build(cfg, name, num_classes=num_classes, feat_dim=feat_dim))

    def terms(self) -> dict[str, nn.Module]:
        return {name: getattr(self, name) for name in self.names}

    def forward(self, outputs: dict[str, torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted terms keyed ``loss_<name>``; their sum is the objective."""
        return {f"loss_{name}": term.weight * term(outputs[term.input_key], labels)
                for name, term in self.terms().items()}

    def step(self, grad_scale: float | None = None) -> None:
        """The optimiser steps of terms that train their own parameters (after the model's step).

        ``grad_scale``: the AMP gradient scale of this step (None without a scaler); such a term divides it out
        and skips its step on an overflow, as the model's optimiser does.
        """
        for term in self.terms().values():
            if hasattr(term, "step"):
                term.step(grad_scale)

    def optimizer_state_dict(self) -> dict | None:
        """The own optimisers' states (checkpoints store them as ``center_optimizer``; None when no term has one)."""
        states = {name: term.optimizer_state_dict() for name, term in self.terms().items()
                  if hasattr(term, "optimizer_state_dict")}
        return next(iter(states.values())) if len(states) == 1 else (states or None)

    def load_optimizer_state_dict(self, state: dict | None) -> None:
        owners = [term for term in self.terms().values() if hasattr(term, "load_optimizer_state_dict")]
        if state and owners:
            if len(owners) == 1:
                owners[0].load_optimizer_state_dict(state)
            else:
                for name, term in self.terms().items():
                    if hasattr(term, "load_optimizer_state_dict") and name in state:
                        term.load_optimizer_state_dict(state[name])


# Registration happens at import: every module of this package is one loss.
for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module
