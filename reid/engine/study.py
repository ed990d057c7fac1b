"""The paper's experiments as one resumable grid: regularisers x seeds -> same/cross-domain -> attacks.

A study file (``configs/study/*.yml``) names a base experiment, the regulariser arms (each a list of
``KEY VALUE`` overrides), the seeds, and the attacks. Every (arm, seed) cell trains on the source
domain (the one DATASETS.TEST entry that is also in DATASETS.TRAIN), is evaluated on every DATASETS.TEST
entry and attacked on the source domain's queries, with a few clean/adversarial/difference triptychs per
attack setting in ``<cell>/attacks/<source>/``; its record (``study_record.json``, written atomically)
stores the numbers together with what produced them: the cell's final config and, for each attack entry,
its step count. The summary reports mean and standard deviation over seeds, and paired differences
against the ``none`` arm (same seeds, same data).

Resuming checks every existing cell against the current study file and command line before anything
trains. A cell trained with other settings is refused with a ConfigError (finished work is never
overwritten, nor silently reused); a half-trained cell resumes from its ``last.pth``; a finished cell
whose record lacks attack entries the study now asks for (another eps, attack, objective or step
count, or entries computed by an earlier version of the attack code, see
:data:`~reid.engine.attacking.ATTACK_PROTOCOL`) gets just those computed from its ``last.pth``. Entries
the study no longer asks for stay in the record but leave the tables. Records written before the config
was stored are checked against the config inside their ``last.pth`` and upgraded; without a ``last.pth``
they are kept with a warning.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from yacs.config import CfgNode

from reid.config import config_to_dict, flatten_config, load_config, resolve_config_path
from reid.engine.attacking import ATTACK_PROTOCOL, AttackRun, plan_runs
from reid.evaluation.attacks import ATTACKS, OBJECTIVES, attack_settings
from reid.modeling import build_model
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.study")

STUDY_DIR = Path(__file__).resolve().parents[2] / "configs" / "study"
METRICS = ("R1", "mAP", "mINP")
RECORD_NAME = "study_record.json"
REQUIRED_FIELDS = ("name", "base_config", "output_dir", "seeds", "arms")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # arms name folders
# Config keys that cannot change a cell's numbers: where the cell and its data live (a study folder or
# the datasets may be moved) and how often it logs.
RESULT_NEUTRAL_KEYS = frozenset({"OUTPUT_DIR", "DATASETS.ROOT", "SOLVER.LOG_PERIOD"})
STUDY_TRIPTYCHS = 2  # queries drawn as clean/adversarial/difference triptychs per attack setting and cell


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
    """A preset name (``synthetic``, ``market``) from configs/study/, or a path to a study file.

    The whole file is checked before anything runs: every field's type and range, every arm's config
    (built the way its cells will be), its source domain, and its model (built without weights), so a
    mistake surfaces now and not after hours of training.
    """
    path = Path(preset_or_path)
    if not path.is_file():
        path = STUDY_DIR / f"{preset_or_path}.yml"
    if not path.is_file():
        presets = sorted(p.stem for p in STUDY_DIR.glob("*.yml"))
        raise ConfigError(f"No study {preset_or_path!r}: not a file, and not a preset in {STUDY_DIR} "
                          f"(presets: {', '.join(presets)}).")
    data = _read_study_file(path)
    _check_fields(data, path)
    spec = StudySpec(**data)
    spec.arms = {arm: [str(v) for v in opts] for arm, opts in spec.arms.items()}
    spec.overrides = [str(v) for v in spec.overrides]
    spec.eps = [float(e) for e in spec.eps]
    _check_arms(spec, f"Study file {path}")
    return spec


def _read_study_file(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"Study file {path} is not valid YAML: {exc.problem or exc.context}{where}.") from exc
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read study file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Study file {path} must hold a mapping of fields ({', '.join(REQUIRED_FIELDS)}, ...), "
                          f"not {type(data).__name__}; see configs/study/synthetic.yml for an example.")
    return data


def _field_error(path: Path, name: str, problem: str, arm: str | None = None) -> ConfigError:
    where = f"field {name!r}" + (f", arm {arm!r}" if arm is not None else "")
    return ConfigError(f"Study file {path}, {where}: {problem} See configs/study/synthetic.yml for an "
                       "example of every field.")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _value(data: dict, name: str) -> Any:
    """The field as given, or StudySpec's default."""
    if name in data:
        return data[name]
    spec_field = StudySpec.__dataclass_fields__[name]
    return spec_field.default_factory() if callable(spec_field.default_factory) else spec_field.default


