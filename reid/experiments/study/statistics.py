"""The study's numbers as rows: one per (arm, seed, condition, metric), then mean, std and paired deltas.

A *condition* is what a number was measured on: a dataset, whether it is the cell's own domain, and the
attack run (None for the clean queries). Rows keep these as separate fields (``attack``, ``objective``,
``eps``), so the CSV files can be re-analysed without parsing any string.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, NamedTuple

from reid.evaluation.attacks import AttackRun
from reid.experiments.study.records import CellRecord

SAME, CROSS = "same", "cross"  # the domain field of a row


class Condition(NamedTuple):
    """What a number was measured on."""

    dataset: str
    domain: str  # SAME (the source domain) or CROSS
    run: AttackRun | None = None  # None: the clean queries

    def fields(self) -> dict[str, Any]:
        run = self.run
        return {"dataset": self.dataset, "domain": self.domain, "attack": run.attack if run else "",
                "objective": run.objective if run else "", "eps": run.eps if run else ""}

    @classmethod
    def of(cls, row: dict[str, Any]) -> Condition:
        run = AttackRun(row["attack"], row["objective"], float(row["eps"])) if row["attack"] else None
        return cls(row["dataset"], row["domain"], run)

    def order(self) -> tuple:
        """Tables list the same domain first, then the other domains, then the attacks by (attack, objective, eps)."""
        return (self.run is not None, self.domain != SAME, self.dataset, self.run or AttackRun("", "", 0.0))

    def label(self) -> str:
        if self.run is not None:
            return self.run.label()
        return "same-domain" if self.domain == SAME else f"cross {self.dataset}"


def long_rows(records: Iterable[CellRecord]) -> list[dict[str, Any]]:
    """One row per (arm, seed, condition, metric): the CSV a reviewer can re-analyse."""
    rows = []
    for rec in records:
        for dataset, metrics in rec.clean.items():
            condition = Condition(dataset, SAME if dataset == rec.source else CROSS)
            rows += [{"arm": rec.arm, "seed": rec.seed, **condition.fields(), "metric": m, "value": v}
                     for m, v in metrics.items()]
        for run, entry in sorted(rec.attacks.items()):
            condition = Condition(rec.source, SAME, run)
            rows += [{"arm": rec.arm, "seed": rec.seed, **condition.fields(), "metric": m, "value": v}
                     for m, v in entry.metrics.items()]
    return rows


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(rows: list[dict[str, Any]], baseline: str) -> list[dict[str, Any]]:
    """Mean/std over seeds per (arm, condition, metric), plus the paired difference to the baseline arm."""
    cells: dict[tuple[str, Condition, str], dict[int, float]] = {}
    for r in rows:
        cells.setdefault((r["arm"], Condition.of(r), r["metric"]), {})[r["seed"]] = r["value"]
    summary = []
    for (arm, condition, metric), by_seed in cells.items():
        mean, std = mean_std(list(by_seed.values()))
        base = cells.get((baseline, condition, metric), {})
        paired = [by_seed[s] - base[s] for s in by_seed if s in base]
        d_mean, d_std = mean_std(paired) if paired else (float("nan"), float("nan"))
        summary.append({"arm": arm, **condition.fields(), "metric": metric, "mean": mean, "std": std,
                        "n": len(by_seed), "delta_vs_baseline": d_mean, "delta_std": d_std})
    return summary
