"""The study's Markdown table: arms x conditions, mean ± std over seeds and the paired difference."""

from __future__ import annotations

import math
from typing import Any

from reid.experiments.study.spec import StudySpec
from reid.experiments.study.statistics import Condition


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def markdown_table(spec: StudySpec, summary: list[dict[str, Any]], metric: str = "mAP") -> str:
    """Rows = arms; columns = same/cross-domain and each attack at each eps; mean ± std over seeds (%)."""
    index = {(s["arm"], Condition.of(s)): s for s in summary if s["metric"] == metric}
    conditions = sorted({c for _, c in index}, key=Condition.order)
    header = [c.label() for c in conditions]
    lines = [f"{metric} (%), mean ± std over seeds {spec.seeds}; Δ = paired difference to '{spec.baseline}' "
             "(same seed), mean ± std.", "",
             "| arm | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    for arm in spec.arms:
        cells = []
        for c in conditions:
            s = index.get((arm, c))
            if s is None:
                cells.append("–")
                continue
            text = _fmt(s["mean"], s["std"], s["n"])
            if arm != spec.baseline and not math.isnan(s["delta_vs_baseline"]):
                text += f" (Δ {100 * s['delta_vs_baseline']:+.1f} ± {100 * s['delta_std']:.1f})"
            cells.append(text)
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