def _check_fields(data: dict, path: Path) -> None:
    """Every field present, of the right type and in range; ConfigError naming the file and field otherwise."""
    known = set(StudySpec.__dataclass_fields__)
    unknown = sorted(set(map(str, data)) - known)
    if unknown:
        raise ConfigError(f"Study file {path} has unknown keys {unknown}; valid keys: {sorted(known)}.")
    missing = [name for name in REQUIRED_FIELDS if name not in data]
    if missing:
        raise ConfigError(f"Study file {path} is incomplete: it needs the fields {', '.join(missing)}; "
                          "see configs/study/synthetic.yml for an example.")
    for name in ("name", "base_config", "output_dir", "baseline"):
        if name in data and not (isinstance(data[name], str) and data[name].strip()):
            raise _field_error(path, name, f"expected a non-empty string, got {data[name]!r}.")

    seeds = data["seeds"]
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds):
        negative = isinstance(seeds, list) and any(_is_int(s) and s < 0 for s in seeds)
        why = " (a negative SEED draws a random seed, breaking the pairing of arms by seed)" if negative else ""
        raise _field_error(path, "seeds", f"expected a non-empty list of non-negative integers such as [0, 1, 2]"
                                          f"{why}, got {seeds!r}.")
    if len(set(seeds)) != len(seeds):
        raise _field_error(path, "seeds", f"lists a seed twice: {seeds}.")

    arms = data["arms"]
    if not isinstance(arms, dict) or not arms:
        raise _field_error(path, "arms", f"expected a mapping of arm names to override lists such as "
                                         f"{{none: [], lfm: [MODEL.REGULARIZER.NAME, lfm]}}, got {arms!r}.")
    for arm, opts in arms.items():
        if not (isinstance(arm, str) and ARM_NAME.fullmatch(arm)):
            raise _field_error(path, "arms", f"the arm name {arm!r} must be a string of letters, digits, '_', '.' "
                                             "or '-' (it names a folder); quote names YAML reads as booleans, "
                                             "such as 'off' or 'no'.")
        _check_override_list(path, opts, "arms", arm)
    _check_override_list(path, _value(data, "overrides"), "overrides")

    for name, allowed in (("attacks", ATTACKS), ("objectives", OBJECTIVES)):
        values = _value(data, name)
        if not isinstance(values, list) or not values or any(v not in allowed for v in values):
            raise _field_error(path, name, f"expected a non-empty list drawn from {', '.join(allowed)}, "
                                           f"got {values!r}.")
    eps = _value(data, "eps")
    if not isinstance(eps, list) or not eps or not all(_is_number(e) and 0 < e <= 255 for e in eps):
        raise _field_error(path, "eps", f"expected a non-empty list of attack budgets in 1/255 units, each above 0 "
                                        f"and at most 255, such as [2, 4, 8]; got {eps!r}.")
    steps = _value(data, "steps")
    if not (_is_int(steps) and steps >= 1):
        raise _field_error(path, "steps", f"expected a positive integer (iterations of the multi-step attacks), "
                                          f"got {steps!r}.")
    baseline = _value(data, "baseline")
    if baseline not in arms:
        raise _field_error(path, "baseline", f"the baseline arm {baseline!r} is not among the arms "
                                             f"({', '.join(map(str, arms))}).")


def _check_override_list(path: Path, opts: Any, name: str, arm: str | None = None) -> None:
    if not isinstance(opts, list) or len(opts) % 2:
        raise _field_error(path, name, f"expected a list of KEY VALUE pairs such as [MODEL.REGULARIZER.NAME, lfm] "
                                       f"(or [] for none), got {opts!r}.", arm)
    bad_keys = [key for key in opts[0::2] if not isinstance(key, str)]
    if bad_keys:
        raise _field_error(path, name, f"config keys must be strings such as SOLVER.MAX_EPOCHS; got {bad_keys!r} "
                                       f"in {opts!r}.", arm)


