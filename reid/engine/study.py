"""The paper's experiments as one resumable grid: regularisers x seeds -> same/cross-domain -> attacks.

A study file (``configs/study/*.yml``) names a base experiment, the regulariser arms (each a list of
``KEY VALUE`` overrides), the seeds, and the attacks. Every (arm, seed) cell trains on the source
domain, is evaluated on every DATASETS.TEST entry and attacked on the source domain's queries; its
record is written atomically when the cell is complete, so an interrupted study resumes where it
stopped (a half-trained cell resumes from its ``last.pth``). The summary reports mean and standard
deviation over seeds, and paired differences against the ``none`` arm (same seeds, same data).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import yaml

from reid.config import load_config, resolve_config_path
from reid.utils.errors import ConfigError

logger = logging.getLogger("reid.study")

STUDY_DIR = Path(__file__).resolve().parents[2] / "configs" / "study"
METRICS = ("R1", "mAP", "mINP")


@dataclass
class StudySpec:
    """What one study runs; see configs/study/synthetic.yml for a commented example."""

    name: str
    base_config: str
    output_dir: str
    seeds: list[int]
    arms: dict[str, list[str]]
    overrides: list[str] = field(default_factory=list)
    attacks: list[str] = field(default_factory=lambda: ["fgsm", "pgd"])
    objectives: list[str] = field(default_factory=lambda: ["feature", "metric"])
    eps: list[float] = field(default_factory=lambda: [2.0, 4.0, 8.0])
    steps: int = 10
    baseline: str = "none"


def load_study(preset_or_path: str) -> StudySpec:
    """A preset name (``synthetic``, ``market``) from configs/study/, or a path to a study file."""
    path = Path(preset_or_path)
    if not path.is_file():
        path = STUDY_DIR / f"{preset_or_path}.yml"
    if not path.is_file():
        presets = sorted(p.stem for p in STUDY_DIR.glob("*.yml"))
        raise ConfigError(f"No study {preset_or_path!r}: not a file, and not a preset in {STUDY_DIR} "
                          f"(presets: {', '.join(presets)}).")
    data = yaml.safe_load(path.read_text()) or {}
    known = set(StudySpec.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"Study file {path} has unknown keys {unknown}; valid keys: {sorted(known)}.")
    try:
        spec = StudySpec(**data)
    except TypeError as exc:
        raise ConfigError(f"Study file {path} is incomplete: {exc}.") from exc
    spec.arms = {arm: [str(v) for v in opts] for arm, opts in spec.arms.items()}
    spec.overrides = [str(v) for v in spec.overrides]
    resolve_config_path(spec.base_config)
    if spec.baseline not in spec.arms:
        raise ConfigError(f"Study file {path}: the baseline arm {spec.baseline!r} is not among the arms.")
    for arm in spec.arms:  # fail on a bad override now, not after hours of training
        _cell_config(spec, arm, spec.seeds[0], Path(spec.output_dir))
    return spec


def _cell_config(spec: StudySpec, arm: str, seed: int, out: Path, extra_opts: Sequence[str] = ()):
    """Base experiment <- study overrides <- the arm's overrides <- command line <- seed and folder."""
    return load_config(spec.base_config, [*spec.overrides, *spec.arms[arm], *extra_opts, "SEED", str(seed),
                                          "OUTPUT_DIR", str(out / arm / f"seed{seed}")])


