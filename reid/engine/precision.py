"""How a training step computes on its device: autocast, channels_last, gradient scaling and clipping.

On CUDA: bf16 autocast (fp32's range, no loss scaling) or fp16 with a gradient scaler, and channels_last;
on the CPU: plain fp32. Keeping this in one object leaves the trainer's step generic.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager, nullcontext

import torch
from torch import nn
from yacs.config import CfgNode

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class Precision:
    """Autocast, memory format and the (optionally scaled) backward + optimiser step of a training step."""

    def __init__(self, device: torch.device, amp: bool = False, amp_dtype: torch.dtype = torch.bfloat16,
                 channels_last: bool = False) -> None:
        on_cuda = device.type == "cuda"
        self.use_amp = on_cuda and amp
        self.amp_dtype = amp_dtype
        self.channels_last = on_cuda and channels_last
        # bf16 has fp32's range and needs no loss scaling; fp16 does.
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and amp_dtype == torch.float16)

    @classmethod
    def from_config(cls, cfg: CfgNode, device: torch.device) -> Precision:
        return cls(device, cfg.SOLVER.AMP, AMP_DTYPES[cfg.SOLVER.AMP_DTYPE], cfg.SOLVER.CHANNELS_LAST)

    def autocast(self) -> AbstractContextManager:
        return torch.autocast("cuda", dtype=self.amp_dtype) if self.use_amp else nullcontext()

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """The batch in the memory format the model runs in."""
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer,
                          parameters: Iterable[nn.Parameter], grad_clip: float = 0.0,
                          then: Callable[[float | None], None] | None = None) -> None:
        """Backward (scaled under fp16), optional gradient-norm clipping, the optimiser step, then ``then``
        (e.g. a loss's own optimiser) with the gradient scale of this step (None without a scaler)."""
        self.scaler.scale(loss).backward()
        if grad_clip > 0:
            self.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(parameters, grad_clip)
        self.scaler.step(optimizer)
        if then is not None:
            then(self.scaler.get_scale() if self.scaler.is_enabled() else None)
        self.scaler.update()

    def state_dict(self) -> dict:
        return self.scaler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        if state and self.scaler.is_enabled():  # empty when the run had no fp16 scaler
            self.scaler.load_state_dict(state)