def _check_arms(spec: StudySpec, origin: str, extra_opts: Sequence[str] = ()) -> None:
    """Build every arm's config, find its source domain and build its model, as its cells will; a failure
    is a ConfigError naming ``origin`` (the study file) and the layer that causes it."""
    out = Path(spec.output_dir)
    try:
        resolve_config_path(spec.base_config)
    except ConfigError as exc:
        raise ConfigError(f"{origin}, field 'base_config': {exc}") from exc
    for arm in spec.arms:
        try:
            _check_cell_config(_cell_config(spec, arm, spec.seeds[0], out, extra_opts))
        except ReIDError as exc:  # ReIDError too: a regulariser stage the backbone lacks is found by build_model
            raise ConfigError(f"{origin}, {_failing_layer(spec, arm, extra_opts)}: {exc}") from exc


def _check_cell_config(cfg: CfgNode) -> None:
    """What a cell needs of its config before it trains: one source domain, and a model that builds."""
    source_domain(cfg)
    # Only the structure is checked (regulariser, stage, backbone, head): built on the meta device it costs
    # no memory, no initialisation and no weights, so large backbones check in a fraction of a second.
    try:
        with torch.device("meta"):
            build_model(cfg, num_classes=0, load_imagenet=False)
    except ReIDError:
        raise
    except Exception:  # a third-party constructor that computes on tensors, which meta tensors cannot: build it
        build_model(cfg, num_classes=0, load_imagenet=False)


def _failing_layer(spec: StudySpec, arm: str, extra_opts: Sequence[str]) -> str:
    """The first layer of the cell's config (base, overrides, arm, command line) whose config already fails."""
    layers = [("field 'base_config'", []), ("field 'overrides'", spec.overrides),
              (f"field 'arms', arm {arm!r}", [*spec.overrides, *spec.arms[arm]])]
    for where, opts in layers:
        try:
            _check_cell_config(load_config(spec.base_config, opts))
        except ReIDError:
            return where
    return f"the command-line overrides {' '.join(extra_opts)}" if extra_opts else f"field 'arms', arm {arm!r}"


def source_domain(cfg: CfgNode) -> str:
    """The cell's source domain: the one DATASETS.TEST entry it trains on (DATASETS.TRAIN). Its queries are
    attacked and its row is the same-domain result; the other DATASETS.TEST entries are cross-domain."""
    sources = [name for name in dict.fromkeys(cfg.DATASETS.TEST) if name in cfg.DATASETS.TRAIN]
    if len(sources) != 1:
        found = "none of them is" if not sources else f"{len(sources)} of them ({', '.join(sources)}) are"
        raise ConfigError(
            f"A study needs one source domain, a DATASETS.TEST entry the cells train on, but of DATASETS.TEST "
            f"{list(cfg.DATASETS.TEST)}, {found} in DATASETS.TRAIN {list(cfg.DATASETS.TRAIN)}. List exactly one "
            "training dataset in DATASETS.TEST (same-domain, attacked) and the unseen ones (cross-domain)."
        )
    return sources[0]


def _cell_config(spec: StudySpec, arm: str, seed: int, out: Path, extra_opts: Sequence[str] = ()) -> CfgNode:
    """Base experiment <- study overrides <- the arm's overrides <- command line <- seed and folder."""
    return load_config(spec.base_config, [*spec.overrides, *spec.arms[arm], *extra_opts, "SEED", str(seed),
                                          "OUTPUT_DIR", str(out / arm / f"seed{seed}")],
                       opts_source="in the study file" + (" or on the command line" if extra_opts else ""))


@dataclass
class _Cell:
    """One (arm, seed) of the grid, with what its folder already holds (checked against ``cfg``)."""

    arm: str
    seed: int
    cfg: CfgNode
    record: dict | None = None  # the finished cell's record
    upgraded: bool = False  # an old record that gained its config (from last.pth), to be written back
    epochs_done: int = 0  # completed epochs in last.pth

    @property
    def run_dir(self) -> Path:
        return Path(self.cfg.OUTPUT_DIR)


def requested_runs(spec: StudySpec) -> dict[AttackRun, int]:
    """Every attack entry the study asks for, with the step count it runs (FGSM always takes one)."""
    return {run: attack_settings(run.attack, run.eps / 255, spec.steps).steps
            for run in plan_runs(spec.attacks, spec.objectives, spec.eps)}


def missing_runs(record: dict | None, requested: dict[AttackRun, int]) -> list[AttackRun]:
    """The requested entries a record lacks, or holds from another step count or attack protocol."""
    stored = record["attacks"] if record else {}
    return [run for run, steps in requested.items() if not _is_current(stored.get(run.key, {}), steps)]


