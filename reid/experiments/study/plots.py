"""The study's two plots: accuracy vs eps per regulariser (a panel per attack and objective), and
same/cross-domain bars per regulariser."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.evaluation.visualize import save_figure
from reid.experiments.study.spec import StudySpec
from reid.experiments.study.statistics import SAME, Condition


def plot_study(spec: StudySpec, summary: list[dict[str, Any]], out: Path, metric: str = "mAP") -> list[Path]:
    """Write ``study_attacks.png`` and ``study_domains.png``; returns the written files."""
    rows = [(Condition.of(s), s) for s in summary if s["metric"] == metric]
    clean = [(c, s) for c, s in rows if c.run is None]
    attacked = [(c, s) for c, s in rows if c.run is not None]
    same = {s["arm"]: s for c, s in clean if c.domain == SAME}
    panels = sorted({(c.run.attack, c.run.objective) for c, _ in attacked})
    paths = []
    fig = Figure(figsize=(4.2 * max(len(panels), 1), 3.6), constrained_layout=True)
    for i, (attack, objective) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for arm in spec.arms:
            points = [(0.0, same[arm]["mean"], same[arm]["std"])] if arm in same else []
            points += sorted((c.run.eps, s["mean"], s["std"]) for c, s in attacked
                             if s["arm"] == arm and (c.run.attack, c.run.objective) == (attack, objective))
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3, label=arm)
        ax.set_title(f"{attack}/{objective}")
        ax.set_xlabel("eps (/255)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
    if panels:
        fig.axes[0].legend(fontsize=8)
        FigureCanvasAgg(fig)
        paths.append(save_figure(fig, out / "study_attacks.png", dpi=110))

    domains = sorted({c for c, _ in clean}, key=Condition.order)
    fig = Figure(figsize=(1.2 + 1.1 * len(spec.arms) * len(domains) / 2, 3.6), constrained_layout=True)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(domains), 1)
    arms = list(spec.arms)
    for j, condition in enumerate(domains):
        stats = [next((s for c, s in clean if s["arm"] == a and c == condition), None) for a in arms]
        xs = [i + j * width for i in range(len(arms))]
        ax.bar(xs, [100 * s["mean"] if s else 0 for s in stats], width,
               yerr=[100 * s["std"] if s else 0 for s in stats], capsize=3, label=condition.label())
    ax.set_xticks([i + width * (len(domains) - 1) / 2 for i in range(len(arms))])
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    FigureCanvasAgg(fig)
    paths.append(save_figure(fig, out / "study_domains.png", dpi=110))
    return paths
