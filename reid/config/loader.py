"""Loading experiment files (with ``_BASE_`` inheritance) and ``KEY VALUE`` overrides, with clear errors.

yacs alone raises bare ``KeyError``/``ValueError``; here an unknown key or a wrongly typed value
becomes a :class:`ConfigError` naming the key, the file and the closest valid key.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import Any, Iterable, Sequence

import yaml
from yacs.config import CfgNode as CN

from reid.config.defaults import get_cfg_defaults
from reid.utils.errors import ConfigError

BASE_KEY = "_BASE_"
# The checkout's configs/ (a source or editable install); an installed wheel falls back to ./configs.
CONFIGS_DIR = Path(__file__).resolve().parents[2] / "configs"
if not CONFIGS_DIR.is_dir():
    CONFIGS_DIR = Path.cwd() / "configs"
STUDY_DIR_NAME = "study"  # configs/study/*.yml describe study grids (tools/study.py), not one run


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or a bare file name (with or without ``.yml``) found under ``configs/``."""
    path = Path(name)
    candidates = [path]
    if not path.is_absolute():
        candidates += [CONFIGS_DIR / path, CONFIGS_DIR / path.with_suffix(".yml")]
        candidates += sorted(p for p in CONFIGS_DIR.rglob(path.name) if STUDY_DIR_NAME not in p.parts)
    for candidate in candidates:
        if candidate.is_file():
            if candidate.resolve().parent == (CONFIGS_DIR / STUDY_DIR_NAME).resolve():
                raise ConfigError(
                    f"{candidate} describes a study grid, not a single run: run it with "
                    f"python tools/study.py --preset {candidate.stem}."
                )
            return candidate
    if path.is_dir():
        raise ConfigError(f"Config {str(name)!r} is a folder; pass a .yml file (e.g. {path}/config.yaml of a run).")
    known = sorted(p.relative_to(CONFIGS_DIR).as_posix() for p in CONFIGS_DIR.rglob("*.yml")
                   if STUDY_DIR_NAME not in p.relative_to(CONFIGS_DIR).parts)
    close = difflib.get_close_matches(path.name, known, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise ConfigError(
        f"Config file {str(name)!r} not found, neither as a path nor under {CONFIGS_DIR}.{hint} "
        f"Available configs: {', '.join(known) or 'none'}."
    )


def _read_yaml(path: Path, chain: tuple[Path, ...] = ()) -> dict:
    """The file's mapping with its ``_BASE_`` chain merged underneath (later files win)."""
    if path in chain:
        raise ConfigError(f"Config {path} inherits from itself through _BASE_ ({' -> '.join(map(str, chain))}).")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"Cannot read config file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"Config file {path} must hold a mapping of keys to values, not {type(data).__name__}.")
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    base_path = (path.parent / base) if not Path(base).is_absolute() else Path(base)
    if not base_path.is_file():
        try:
            base_path = resolve_config_path(base)
        except ConfigError as exc:
            raise ConfigError(f"{path} inherits from a missing file (_BASE_: {base}). {exc}") from exc
    merged = _read_yaml(base_path.resolve(), chain + (path,))
    _deep_update(merged, data)
    return merged


def _deep_update(dst: dict, src: dict) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _deep_update(dst[key], value)
        else:
            dst[key] = value


def _all_keys(node: CN, prefix: str = "") -> list[str]:
    keys = []
    for key, value in node.items():
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, CN):
            keys += _all_keys(value, full + ".")
    return keys