def _is_current(entry: dict, steps: int) -> bool:
    """Whether a stored attack entry is what the study now computes: same step count, same attack code."""
    return entry.get("steps") == steps and entry.get("protocol") == ATTACK_PROTOCOL


def config_differences(stored: dict, current: dict) -> list[str]:
    """``KEY: stored -> current`` for each result-affecting key the two configs both hold but disagree on.

    Keys only one side holds come from another version of the code (a new option with its default),
    not from the user's settings, so they are not counted.
    """
    old, new = flatten_config(stored), flatten_config(current)
    return [f"{key}: {old[key]!r} -> {new[key]!r}" for key in new
            if key in old and key not in RESULT_NEUTRAL_KEYS and old[key] != new[key]]


def _inspect_cell(cell: _Cell) -> list[str]:
    """Load what the cell's folder holds into ``cell``; the config differences that forbid reusing it."""
    from reid.utils.checkpoint import load_checkpoint

    record_path, last = cell.run_dir / RECORD_NAME, cell.run_dir / "last.pth"
    current = config_to_dict(cell.cfg)
    if record_path.is_file():
        cell.record = _read_record(record_path)
        stored = cell.record.get("config")
        if stored is None:  # written before records stored their config: the checkpoint still has it
            stored = load_checkpoint(last).get("config") if last.is_file() else None
            if stored is None:
                logger.warning(f"  {record_path} does not say which settings produced it, and no last.pth with "
                               "them is left; it is assumed to match this study. Delete the cell folder to "
                               "retrain it.")
                return []
            if not config_differences(stored, current):
                cell.record["config"], cell.upgraded = stored, True
        return config_differences(stored, current)
    if last.is_file():  # half-trained, or trained but stopped before its record was written
        state = load_checkpoint(last)
        cell.epochs_done = state["epoch"]
        return config_differences(state.get("config") or {}, current)
    return []


def _read_record(path: Path) -> dict:
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ReIDError(f"Cannot read the study record {path} ({exc}); delete it, and the next run rebuilds it "
                        "from the cell's last.pth.") from exc
    if not isinstance(record, dict) or not {"clean", "attacks", "source"} <= set(record):
        raise ReIDError(f"{path} is not a study record; delete it, and the next run rebuilds it from the cell's "
                        "last.pth.")
    return record


def _plan_cells(spec: StudySpec, extra_opts: Sequence[str], only_finished: bool = False) -> list[_Cell]:
    """Every cell's config and folder state; refuses, before anything runs, cells made with other settings."""
    out = Path(spec.output_dir)
    cells, refused = [], []
    for seed in spec.seeds:
        for arm in spec.arms:
            cell = _Cell(arm, seed, _cell_config(spec, arm, seed, out, extra_opts))
            if only_finished and not (cell.run_dir / RECORD_NAME).is_file():
                continue
            differences = _inspect_cell(cell)
            if differences:
                refused.append((cell, differences))
            cells.append(cell)
    if refused:
        cell, differences = refused[0]
        state = "finished cell" if cell.record else "unfinished cell (no record yet; last.pth at epoch " \
            f"{cell.epochs_done})"
        others = f" {len(refused) - 1} other cell(s) differ as well." if len(refused) > 1 else ""
        shown = "; ".join(differences[:5]) + (f"; and {len(differences) - 5} more" if len(differences) > 5 else "")
        raise ConfigError(
            f"The {state} {cell.run_dir} was made with other settings than the study file and command line "
            f"now give ({shown}; stored -> now).{others} Its results cannot be reused for the new settings, and "
            "finished work is never overwritten: run the new settings in another folder (--output-dir, or "
            f"output_dir in the study file), or delete {cell.run_dir} to redo this cell."
        )
    return cells


