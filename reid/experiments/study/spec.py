"""A study file (``configs/study/*.yml``): what the grid runs, checked in full before anything trains.

A study file names a base experiment, the regulariser arms (each a list of ``KEY VALUE`` overrides), the
seeds, and the attacks. Every (arm, seed) cell's config is base <- study overrides <- arm <- command line
<- seed and folder; it trains on its source domain (the one DATASETS.TEST entry that is also in
DATASETS.TRAIN). :func:`load_study` validates every field, every arm's config, its source domain and its
model (built without weights), so a mistake surfaces now and not after hours of training.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml
from yacs.config import CfgNode

from reid.config import config_dir, load_config, resolve_config_path
from reid.evaluation.attacks import ATTACKS, OBJECTIVES, AttackRun, attack_settings, check_budgets, plan_runs
from reid.modeling import build_model
from reid.utils.errors import ConfigError, ReIDError

STUDY_DIR_NAME = "study"  # presets live in the shipped configs' study/ folder
REQUIRED_FIELDS = ("name", "base_config", "output_dir", "seeds", "arms")
ARM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")  # arms name folders


def presets_dir() -> Path:
    """The folder of the shipped study presets (``synthetic``, ``market``)."""
    return config_dir() / STUDY_DIR_NAME


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
        path = presets_dir() / f"{preset_or_path}.yml"
    if not path.is_file():
        presets = sorted(p.stem for p in presets_dir().glob("*.yml"))
        raise ConfigError(f"No study {preset_or_path!r}: not a file, and not a preset in {presets_dir()} "
                          f"(presets: {', '.join(presets)}).")
    data = _read_study_file(path)
    _check_fields(data, path)
    spec = StudySpec(**data)
    spec.arms = {arm: [str(v) for v in opts] for arm, opts in spec.arms.items()}
    spec.overrides = [str(v) for v in spec.overrides]
    spec.eps = [float(e) for e in spec.eps]
    check_arms(spec, f"Study file {path}")
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
    try:
        valid = isinstance(eps, list) and 0 not in check_budgets(eps)
    except ConfigError:
        valid = False
    if not valid:
        raise _field_error(path, "eps", f"expected a non-empty list of attack budgets in whole 1/255 levels, each "
                                        f"above 0 and at most 255, such as [2, 4, 8]; got {eps!r}.")
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


def check_arms(spec: StudySpec, origin: str, extra_opts: Sequence[str] = ()) -> None:
    """Build every arm's config, find its source domain and build its model, as its cells will; a failure
    is a ConfigError naming ``origin`` (the study file) and the layer that causes it."""
    out = Path(spec.output_dir)
    try:
        resolve_config_path(spec.base_config)
    except ConfigError as exc:
        raise ConfigError(f"{origin}, field 'base_config': {exc}") from exc
    for arm in spec.arms:
        try:
            _check_cell_config(cell_config(spec, arm, spec.seeds[0], out, extra_opts))
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


def cell_config(spec: StudySpec, arm: str, seed: int, out: Path, extra_opts: Sequence[str] = ()) -> CfgNode:
    """Base experiment <- study overrides <- the arm's overrides <- command line <- seed and folder."""
    return load_config(spec.base_config, [*spec.overrides, *spec.arms[arm], *extra_opts, "SEED", str(seed),
                                          "OUTPUT_DIR", str(out / arm / f"seed{seed}")],
                       opts_source="in the study file" + (" or on the command line" if extra_opts else ""))


def requested_runs(spec: StudySpec) -> dict[AttackRun, int]:
    """Every attack entry the study asks for, with the step count it runs (FGSM always takes one)."""
    return {run: attack_settings(run.attack, run.eps / 255, spec.steps).steps
            for run in plan_runs(spec.attacks, spec.objectives, spec.eps)}
