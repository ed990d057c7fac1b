"""TorchScript export by tracing, and the operators of a traced graph.

Tracing records the eval-mode forward: the regulariser's forward hook is still attached but returns
its input unchanged, so no LFM operation is recorded. A traced ResNet has no batch-dependent control
flow, so one trace serves every batch size. ``torch.jit`` is deprecated in recent torch releases but
still the one format that C++ (libtorch) loads without Python; ONNX is the portable alternative.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch
from torch import nn

from reid.utils.errors import ReIDError, summarize_exception

# TorchScript operators that draw random numbers: a train-only regulariser leaking into the graph.
RANDOM_OPS = frozenset({"aten::rand", "aten::rand_like", "aten::randn", "aten::randn_like", "aten::randint",
                        "aten::randint_like", "aten::bernoulli", "aten::bernoulli_", "aten::multinomial",
                        "aten::uniform_", "aten::normal", "aten::normal_", "aten::dropout", "aten::feature_dropout"})


def export_torchscript(module: nn.Module, path: str | Path, input_size: tuple[int, int], batch: int | None = None,
                       half: bool = False) -> Path:
    """Trace ``module`` (on the CPU, in eval mode) with an example batch and save it."""
    dtype = torch.float16 if half else torch.float32
    example = torch.rand(batch or 2, 3, *input_size, dtype=dtype)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "torch.jit is deprecated": not actionable here
        try:
            traced = torch.jit.trace(module.eval(), example, check_trace=False)
        except Exception as exc:
            raise ReIDError(f"TorchScript tracing for {path} failed: {summarize_exception(exc)}") from exc
        torch.jit.save(traced, str(path))
    return Path(path)


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    """A saved TorchScript module on the CPU, in eval mode."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as exc:
            raise ReIDError(f"Cannot load TorchScript file {path}: {summarize_exception(exc)}") from exc


def torchscript_operators(module: torch.jit.ScriptModule) -> set[str]:
    """Every operator kind in the module's inlined forward graph."""
    return {node.kind() for node in module.inlined_graph.nodes()}
