"""Thin helpers over torch.distributed that also work in a single process."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def get_rank_from_env() -> int:
    """This process's rank before the process group exists (torchrun sets RANK), else 0."""
    return get_rank() if is_distributed() else int(os.environ.get("RANK", "0"))


def synchronize() -> None:
    """A barrier when several processes run; a no-op otherwise."""
    if is_distributed() and get_world_size() > 1:
        dist.barrier()


def init_distributed_from_env(use_cuda: bool | None = None) -> bool:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, ...); NCCL on GPUs, gloo on CPU.

    ``use_cuda``: whether this run trains on CUDA (the resolved ``DEVICE``); ``None`` means "when a GPU
    is present". Returns True when running distributed; a plain ``python tools/train.py`` returns False.
    """
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    if use_cuda is None:
        use_cuda = torch.cuda.is_available()
    backend = "nccl" if use_cuda else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # Other ranks wait at a barrier while rank 0 evaluates; the default 10-minute NCCL timeout is too
    # short for MSMT17-sized evaluation with re-ranking.
    dist.init_process_group(backend=backend, timeout=timedelta(hours=2))
    return True


def local_device(device: str) -> torch.device:
    """This process's device: under torchrun each rank takes the GPU of its LOCAL_RANK."""
    if device.startswith("cuda") and is_distributed():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device(device)


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Average a tensor over processes (a copy; the input itself is returned in a single process)."""
    if get_world_size() == 1:
        return value
    value = value.clone()
    dist.all_reduce(value)
    return value / get_world_size()


def broadcast_object(value: object) -> object:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if get_world_size() == 1:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class _AllGatherWithGradient(torch.autograd.Function):
    """All ranks' equally sized tensors concatenated along dim 0; the backward pass gives each rank the
    sum, over all ranks, of the gradient with respect to its own rows (each rank's loss used them)."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(tensor) for _ in range(get_world_size())]
        dist.all_gather(parts, tensor.contiguous())
        ctx.rows = tensor.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        start = get_rank() * ctx.rows
        return grad[start:start + ctx.rows]


def all_gather_with_grad(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` (same shape on every rank), differentiably; identity without
    DDP. (torch.distributed.nn.functional.all_gather does this but is deprecated since torch 2.14.)"""
    if get_world_size() == 1:
        return tensor
    return _AllGatherWithGradient.apply(tensor)
