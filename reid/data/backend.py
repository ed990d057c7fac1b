"""Which data backend a run uses (DATALOADER.BACKEND), and why, in words for the log.

``tensor`` keeps the decoded train and test images as uint8 tensors on the training device (GPU memory on
CUDA, host RAM on CPU); ``workers`` decodes and augments every image again each epoch in loader processes.
``auto`` picks ``tensor`` when the decoded images fit DATALOADER.TENSOR_BUDGET_GB (0: half of the device's
memory) and falls back to ``workers`` otherwise.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

BACKENDS = ("auto", "tensor", "workers")
AUTO_BUDGET_FRACTION = 0.5  # of the device's memory, when DATALOADER.TENSOR_BUDGET_GB is 0


def decoded_bytes(num_images: int, size: Sequence[int], padding: int = 0) -> int:
    """Bytes of ``num_images`` uint8 RGB images at ``size`` (height, width), zero-padded by ``padding``."""
    return int(num_images) * 3 * (int(size[0]) + 2 * padding) * (int(size[1]) + 2 * padding)


def device_memory(device: torch.device | str) -> tuple[int, str]:
    """(bytes, description) of the memory the tensors would live in: the GPU's total, or the host's available RAM."""
    device = torch.device(device)
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return int(props.total_memory), f"{props.name} memory"
    available = _available_host_memory()
    return available, "available host RAM"


def _available_host_memory() -> int:
    try:  # Linux: MemAvailable counts reclaimable page cache, unlike free memory
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0  # unknown: only an explicit budget can choose the tensor backend


def _gib(num_bytes: float) -> str:
    return f"{num_bytes / 2**30:.2f} GiB"


def choose_backend(requested: str, needed_bytes: int, device: torch.device | str, budget_gb: float = 0.0,
                   memory: tuple[int, str] | None = None) -> tuple[str, str]:
    """(``"tensor"`` or ``"workers"``, the reason in one sentence) for DATALOADER.BACKEND ``requested``.

    ``needed_bytes``: the decoded train and test images (:func:`decoded_bytes`); ``memory`` overrides
    :func:`device_memory` (bytes, description), e.g. in tests. ``tensor`` over the budget is honoured,
    with the overrun in the reason.
    """
    if requested not in BACKENDS:
        raise ValueError(f"unknown data backend {requested!r}; expected one of {BACKENDS}")
    if requested == "workers":
        return "workers", "DATALOADER.BACKEND is workers"
    capacity, where = memory if memory is not None else device_memory(device)
    if budget_gb > 0:
        budget, budget_text = budget_gb * 2**30, f"DATALOADER.TENSOR_BUDGET_GB {budget_gb:g}"
    else:
        budget = AUTO_BUDGET_FRACTION * capacity
        budget_text = f"half of the {where} ({_gib(capacity)}; DATALOADER.TENSOR_BUDGET_GB 0)"
    needed = f"the decoded train and test images take {_gib(needed_bytes)}"
    if needed_bytes <= budget:
        return "tensor", f"DATALOADER.BACKEND {requested}: {needed}, within the budget of {_gib(budget)}, " \
                         f"{budget_text}"
    if requested == "tensor":
        return "tensor", f"DATALOADER.BACKEND tensor: {needed}, over the budget of {_gib(budget)}, " \
                         f"{budget_text}; kept on {torch.device(device)} as asked"
    return "workers", (f"DATALOADER.BACKEND auto: {needed}, over the budget of {_gib(budget)}, {budget_text}; "
                       "falling back to the loader workers (raise DATALOADER.TENSOR_BUDGET_GB or set "
                       "DATALOADER.BACKEND tensor to keep them on the device)")