def _coerce(key: str, value: Any, default: Any, source: str) -> Any:
    """``value`` converted to the type of ``default``, or a ConfigError that says what was expected."""
    if isinstance(value, str) and not isinstance(default, str):
        try:
            value = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            pass
    if isinstance(default, bool):
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false"):
            return value.lower() == "true"
    elif isinstance(default, float) and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    elif isinstance(default, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    elif isinstance(default, str) and isinstance(value, str):
        return value
    elif isinstance(default, (tuple, list)):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool) and all(
            isinstance(d, type(value)) for d in default
        ):
            value = (value,)  # a single name for a list of names: DATASETS.TEST market1501
        if isinstance(value, (tuple, list)):
            if default and isinstance(default[0], float):
                value = [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            if default and not all(_same_kind(v, default[0]) for v in value):
                raise ConfigError(
                    f"Config key {key} ({source}) expects a list of {type(default[0]).__name__} like {default!r}, "
                    f"got {value!r}."
                )
            return tuple(value)
    raise ConfigError(
        f"Config key {key} ({source}) expects a {type(default).__name__} like {default!r}, got {value!r} "
        f"({type(value).__name__})."
    )


def _same_kind(value: Any, example: Any) -> bool:
    """Whether a list element has the type of the default's elements (bool is not an int here)."""
    if isinstance(example, bool) or isinstance(value, bool):
        return isinstance(value, bool) and isinstance(example, bool)
    return isinstance(value, type(example))


def _merge(cfg: CN, updates: dict, source: str, prefix: str = "") -> None:
    for key, value in updates.items():
        full = f"{prefix}{key}"
        if key not in cfg:
            close = difflib.get_close_matches(full, _all_keys(get_cfg_defaults()), n=1, cutoff=0.5)
            hint = f" The closest valid key is {close[0]}." if close else ""
            raise ConfigError(
                f"Unknown config key {full} ({source}).{hint} "
                "Every valid key, with its meaning, is listed in reid/config/defaults.py."
            )
        default = cfg[key]
        if isinstance(default, CN):
            if not isinstance(value, dict):
                raise ConfigError(
                    f"Config key {full} ({source}) is a group of options; give it a mapping, not {value!r}."
                )
            _merge(default, value, source, full + ".")
        else:
            cfg[key] = _coerce(full, value, default, source)


def overrides_to_dict(opts: Sequence[str]) -> dict:
    """``["SOLVER.MAX_EPOCHS", "2", ...]`` as a nested dict of raw values."""
    if len(opts) % 2 and not any(word.startswith("--") for word in opts):
        raise ConfigError(
            f"Overrides must come in KEY VALUE pairs; got an odd number of words: {' '.join(opts)}. "
            "Quote values holding spaces, e.g. DATASETS.TEST \"('market1501', 'dukemtmc')\"."
        )
    options = [word for word in opts[0::2] if word.startswith("-")]
    if options:
        raise ConfigError(
            f"{options[0]} appears among the KEY VALUE overrides; options such as --weights must come before "
            "the first override (everything after it is read as config keys and values)."
        )
    nested: dict = {}
    for key, value in zip(opts[0::2], opts[1::2]):
        node = nested
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return nested


def load_config(config: str | Path | None = None, opts: Iterable[str] = (), freeze: bool = True,
                opts_source: str = "on the command line") -> CN:
    """Defaults, then the experiment file (and its bases), then ``KEY VALUE`` overrides.

    ``opts_source`` says where the overrides come from, for error messages.
    """
    cfg = get_cfg_defaults()
    if config:
        path = resolve_config_path(config)
        _merge(cfg, _read_yaml(path.resolve()), source=f"in {path}")
    opts = list(opts)
    if opts:
        _merge(cfg, overrides_to_dict(opts), source=opts_source)
    finalize_config(cfg)
    if freeze:
        cfg.freeze()
    return cfg


def finalize_config(cfg: CN) -> None:
    """Resolve shorthands and check cross-key constraints once, so every consumer sees one truth."""
    reg = cfg.MODEL.REGULARIZER
    if cfg.MODEL.LFM.ENABLED:
        if reg.NAME not in ("none", "lfm"):
            raise ConfigError(
                f"MODEL.LFM.ENABLED is True but MODEL.REGULARIZER.NAME is {reg.NAME!r}: one stage holds one "
                "regulariser. Set MODEL.LFM.ENABLED False or MODEL.REGULARIZER.NAME lfm."
            )
        reg.NAME = "lfm"
    choices = {
        "MODEL.REGULARIZER.NAME": (reg.NAME, ("none", "lfm", "dropout", "spatial_dropout", "dropblock",
                                              "random_erasing")),
        "MODEL.NECK": (cfg.MODEL.NECK, ("bnneck", "none")),
        "MODEL.NECK_FEAT": (cfg.MODEL.NECK_FEAT, ("after", "before")),
        "MODEL.POOLING": (cfg.MODEL.POOLING, ("avg", "gem")),
        "MODEL.LFM.FILL": (cfg.MODEL.LFM.FILL, ("random", "zero", "mean")),
        "SOLVER.OPTIMIZER": (cfg.SOLVER.OPTIMIZER, ("adam", "adamw", "sgd")),
        "SOLVER.SCHED": (cfg.SOLVER.SCHED, ("multistep", "cosine")),
        "SOLVER.AMP_DTYPE": (cfg.SOLVER.AMP_DTYPE, ("bf16", "fp16")),
        "DATALOADER.SAMPLER": (cfg.DATALOADER.SAMPLER, ("pk", "random")),
        "TEST.METRIC": (cfg.TEST.METRIC, ("cosine", "euclidean")),
        "TEST.BEST_METRIC": (cfg.TEST.BEST_METRIC, ("mAP", "R1", "mINP")),
        "TEST.ATTACK.NAME": (cfg.TEST.ATTACK.NAME, ("", "fgsm", "ifgsm", "mifgsm", "pgd")),
        "TEST.ATTACK.OBJECTIVE": (cfg.TEST.ATTACK.OBJECTIVE, ("feature", "metric", "both")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            close = difflib.get_close_matches(str(value), allowed, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"Config key {key} is {value!r}; expected one of {', '.join(map(repr, allowed))}.{hint}")
    if reg.NAME == "random_erasing" and cfg.INPUT.RE_PROB <= 0:
        raise ConfigError(
            "MODEL.REGULARIZER.NAME random_erasing regularises the input, not a feature map: it needs "
            "INPUT.RE_PROB > 0 (BoT: 0.5)."
        )
    for loss in cfg.MODEL.LOSSES:
        if loss not in ("ce", "triplet", "center"):
            raise ConfigError(f"MODEL.LOSSES holds {loss!r}; expected any of 'ce', 'triplet', 'center'.")
    if not cfg.MODEL.LOSSES:
        raise ConfigError("MODEL.LOSSES is empty; give at least one of 'ce', 'triplet', 'center'.")
    if cfg.DATALOADER.SAMPLER == "pk" and cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of DATALOADER.NUM_INSTANCE "
            f"({cfg.DATALOADER.NUM_INSTANCE}) for the PK sampler."
        )
    positive = {"SOLVER.BASE_LR": cfg.SOLVER.BASE_LR, "SOLVER.MAX_EPOCHS": cfg.SOLVER.MAX_EPOCHS,
                "SOLVER.IMS_PER_BATCH": cfg.SOLVER.IMS_PER_BATCH, "TEST.IMS_PER_BATCH": cfg.TEST.IMS_PER_BATCH,
                "DATALOADER.NUM_INSTANCE": cfg.DATALOADER.NUM_INSTANCE, "TEST.MAX_RANK": cfg.TEST.MAX_RANK,
                "SOLVER.LOG_PERIOD": cfg.SOLVER.LOG_PERIOD}
    non_negative = {"DATALOADER.NUM_WORKERS": cfg.DATALOADER.NUM_WORKERS,
                    "SOLVER.WARMUP_EPOCHS": cfg.SOLVER.WARMUP_EPOCHS, "TEST.EVAL_PERIOD": cfg.TEST.EVAL_PERIOD,
                    "SOLVER.CHECKPOINT_PERIOD": cfg.SOLVER.CHECKPOINT_PERIOD}
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"Config key {key} must be positive, got {value}.")
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"Config key {key} must be 0 or more, got {value}.")
    for key in ("INPUT.SIZE_TRAIN", "INPUT.SIZE_TEST"):
        size = cfg.INPUT.SIZE_TRAIN if key.endswith("TRAIN") else cfg.INPUT.SIZE_TEST
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"Config key {key} must be (height, width) with positive sides, got {tuple(size)}.")
    _check_ranges(cfg)


