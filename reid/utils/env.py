"""Seeding, device choice and the description of the machine a figure was measured on."""

from __future__ import annotations

import os
import platform
import random
import secrets

import numpy as np
import torch

from reid.utils.errors import ReIDError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    # numpy's legacy seed is 32-bit: hash the whole (possibly 64-bit, e.g. rank-offset) seed into it
    # instead of truncating, so seeds differing only in their high bits still give different streams.
    np.random.seed(np.random.SeedSequence(seed).generate_state(4))
    torch.manual_seed(seed)


def random_seed() -> int:
    """A fresh seed from the OS (31 bits, so it reads well in logs), for runs configured with SEED < 0."""
    return secrets.randbits(31)


def resolve_device(name: str, option: str = "DEVICE") -> str:
    """'auto' -> 'cuda' when available else 'cpu'; asking for CUDA without one is an error, not a fallback.
    ``option`` is what the user set (the config key, or a tool's ``--device``), named in the message."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReIDError(f"{option} is {name!r} but no CUDA device is available; use {option} cpu.")
    if name != "cpu" and not name.startswith("cuda"):
        raise ReIDError(f"DEVICE {name!r} is not understood; use auto, cpu, cuda or cuda:N.")
    return name


def describe_machine(device: torch.device) -> str:
    """What a benchmark ran on: the GPU's name, or the CPU model; with the visible cores and torch's threads."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, {os.cpu_count()} CPU cores"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"
