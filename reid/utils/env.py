"""Seeding and device choice."""

from __future__ import annotations

import random
import secrets

import numpy as np
import torch

from reid.utils.errors import ReIDError


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def random_seed() -> int:
    """A fresh seed from the OS (31 bits, so it reads well in logs), for runs configured with SEED < 0."""
    return secrets.randbits(31)


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when available else 'cpu'; asking for CUDA without one is an error, not a fallback."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ReIDError(f"DEVICE is {name!r} but no CUDA device is available; use DEVICE cpu or DEVICE auto.")
    if name != "cpu" and not name.startswith("cuda"):
        raise ReIDError(f"DEVICE {name!r} is not understood; use auto, cpu, cuda or cuda:N.")
    return name
