"""Checking an exported model against the PyTorch model it came from, before reporting success.

Tolerances, from ``tools/export.py`` on a random-init ResNet-50 at 256x128 (2-core CPU, ONNX Runtime
1.31, torch 2.15): float32 ONNX differs from PyTorch by at most 1e-7 on L2-normalised features (1e-6
on raw ones), TorchScript not at all, so 1e-4 is a bound that only a wrong graph breaks. float16
exports differ by rounding: at most 2.8e-4 on normalised features (2.2e-3 on raw features of magnitude
0.6) with every cosine similarity above 0.99999, so the bound is ``max_abs <= 1e-2`` and
``cosine >= 0.999``, with margin for trained weights. ``max_abs`` is absolute when the largest reference
value is at most 1 (always the case with TEST.FEAT_NORM) and relative to it otherwise, since raw
features have no fixed scale.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Runner = Callable[[torch.Tensor], torch.Tensor]  # float32 images (N, 3, H, W) -> float32 features (N, D)


@dataclass(frozen=True)
class Tolerance:
    max_abs: float
    min_cosine: float


FP32_TOLERANCE = Tolerance(max_abs=1e-4, min_cosine=0.99999)
FP16_TOLERANCE = Tolerance(max_abs=1e-2, min_cosine=0.999)


@dataclass(frozen=True)
class Comparison:
    """One batch run through both models."""

    name: str
    batch: int
    max_abs: float
    min_cosine: float
    passed: bool


@dataclass
class VerificationReport:
    tolerance: Tolerance
    comparisons: list[Comparison] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # failures that are not a numeric difference

    @property
    def passed(self) -> bool:
        return not self.problems and all(c.passed for c in self.comparisons)

    def format(self) -> str:
        """A small table of the comparisons, then any problems."""
        lines = [f"{'check':<28} {'batch':>5} {'max abs diff':>13} {'min cosine':>11}  result"]
        for c in self.comparisons:
            lines.append(f"{c.name:<28} {c.batch:>5} {c.max_abs:>13.3e} {c.min_cosine:>11.7f}  "
                         f"{'ok' if c.passed else 'FAILED'}")
        lines.append(f"tolerance: max abs diff <= {self.tolerance.max_abs:g}, cosine >= {self.tolerance.min_cosine:g}")
        lines += [f"FAILED: {problem}" for problem in self.problems]
        return "\n".join(lines)


def compare(name: str, output: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> Comparison:
    """Maximum absolute difference (scaled as the module docstring says) and the lowest per-row cosine."""
    # float64 so that the statistics themselves add no rounding (a cosine of 1.0000001).
    output, reference = output.detach().double().cpu(), reference.detach().double().cpu()
    if output.shape != reference.shape:
        return Comparison(f"{name} (shape {tuple(output.shape)} != {tuple(reference.shape)})",
                          reference.shape[0], float("inf"), -1.0, False)
    scale = max(1.0, reference.abs().max().item())
    max_abs = (output - reference).abs().max().item() / scale
    cosine = F.cosine_similarity(output, reference, dim=1).min().item()
    finite = bool(torch.isfinite(output).all())
    passed = finite and max_abs <= tolerance.max_abs and cosine >= tolerance.min_cosine
    return Comparison(name, reference.shape[0], max_abs if finite else float("inf"), cosine, passed)


def verify(run: Runner, reference: Runner, batches: Sequence[tuple[str, torch.Tensor]], tolerance: Tolerance,
           operators: Iterable[str] = (), forbidden_operators: Iterable[str] = ()) -> VerificationReport:
    """Compare ``run`` with ``reference`` on each named batch, check that ``run`` is deterministic (the first
    batch twice gives identical features) and that none of ``forbidden_operators`` is in ``operators``."""
    report = VerificationReport(tolerance)
    with torch.no_grad():
        for name, images in batches:
            report.comparisons.append(compare(name, run(images), reference(images), tolerance))
        name, images = batches[0]
        if not torch.equal(run(images), run(images)):
            report.problems.append(f"two runs on the same {name} differ: the exported graph is not deterministic "
                                   "(a training-only random operation was exported)")
    leaked = sorted(set(operators) & set(forbidden_operators))
    if leaked:
        report.problems.append(f"the graph holds random operators {', '.join(leaked)} (a training-only "
                               "regularizer such as LFM or dropout was exported)")
    return report
