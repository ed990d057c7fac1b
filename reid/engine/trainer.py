"""A short training loop; logging, checkpointing and evaluation plug in as hooks (detectron2 style)."""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Iterable

import torch
from torch import nn
from yacs.config import CfgNode

from reid.utils import comm
from reid.utils.env import seed_everything
from reid.utils.errors import ReIDError


class NonFiniteLossError(ReIDError):
    """The loss became NaN or infinite; training stops instead of producing a NaN model."""


class HookBase:
    """Override any of these; ``self.trainer`` is set when the hook is registered."""

    trainer: "Trainer"

    def before_train(self) -> None: ...

    def before_epoch(self) -> None: ...

    def after_step(self) -> None: ...

    def after_epoch(self) -> None: ...

    def after_train(self) -> None: ...


class Trainer:
    """Epoch/iteration loop over a PK-sampled loader with AMP, channels_last and DDP when configured.

    State the hooks read: ``epoch`` (0-based, current), ``iter`` (global, completed steps),
    ``iters_per_epoch``, ``max_epochs``, ``last_metrics`` (floats of the last step) and
    ``last_checkpoint`` (path or None).
    """

    def __init__(self, cfg: CfgNode, model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, loader: Iterable, sampler, device: torch.device,
                 center_optimizer: torch.optim.Optimizer | None = None, hooks: Iterable[HookBase] = ()) -> None:
        self.cfg = cfg
        self.model = model
        self.criterion = criterion
        self.optimizer = optimizer
        self.center_optimizer = center_optimizer
        self.scheduler = scheduler
        self.loader = loader
        self.sampler = sampler
        self.device = device
        self.iters_per_epoch = len(loader)  # type: ignore[arg-type]
        self.max_epochs = cfg.SOLVER.MAX_EPOCHS
        self.start_epoch = 0
        self.epoch = 0
        self.iter = 0
        self.last_metrics: dict[str, float] = {}
        self.last_checkpoint: str | None = None

        on_cuda = device.type == "cuda"
        self.channels_last = on_cuda and cfg.SOLVER.CHANNELS_LAST
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[cfg.SOLVER.AMP_DTYPE]
        self.use_amp = on_cuda and cfg.SOLVER.AMP
        # bf16 has fp32's range and needs no loss scaling; fp16 does.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)
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
            # Re-seeding from (seed, epoch) makes each epoch's randomness (sampling, augmentation,
            # LFM masks) independent of what came before, so a resumed run matches an uninterrupted one.
            # Each DDP rank gets its own stream (far from other epochs' seeds), or every rank would
            # draw the same masks for its samples; rank 0 keeps the single-process seed.
            epoch_seed = self.cfg.SEED * 1_000_003 + epoch
            seed_everything(epoch_seed + comm.get_rank() * 2**48)
            if getattr(self.loader, "generator", None) is not None:  # loader workers' base seeds
                self.loader.generator.manual_seed(epoch_seed * 64 + comm.get_rank())
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            self.model.train()
            self._call_hooks("before_epoch")
            for batch in self.loader:
                self.run_step(batch)
                self.iter += 1
                self._call_hooks("after_step")
            self._call_hooks("after_epoch")
        self._call_hooks("after_train")

    def run_step(self, batch: dict) -> None:
        images = batch["images"].to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pids = batch["pids"].to(self.device, non_blocking=True)
        autocast = torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()
        with autocast:
            outputs = self.model(images)
        losses = self.criterion(outputs, pids)
        total = sum(losses.values())
        # Every logged number leaves the device in one transfer: one synchronisation per step on CUDA.
        logged = dict(losses, loss=total)
        logits = outputs["logits"]
        if logits is not None:
            logged["acc"] = (logits.detach().argmax(1) == pids).float().mean()
        stacked = torch.stack([v.detach().float() for v in logged.values()])
        # Under DDP every rank logs and checks the mean over ranks: a NaN on one rank stops all of
        # them together instead of leaving the others waiting in the next all-reduce.
        values = dict(zip(logged, comm.all_reduce_mean(stacked).tolist()))
        values["lr"] = self.optimizer.param_groups[0]["lr"]  # the lr this step trained with
        if not math.isfinite(values["loss"]):
            raise NonFiniteLossError(
                f"Non-finite loss at epoch {self.epoch + 1}, iteration {self.iter + 1}: "
                + ", ".join(f"{k}={v:.4g}" for k, v in values.items() if k.startswith("loss_"))
                + f". Last checkpoint: {self.last_checkpoint or 'none written yet'}. Lower SOLVER.BASE_LR, "
                "check the data, or try SOLVER.AMP False."
            )

        self.optimizer.zero_grad(set_to_none=True)
        if self.center_optimizer is not None:
            self.center_optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.SOLVER.GRAD_CLIP > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.SOLVER.GRAD_CLIP)
        self.scaler.step(self.optimizer)
        if self.center_optimizer is not None:
            self._step_centers()
        self.scaler.update()
        self.scheduler.step()
        self.last_metrics = values

    def _step_centers(self) -> None:
        """BoT: the centers learn at their own rate, so the loss weight is divided out of their gradient."""
        centers = self.criterion.center.centers
        if centers.grad is None:
            return
        if self.scaler.is_enabled():
            centers.grad /= self.scaler.get_scale()
            # The scaler skips the model's step on an fp16 overflow; the centers skip theirs too.
            if not bool(torch.isfinite(centers.grad).all()):
                return
        if comm.get_world_size() > 1:  # the centers live outside DDP: average their gradient by hand
            torch.distributed.all_reduce(centers.grad)
            centers.grad /= comm.get_world_size()
        centers.grad /= self.cfg.MODEL.CENTER.WEIGHT
        self.center_optimizer.step()