def run_study(spec: StudySpec, extra_opts: Sequence[str] = ()) -> Path:
    """Run (or resume) every cell, then write the summary tables and plots; returns the output folder."""
    from reid.engine.attacking import run_attacks
    from reid.engine.inference import load_model_for_inference
    from reid.engine.training import train
    from reid.evaluation.evaluator import evaluate_datasets

    requested = requested_runs(spec)
    if extra_opts:  # load_study checked the file alone; command-line overrides can break any cell as well
        _check_arms(spec, f"Study {spec.name!r}", extra_opts)
    cells = _plan_cells(spec, extra_opts)
    Path(spec.output_dir).mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for index, cell in enumerate(cells, 1):
        cfg, run_dir = cell.cfg, cell.run_dir
        logger.info(f"[study {spec.name}] cell {index}/{len(cells)}: {cell.arm}, seed {cell.seed} "
                    f"({(time.perf_counter() - start) / 60:.1f} min elapsed)")
        missing = missing_runs(cell.record, requested)
        record = cell.record
        if record is not None and not missing:
            if cell.upgraded:
                _write_record(run_dir / RECORD_NAME, record)
            logger.info(f"  already complete ({run_dir / RECORD_NAME}); skipping")
            continue
        last = run_dir / "last.pth"
        if record is None:
            if cell.epochs_done and cell.epochs_done >= cfg.SOLVER.MAX_EPOCHS:  # trained, record not written
                model, _ = load_model_for_inference(last, cfg, _device(cfg))
                clean = evaluate_datasets(cfg, model, _device(cfg))
            else:
                clean = train(cfg, resume=cell.epochs_done > 0)
                model, _ = load_model_for_inference(last, cfg, _device(cfg))
            record = {"arm": cell.arm, "seed": cell.seed, "source": source_domain(cfg),
                      "config": config_to_dict(cfg),
                      "clean": {name: {m: row[m] for m in METRICS} for name, row in clean.items()},
                      "attacks": {}}
        else:
            if not last.is_file():
                raise ReIDError(
                    f"The study now asks for attack results that {run_dir / RECORD_NAME} lacks "
                    f"({', '.join(run.key for run in missing[:4])}), and the trained weights to compute them, "
                    f"{last}, are gone. Restore last.pth, or delete {run_dir} to retrain the cell.")
            logger.info(f"  trained; computing the {len(missing)} attack setting(s) its record lacks (or holds from "
                        f"other steps or an earlier attack version): {', '.join(run.key for run in missing)}")
            model, _ = load_model_for_inference(last, cfg, _device(cfg))
        source = record["source"]
        # One call covers every missing entry (it evaluates their product; each entry has its own seeded
        # generator, so the entries kept are the ones a full run would give).
        attacked = run_attacks(cfg, model, [source], *_covering(missing), spec.steps, run_dir,
                               vis=STUDY_TRIPTYCHS)[source]["attacks"]
        for run in missing:
            record["attacks"][run.key] = {**{m: attacked[run.key][m] for m in METRICS}, "steps": requested[run],
                                          "protocol": ATTACK_PROTOCOL}
        _write_record(run_dir / RECORD_NAME, record)
    return summarize_study(spec, extra_opts)


def _covering(runs: list[AttackRun]) -> tuple[list[str], list[float], list[str]]:
    """The attacks, eps values and objectives whose product holds every run, in run_attacks' argument order."""
    return ([*dict.fromkeys(r.attack for r in runs)], [*dict.fromkeys(r.eps for r in runs)],
            [*dict.fromkeys(r.objective for r in runs)])


def _write_record(path: Path, record: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=2))
    os.replace(tmp, path)


def _device(cfg: CfgNode) -> str:
    from reid.utils.env import resolve_device

    return resolve_device(cfg.DEVICE)


def collect_records(spec: StudySpec, extra_opts: Sequence[str] = ()) -> list[dict]:
    """Every finished cell's record, checked against the study's settings, with only the attack entries the
    study asks for (unfinished cells are simply absent)."""
    requested = requested_runs(spec)
    wanted = {run.key: steps for run, steps in requested.items()}
    records, incomplete = [], 0
    for cell in _plan_cells(spec, extra_opts, only_finished=True):
        incomplete += bool(missing_runs(cell.record, requested))
        attacks = {key: row for key, row in cell.record["attacks"].items()
                   if key in wanted and _is_current(row, wanted[key])}
        records.append({**cell.record, "attacks": attacks})
    if incomplete:
        logger.warning(f"{incomplete} finished cell(s) lack attack results the study asks for; run the study "
                       "(not --summarize-only) to compute them from the trained weights.")
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


def summarize_study(spec: StudySpec, extra_opts: Sequence[str] = ()) -> Path:
    """Write study_long.csv, study_summary.csv, study.md and the plots from the completed cells.

    ``extra_opts`` are the command-line overrides the study ran with: records are checked against them.
    """
    out = Path(spec.output_dir)
    rows = long_rows(collect_records(spec, extra_opts))
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