def _check_ranges(cfg: CN) -> None:
    """Values every consumer would otherwise reject late (in a loader worker, after hours of training)."""
    for key in ("DATASETS.TRAIN", "DATASETS.TEST"):
        if not _get(cfg, key):
            raise ConfigError(f"Config key {key} is empty; name at least one registered dataset (e.g. market1501).")
    probabilities = ("INPUT.FLIP_PROB", "INPUT.RE_PROB", "MODEL.LFM.PROB", "MODEL.DROPOUT.P",
                     "TEST.RERANK_LAMBDA")
    for key in probabilities:
        if not 0.0 <= _get(cfg, key) <= 1.0:
            raise ConfigError(f"Config key {key} must be in [0, 1], got {_get(cfg, key)}.")
    if not 0.0 < cfg.MODEL.DROPBLOCK.KEEP_PROB <= 1.0:
        raise ConfigError(
            f"Config key MODEL.DROPBLOCK.KEEP_PROB must be in (0, 1], got {cfg.MODEL.DROPBLOCK.KEEP_PROB}.")
    for key in ("INPUT.RE_AREA", "MODEL.LFM.AREA"):
        low_high = tuple(_get(cfg, key))
        if len(low_high) != 2 or not 0.0 < low_high[0] <= low_high[1] <= 1.0:
            raise ConfigError(f"Config key {key} must be (low, high) with 0 < low <= high <= 1, got {low_high}.")
    aspect = tuple(cfg.MODEL.LFM.ASPECT)
    if len(aspect) != 2 or not 0.0 < aspect[0] <= aspect[1]:
        raise ConfigError(f"Config key MODEL.LFM.ASPECT must be (low, high) with 0 < low <= high, got {aspect}.")
    if not 0.0 <= cfg.MODEL.LFM.CHANNEL_FRACTION <= 1.0:
        raise ConfigError(f"Config key MODEL.LFM.CHANNEL_FRACTION must be in [0, 1] (0: use MODEL.LFM.CHANNELS), "
                          f"got {cfg.MODEL.LFM.CHANNEL_FRACTION}.")
    at_least_one = ("MODEL.LFM.CHANNELS", "MODEL.DROPBLOCK.BLOCK_SIZE", "TEST.RERANK_K1", "TEST.RERANK_K2",
                    "TEST.ATTACK.STEPS")
    for key in at_least_one:
        if _get(cfg, key) < 1:
            raise ConfigError(f"Config key {key} must be 1 or more, got {_get(cfg, key)}.")
    for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
        if len(_get(cfg, key)) != 3:
            raise ConfigError(f"Config key {key} needs one value per RGB channel (3), got {tuple(_get(cfg, key))}.")
    if min(cfg.MODEL.PIXEL_STD) <= 0:
        raise ConfigError(f"Config key MODEL.PIXEL_STD must be positive, got {tuple(cfg.MODEL.PIXEL_STD)}.")
    if list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ConfigError(f"Config key SOLVER.STEPS must be in increasing order, got {tuple(cfg.SOLVER.STEPS)}.")
    # Only the sign here: a config stored in an older checkpoint must still load; plan_runs checks that the
    # budgets are whole 1/255 levels before any attack runs.
    if any(eps < 0 for eps in cfg.TEST.ATTACK.EPS):
        raise ConfigError(
            f"Config key TEST.ATTACK.EPS must hold budgets >= 0 (in 1/255), got {tuple(cfg.TEST.ATTACK.EPS)}.")
    # Issue 13: the tensor data backend and BoT's erasing.
    for key, allowed in (("INPUT.RE_STYLE", ("bot", "torchvision")),
                         ("DATALOADER.BACKEND", ("auto", "tensor", "workers"))):
        if _get(cfg, key) not in allowed:
            raise ConfigError(f"Config key {key} is {_get(cfg, key)!r}; expected one of "
                              f"{', '.join(map(repr, allowed))}.")
    if not 0.0 <= cfg.DATALOADER.TENSOR_BUDGET_GB < float("inf"):
        raise ConfigError(f"Config key DATALOADER.TENSOR_BUDGET_GB must be 0 (half the device's memory) or a "
                          f"positive number of GiB, got {cfg.DATALOADER.TENSOR_BUDGET_GB}.")


def _get(cfg: CN, key: str) -> Any:
    node = cfg
    for part in key.split("."):
        node = node[part]
    return node


def save_config(cfg: CN, path: str | Path) -> Path:
    """Write the final config as yml (readable by ``--config``) so every output records how it was made."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(cfg.dump())
    return path


def config_from_dict(data: dict, opts: Iterable[str] = ()) -> CN:
    """Rebuild a config from a saved mapping (e.g. inside a checkpoint), then apply ``KEY VALUE`` overrides."""
    cfg = get_cfg_defaults()
    _merge(cfg, data, source="stored with the weights")
    opts = list(opts)
    if opts:
        _merge(cfg, overrides_to_dict(opts), source="on the command line")
    finalize_config(cfg)
    cfg.freeze()
    return cfg


def config_to_dict(cfg: CN) -> dict:
    """A plain, picklable-by-json mapping of the config (tuples become lists)."""
    return yaml.safe_load(cfg.dump())


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"MODEL.LFM.PROB": 0.15, ...}`` from a nested config mapping (e.g. :func:`config_to_dict`'s)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