def run_study(spec: StudySpec, extra_opts: Sequence[str] = ()) -> Path:
    """Run (or resume) every cell, then write the summary tables and plots; returns the output folder."""
    from reid.engine.attacking import run_attacks
    from reid.engine.inference import load_model_for_inference
    from reid.engine.training import train
    from reid.evaluation.evaluator import evaluate_datasets
    from reid.utils.checkpoint import load_checkpoint

    out = Path(spec.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cells = [(arm, seed) for seed in spec.seeds for arm in spec.arms]
    start = time.perf_counter()
    for index, (arm, seed) in enumerate(cells, 1):
        cfg = _cell_config(spec, arm, seed, out, extra_opts)
        run_dir = Path(cfg.OUTPUT_DIR)
        record_path = run_dir / "study_record.json"
        done = time.perf_counter() - start
        logger.info(f"[study {spec.name}] cell {index}/{len(cells)}: {arm}, seed {seed} "
                    f"({done / 60:.1f} min elapsed)")
        if record_path.is_file():
            logger.info(f"  already complete ({record_path}); skipping")
            continue
        last = run_dir / "last.pth"
        resume = last.is_file() and load_checkpoint(last)["epoch"] < cfg.SOLVER.MAX_EPOCHS
        if last.is_file() and not resume:  # trained, but stopped before its record was written
            model, _ = load_model_for_inference(last, cfg, _device(cfg))
            clean = evaluate_datasets(cfg, model, _device(cfg))
        else:
            clean = train(cfg, resume=resume)
            model, _ = load_model_for_inference(last, cfg, _device(cfg))
        source = cfg.DATASETS.TEST[0]
        attacked = run_attacks(cfg, model, [source], spec.attacks, spec.eps, spec.objectives, spec.steps, run_dir)
        record = {"arm": arm, "seed": seed, "source": source,
                  "clean": {name: {m: row[m] for m in METRICS} for name, row in clean.items()},
                  "attacks": {key: {m: row[m] for m in METRICS}
                              for key, row in attacked[source]["attacks"].items()}}
        tmp = record_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2))
        os.replace(tmp, record_path)
    return summarize_study(spec)


def _device(cfg) -> str:
    from reid.utils.env import resolve_device

    return resolve_device(cfg.DEVICE)


def collect_records(spec: StudySpec) -> list[dict]:
    """Every completed cell's record (incomplete cells are simply absent)."""
    out = Path(spec.output_dir)
    records = []
    for arm in spec.arms:
        for seed in spec.seeds:
            path = out / arm / f"seed{seed}" / "study_record.json"
            if path.is_file():
                records.append(json.loads(path.read_text()))
    return records


def long_rows(records: list[dict]) -> list[dict]:
    """One row per (arm, seed, condition, metric): the CSV a reviewer can re-analyse."""
    rows = []
    for rec in records:
        for dataset, metrics in rec["clean"].items():
            condition = "same-domain" if dataset == rec["source"] else f"cross-domain:{dataset}"
            rows += [{"arm": rec["arm"], "seed": rec["seed"], "condition": condition, "dataset": dataset,
                      "metric": m, "value": v} for m, v in metrics.items()]
        for key, metrics in rec["attacks"].items():
            rows += [{"arm": rec["arm"], "seed": rec["seed"], "condition": f"attack:{key}",
                      "dataset": rec["source"], "metric": m, "value": v} for m, v in metrics.items()]
    return rows


def _mean_std(values: list[float]) -> tuple[float, float]:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return mean, std


def aggregate(rows: list[dict], baseline: str) -> list[dict]:
    """Mean/std over seeds per (arm, condition, metric), plus the paired difference to the baseline arm."""
    cells: dict[tuple[str, str, str], dict[int, float]] = {}
    for r in rows:
        cells.setdefault((r["arm"], r["condition"], r["metric"]), {})[r["seed"]] = r["value"]
    summary = []
    for (arm, condition, metric), by_seed in cells.items():
        mean, std = _mean_std(list(by_seed.values()))
        base = cells.get((baseline, condition, metric), {})
        paired = [by_seed[s] - base[s] for s in by_seed if s in base]
        d_mean, d_std = _mean_std(paired) if paired else (float("nan"), float("nan"))
        summary.append({"arm": arm, "condition": condition, "metric": metric, "mean": mean, "std": std,
                        "n": len(by_seed), "delta_vs_baseline": d_mean, "delta_std": d_std})
    return summary


