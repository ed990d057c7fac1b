"""A short training loop; logging, checkpointing and evaluation plug in as hooks (detectron2 style).

The trainer owns what every step touches (model, criterion, optimiser, schedule, precision) and the
counters; anything else that must survive ``--resume`` belongs to a hook and travels through its
``state_dict()`` / ``load_state_dict()`` (the best metric, the class count...), so nothing sets trainer
attributes from outside.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping

import torch
from torch import nn
from yacs.config import CfgNode

from reid.engine.precision import Precision
from reid.utils import comm
from reid.utils.checkpoint import CHECKPOINT_FORMAT, get_rng_state, set_rng_state, unwrap_model
from reid.utils.env import seed_everything
from reid.utils.errors import ReIDError, summarize_exception

logger = logging.getLogger("reid.engine")


class NonFiniteLossError(ReIDError):
    """The loss became NaN or infinite; training stops instead of producing a NaN model."""


class HookBase:
    """Override any of these; ``self.trainer`` is set when the hook is registered.

    ``state_dict()`` returns the entries this hook adds to a checkpoint (top-level keys, unique across
    hooks); ``load_state_dict(state)`` gets the whole checkpoint back on ``--resume``.
    """

    trainer: Trainer

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None: ...


class Trainer:
    """Epoch/iteration loop over a (PK-sampled) loader with AMP, channels_last and DDP when configured.

    ``loader``: an iterable of batch dicts (``images``, ``pids``); when it has ``set_epoch(epoch)`` it is
    called before each epoch, and a ``generator`` attribute (a DataLoader's) is re-seeded per epoch.
    ``criterion``: maps (model outputs, pids) to named loss terms; it may train parameters of its own with
    its own optimiser (``step(grad_scale)``, :class:`reid.modeling.ReIDLoss`).

    State the hooks read: ``epoch`` (0-based, current), ``iter`` (global, completed steps),
    ``iters_per_epoch``, ``max_epochs``, ``last_metrics`` (floats of the last step) and
    ``last_checkpoint`` (path or None).
    """

    def __init__(self, cfg: CfgNode, model: nn.Module, criterion: nn.Module | None, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler | None, loader: Iterable, device: torch.device,
                 hooks: Iterable[HookBase] = ()) -> None:
        self.cfg = cfg
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.loader = loader
        self.device = device
        self.precision = Precision.from_config(cfg, device)
        self.grad_clip = cfg.SOLVER.GRAD_CLIP
        self.iters_per_epoch = len(loader)  # type: ignore[arg-type]
        self.max_epochs = cfg.SOLVER.MAX_EPOCHS
        self.start_epoch = 0
        self.epoch = 0
        self.iter = 0
        self.last_metrics: dict[str, float] = {}
        self.last_checkpoint: str | None = None
        self.hooks: list[HookBase] = []
        for hook in hooks:
            self.register_hook(hook)

    def register_hook(self, hook: HookBase) -> None:
        hook.trainer = self
        self.hooks.append(hook)

    def _call_hooks(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def train(self) -> None:
        self._call_hooks("before_train")
        for epoch in range(self.start_epoch, self.max_epochs):
            self.epoch = epoch
            self._seed_epoch(epoch)
            self.model.train()
            self._call_hooks("before_epoch")
            for batch in self.loader:
                self.run_step(batch)
                self.iter += 1
                self._call_hooks("after_step")
            self._call_hooks("after_epoch")
        self._call_hooks("after_train")

    def _seed_epoch(self, epoch: int) -> None:
        """Re-seed from (seed, epoch): each epoch's randomness (sampling, augmentation, LFM masks) is then
        independent of what came before, so a resumed run matches an uninterrupted one. Each DDP rank gets
        its own stream (far from other epochs' seeds), or every rank would draw the same masks for its
        samples; rank 0 keeps the single-process seed."""
        epoch_seed = self.cfg.SEED * 1_000_003 + epoch
        seed_everything(epoch_seed + comm.get_rank() * 2**48)
        if getattr(self.loader, "generator", None) is not None:  # loader workers' base seeds
            self.loader.generator.manual_seed(epoch_seed * 64 + comm.get_rank())
        if hasattr(self.loader, "set_epoch"):
            self.loader.set_epoch(epoch)

    def distribute(self, device: torch.device) -> None:
        """Wrap the model in DistributedDataParallel (call once the process group exists and weights are final)."""
        self.model = torch.nn.parallel.DistributedDataParallel(
            self.model, device_ids=[device.index] if device.type == "cuda" else None)

    def compile(self) -> None:
        """``torch.compile`` the training model; it compiles at the first step, where :meth:`run_step` falls
        back to the eager model, with a message, if compilation fails."""
        self._eager_model = self.model
        self.model = torch.compile(self.model, dynamic=False)

    def run_step(self, batch: dict) -> None:
        if getattr(self, "_eager_model", None) is None:
            return self._step(batch)
        try:
            self._step(batch)
        except Exception as exc:  # compilation happens here, at the first call: any backend error
            if isinstance(exc, NonFiniteLossError):
                raise
            logger.warning(f"torch.compile failed ({summarize_exception(exc)}); training goes on without it. Set "
                           "SOLVER.COMPILE off to skip trying.")
            self.model, self._eager_model = self._eager_model, None
            self.optimizer.zero_grad(set_to_none=True)
            self.criterion.zero_grad(set_to_none=True)
            self._step(batch)
        else:
            self._eager_model = None  # compiled and ran: nothing left to fall back to
        return None

    def _step(self, batch: dict) -> None:
        images = self.precision.prepare(batch["images"].to(self.device, non_blocking=True))
        pids = batch["pids"].to(self.device, non_blocking=True)
        with self.precision.autocast():
            outputs = self.model(images)
        losses = self.criterion(outputs, pids)
        self.last_metrics = self._logged_values(losses, outputs, pids)
        self.optimizer.zero_grad(set_to_none=True)
        self.criterion.zero_grad(set_to_none=True)
        self.precision.backward_and_step(sum(losses.values()), self.optimizer, self.model.parameters(),
                                         self.grad_clip, then=getattr(self.criterion, "step", None))
        if self.scheduler is not None:
            self.scheduler.step()

    def _logged_values(self, losses: dict[str, torch.Tensor], outputs: dict, pids: torch.Tensor) -> dict[str, float]:
        """Every logged number of the step, checked finite. They leave the device in one transfer (one
        synchronisation per step on CUDA) and, under DDP, are averaged over ranks, so a NaN on one rank
        stops all of them together instead of leaving the others waiting in the next all-reduce."""
        logged = dict(losses, loss=sum(losses.values()))
        if outputs.get("logits") is not None:
            logged["acc"] = (outputs["logits"].detach().argmax(1) == pids).float().mean()
        stacked = torch.stack([v.detach().float() for v in logged.values()])
        values = dict(zip(logged, comm.all_reduce_mean(stacked).tolist()))
        values["lr"] = self.optimizer.param_groups[0]["lr"]  # the lr this step trained with
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                f"Non-finite loss at epoch {self.epoch + 1}, iteration {self.iter + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k.startswith("loss_"))
                + f". Last checkpoint: {self.last_checkpoint or 'none written yet'}. Lower SOLVER.BASE_LR, "
                "check the data, or try SOLVER.AMP False."
            )
        return values

    # ---------------------------------------------------------------------------------------------
    # Checkpoint state: the trainer's own entries, plus every hook's.
    def state_dict(self) -> dict:
        """What ``--resume`` needs, as weights_only-safe values, in the training checkpoint format."""
        state = {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap_model(self.model).state_dict(),
            "criterion": self.criterion.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "center_optimizer": getattr(self.criterion, "optimizer_state_dict", lambda: None)(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.precision.state_dict(),
            "epoch": self.epoch + 1,  # completed epochs: training resumes at this 0-based epoch
            "iteration": self.iter,
            "rng": get_rng_state(),
        }
        for hook in self.hooks:
            entries = hook.state_dict()
            clash = set(entries) & set(state)
            if clash:
                raise KeyError(f"{type(hook).__name__} adds checkpoint entries that already exist: {sorted(clash)}")
            state.update(entries)
        return state

    def load_state_dict(self, state: Mapping, source: str | None = None) -> None:
        """Restore a :meth:`state_dict` (the model's weights are checked by the caller, who names the file);
        ``source``: the checkpoint file it came from, which becomes :attr:`last_checkpoint`."""
        self.criterion.load_state_dict(state["criterion"])
        self.optimizer.load_state_dict(state["optimizer"])
        if hasattr(self.criterion, "load_optimizer_state_dict"):
            self.criterion.load_optimizer_state_dict(state.get("center_optimizer"))
        self.scheduler.load_state_dict(state["scheduler"])
        self.precision.load_state_dict(state["scaler"])
        set_rng_state(state["rng"])
        self.start_epoch = state["epoch"]
        self.epoch = state["epoch"] - 1  # the last epoch completed (0-based), until training goes on
        self.iter = state["iteration"]
        if source is not None:
            self.last_checkpoint = source
        for hook in self.hooks:
            hook.load_state_dict(state)
