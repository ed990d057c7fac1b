"""Checking an exported model against the PyTorch model it came from, before reporting success.

Tolerances, from ``tools/export.py`` on a random-init ResNet-50 at 256x128 (2-core CPU, ONNX Runtime
1.31, torch 2.15): float32 ONNX differs from PyTorch by at most 1e-7 on L2-normalised features (1e-6
on raw ones), TorchScript not at all. So float32 exports must agree within ``1e-4`` absolute,
``max |exported - reference| <= 1e-4`` whatever the features' scale: a bound that only a wrong graph
breaks. float16 exports differ by rounding, which grows with the values: at most 2.8e-4 on normalised
features (2.2e-3 on raw features of magnitude 0.6) with every cosine similarity above 0.99999. Their
bound is ``max |exported - reference| <= 1e-2 * max(1, max |reference|)`` (absolute 1e-2 for
L2-normalised features, whose values are at most 1; relative to the largest value for raw features,
which have no fixed scale) and ``cosine >= 0.999`` for every feature, with margin for trained weights.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

Runner = Callable[[torch.Tensor], torch.Tensor]  # float32 images (N, 3, H, W) -> float32 features (N, D)


@dataclass(frozen=True)
class Tolerance:
    """``max |exported - reference| <= max_abs`` (times ``max(1, max |reference|)`` when ``scaled``) and
    ``cosine(exported, reference) >= min_cosine`` for every feature."""

    max_abs: float
    min_cosine: float
    scaled: bool = False

    def bound(self, reference_max: float) -> float:
        """The allowed maximum absolute difference for a reference whose largest |value| is ``reference_max``."""
        return self.max_abs * max(1.0, reference_max) if self.scaled else self.max_abs

    def describe(self) -> str:
        limit = f"{self.max_abs:g} x max(1, max |ref|)" if self.scaled else f"{self.max_abs:g} (absolute)"
        return f"max |diff| <= {limit}, min cosine >= {self.min_cosine:g}"


FP32_TOLERANCE = Tolerance(max_abs=1e-4, min_cosine=0.99999)
FP16_TOLERANCE = Tolerance(max_abs=1e-2, min_cosine=0.999, scaled=True)


@dataclass(frozen=True)
class Comparison:
    """One batch run through both models."""

    name: str
    batch: int
    max_abs: float  # max |exported - reference| over every feature value, absolute
    reference_max: float  # max |reference|: the features' scale
    min_cosine: float  # the lowest cosine similarity of an exported feature with its reference
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
        # diff = exported - reference, elementwise; ref = the float32 PyTorch features
        lines = [f"{'check':<28} {'batch':>5} {'max |diff|':>11} {'max |ref|':>10} {'min cosine':>11}  result"]
        for c in self.comparisons:
            lines.append(f"{c.name:<28} {c.batch:>5} {c.max_abs:>11.3e} {c.reference_max:>10.3g} "
                         f"{c.min_cosine:>11.7f}  {'ok' if c.passed else 'FAILED'}")
        lines.append(f"tolerance: {self.tolerance.describe()}")
        lines += [f"FAILED: {problem}" for problem in self.problems]
        return "\n".join(lines)


def compare(name: str, output: torch.Tensor, reference: torch.Tensor, tolerance: Tolerance) -> Comparison:
    """The maximum absolute difference and the lowest per-row cosine, checked against ``tolerance``."""
    # float64 so that the statistics themselves add no rounding (a cosine of 1.0000001).
    output, reference = output.detach().double().cpu(), reference.detach().double().cpu()
    reference_max = reference.abs().max().item()
    if output.shape != reference.shape:
        return Comparison(f"{name} (shape {tuple(output.shape)} != {tuple(reference.shape)})",
                          reference.shape[0], float("inf"), reference_max, -1.0, False)
    max_abs = (output - reference).abs().max().item()
    cosine = F.cosine_similarity(output, reference, dim=1).min().item()
    finite = bool(torch.isfinite(output).all())
    passed = finite and max_abs <= tolerance.bound(reference_max) and cosine >= tolerance.min_cosine
    return Comparison(name, reference.shape[0], max_abs if finite else float("inf"), reference_max, cosine, passed)


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