def summarize_study(spec: StudySpec) -> Path:
    """Write study_long.csv, study_summary.csv, study.md and the plots from the completed cells."""
    out = Path(spec.output_dir)
    rows = long_rows(collect_records(spec))
    if not rows:
        raise ConfigError(f"No completed cell in {out}; run the study first.")
    with open(out / "study_long.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    summary = aggregate(rows, spec.baseline)
    with open(out / "study_summary.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(summary[0]))
        writer.writeheader()
        writer.writerows(summary)
    (out / "study.md").write_text(markdown_table(spec, summary))
    plot_study(spec, summary, out)
    logger.info(f"Study summary written to {out / 'study.md'}")
    return out


def _fmt(mean: float, std: float, n: int) -> str:
    return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"


def markdown_table(spec: StudySpec, summary: list[dict], metric: str = "mAP") -> str:
    """Rows = arms; columns = same/cross-domain and each attack at each eps; mean ± std over seeds (%)."""
    index = {(s["arm"], s["condition"]): s for s in summary if s["metric"] == metric}
    conditions = sorted({c for _, c in index}, key=lambda c: (not c.startswith("same"), c.startswith("attack"),
                                                              _eps_key(c)))
    header = [_short(c) for c in conditions]
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


def _short(condition: str) -> str:
    if condition.startswith("cross-domain:"):
        return "cross " + condition.split(":", 1)[1]
    if condition.startswith("attack:"):
        return condition.split(":", 1)[1]
    return condition


def _eps_key(condition: str) -> tuple:
    if "/eps" in condition:
        head, eps = condition.rsplit("/eps", 1)
        return (head, float(eps))
    return (condition, 0.0)


def plot_study(spec: StudySpec, summary: list[dict], out: Path, metric: str = "mAP") -> list[Path]:
    """accuracy vs eps per regulariser (one panel per attack/objective) and same/cross-domain bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [s for s in summary if s["metric"] == metric]
    same = {s["arm"]: s for s in rows if s["condition"] == "same-domain"}
    panels = sorted({s["condition"].split(":", 1)[1].rsplit("/eps", 1)[0] for s in rows
                     if s["condition"].startswith("attack:")})
    paths = []
    fig = Figure(figsize=(4.2 * max(len(panels), 1), 3.6), constrained_layout=True)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        for arm in spec.arms:
            points = [(0.0, same[arm]["mean"], same[arm]["std"])] if arm in same else []
            points += sorted((float(s["condition"].rsplit("/eps", 1)[1]), s["mean"], s["std"]) for s in rows
                             if s["arm"] == arm and s["condition"].startswith(f"attack:{panel}/eps"))
            if points:
                xs, ys, es = zip(*points)
                ax.errorbar(xs, [100 * y for y in ys], yerr=[100 * e for e in es], marker="o", capsize=3, label=arm)
        ax.set_title(panel)
        ax.set_xlabel("eps (/255)")
        ax.set_ylabel(f"{metric} (%)")
        ax.grid(alpha=0.3)
    if panels:
        fig.axes[0].legend(fontsize=8)
        FigureCanvasAgg(fig)
        path = out / "study_attacks.png"
        fig.savefig(path, dpi=110)
        paths.append(path)

    domains = sorted({s["condition"] for s in rows if not s["condition"].startswith("attack:")},
                     key=lambda c: not c.startswith("same"))
    fig = Figure(figsize=(1.2 + 1.1 * len(spec.arms) * len(domains) / 2, 3.6), constrained_layout=True)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / max(len(domains), 1)
    arms = list(spec.arms)
    for j, cond in enumerate(domains):
        stats = [next((s for s in rows if s["arm"] == a and s["condition"] == cond), None) for a in arms]
        xs = [i + j * width for i in range(len(arms))]
        ax.bar(xs, [100 * s["mean"] if s else 0 for s in stats], width,
               yerr=[100 * s["std"] if s else 0 for s in stats], capsize=3, label=_short(cond))
    ax.set_xticks([i + width * (len(domains) - 1) / 2 for i in range(len(arms))])
    ax.set_xticklabels(arms, rotation=20)
    ax.set_ylabel(f"{metric} (%)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    FigureCanvasAgg(fig)
    path = out / "study_domains.png"
    fig.savefig(path, dpi=110)
    paths.append(path)
    return paths
