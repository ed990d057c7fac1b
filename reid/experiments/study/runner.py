"""Running a study: every (arm, seed) cell trained, evaluated same- and cross-domain, and attacked; then the
tables and plots.

A finished cell is never recomputed and a half-trained one resumes from its ``last.pth``, so an interrupted
study picks up where it stopped. A finished cell whose record lacks attack entries the study now asks for
(another eps, attack, objective or step count, or entries of an earlier version of the attack code) gets
just those computed from its ``last.pth``. Entries the study no longer asks for stay in the record but leave
the tables.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Sequence
from pathlib import Path

from reid.config import config_to_dict
from reid.engine.run import lock_output
from reid.engine.training import train
from reid.evaluation.evaluator import evaluate_datasets
from reid.evaluation.robustness import evaluate_attacks
from reid.experiments.attack import AttackOutputs
from reid.experiments.study.cells import Cell, plan_cells
from reid.experiments.study.plots import plot_study
from reid.experiments.study.records import METRICS, RECORD_NAME, CellRecord, write_record
from reid.experiments.study.report import markdown_table
from reid.experiments.study.spec import StudySpec, check_arms, requested_runs, source_domain
from reid.experiments.study.statistics import aggregate, long_rows
from reid.modeling import load_model
from reid.utils.cli import command_line
from reid.utils.env import resolve_device
from reid.utils.errors import ConfigError, ReIDError
from reid.utils.fsio import atomic_write_text

logger = logging.getLogger("reid.study")

STUDY_TRIPTYCHS = 2  # queries drawn as clean/adversarial/difference triptychs per attack setting and cell


def run_study(spec: StudySpec, extra_opts: Sequence[str] = ()) -> Path:
    """Run (or resume) every cell, then write the summary tables and plots; returns the output folder."""
    requested = requested_runs(spec)
    if extra_opts:  # load_study checked the file alone; command-line overrides can break any cell as well
        check_arms(spec, f"Study {spec.name!r}", extra_opts)
    cells = plan_cells(spec, extra_opts)
    with lock_output(spec.output_dir):  # one study per folder; each cell's training also locks its own folder
        start = time.perf_counter()
        for index, cell in enumerate(cells, 1):
            logger.info(f"[study {spec.name}] cell {index}/{len(cells)}: {cell.arm}, seed {cell.seed} "
                        f"({(time.perf_counter() - start) / 60:.1f} min elapsed)")
            try:
                _run_cell(cell, requested, spec.steps)
            except KeyboardInterrupt:
                raise KeyboardInterrupt(
                    f"Interrupted in cell {index}/{len(cells)} ({cell.arm}, seed {cell.seed}). Finished cells are "
                    f"kept and this one continues from {cell.last} when it exists: run the same command again "
                    f"({command_line()}).") from None
        return summarize_study(spec, extra_opts)


def _run_cell(cell: Cell, requested: dict, steps: int) -> None:
    """Train (or resume) and evaluate a cell when it has no record, then compute its missing attack entries."""
    cfg, record_path = cell.cfg, cell.run_dir / RECORD_NAME
    record = cell.record
    missing = record.missing(requested) if record is not None else list(requested)
    if record is not None and not missing:
        if cell.upgraded:
            write_record(record_path, record)
        logger.info(f"  already complete ({record_path}); skipping")
        return
    device = resolve_device(cfg.DEVICE)
    if record is None:
        if cell.epochs_done and cell.epochs_done >= cfg.SOLVER.MAX_EPOCHS:  # trained, record not written
            model = load_model(cell.last, cfg, device=device).model
            clean = evaluate_datasets(cfg, model, device)
        else:
            clean = train(cfg, resume=cell.epochs_done > 0)
            model = load_model(cell.last, cfg, device=device).model
        record = CellRecord(cell.arm, cell.seed, source_domain(cfg), config_to_dict(cfg),
                            {name: {m: row[m] for m in METRICS} for name, row in clean.items()})
    else:
        if not cell.last.is_file():
            raise ReIDError(
                f"The study now asks for attack results that {record_path} lacks "
                f"({', '.join(run.label() for run in missing[:4])}), and the trained weights to compute them, "
                f"{cell.last}, are gone. Restore last.pth, or delete {cell.run_dir} to retrain the cell.")
        logger.info(f"  trained; computing the {len(missing)} attack setting(s) its record lacks (or holds from "
                    f"other steps or an earlier attack version): {', '.join(run.label() for run in missing)}")
        model = load_model(cell.last, cfg, device=device).model
    # Each run draws from its own per-image generators: the entries are those a full run would give.
    triptychs = AttackOutputs(cfg.DATASETS.ROOT, STUDY_TRIPTYCHS, cell.run_dir / "attacks", save_adv=None)
    attacked = evaluate_attacks(cfg, model, [record.source], missing, steps, device, on_batch=triptychs.on_batch,
                                on_result=triptychs.on_result)
    for run, row in attacked[record.source]["attacks"].items():
        record.add(run, row, requested[run])
    write_record(record_path, record)


def collect_records(spec: StudySpec, extra_opts: Sequence[str] = ()) -> list[CellRecord]:
    """Every finished cell's record, checked against the study's settings, with only the attack entries the
    study asks for, computed as it now computes them (unfinished cells are simply absent)."""
    requested = requested_runs(spec)
    records, incomplete = [], 0
    for cell in plan_cells(spec, extra_opts, only_finished=True):
        record = cell.record
        incomplete += bool(record.missing(requested))
        attacks = {run: entry for run, entry in record.attacks.items()
                   if run in requested and entry.is_current(requested[run])}
        records.append(CellRecord(record.arm, record.seed, record.source, record.config, record.clean, attacks))
    if incomplete:
        logger.warning(f"{incomplete} finished cell(s) lack attack results the study asks for; run the study "
                       "(not --summarize-only) to compute them from the trained weights.")
    return records


def summarize_study(spec: StudySpec, extra_opts: Sequence[str] = ()) -> Path:
    """Write study_long.csv, study_summary.csv, study.md and the plots from the completed cells.

    ``extra_opts`` are the command-line overrides the study ran with: records are checked against them.
    """
    out = Path(spec.output_dir)
    rows = long_rows(collect_records(spec, extra_opts))
    if not rows:
        raise ConfigError(f"No completed cell in {out}; run the study first.")
    summary = aggregate(rows, spec.baseline)
    for name, table in (("study_long.csv", rows), ("study_summary.csv", summary)):
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(table[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(table)
        atomic_write_text(out / name, text.getvalue())
    atomic_write_text(out / "study.md", markdown_table(spec, summary))
    plot_study(spec, summary, out)
    logger.info(f"Study summary written to {out / 'study.md'}")
    return out
