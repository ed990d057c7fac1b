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

from reid.config import checks, defaults
from reid.config.configurable import check_registered_components
from reid.config.defaults import get_cfg_defaults
from reid.utils.errors import ConfigError
from reid.utils.fsio import atomic_write_text, read_text_capped

BASE_KEY = "_BASE_"
# The shipped experiment files are package data (the checkout's top-level configs/ links to them), so an
# installed package finds them by name from any folder, as detectron2's model zoo configs.
CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
STUDY_DIR_NAME = "study"  # configs/study/*.yml describe study grids (tools/study.py), not one run
MAX_CONFIG_BYTES = 1 << 20  # a config is a few KiB: a larger file is the wrong file, and is not read in full


def config_dir() -> Path:
    """The folder of the shipped experiment files (``lfm_market.yml``...) and study presets (``study/``)."""
    return CONFIGS_DIR


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
        data = yaml.safe_load(read_text_capped(path, MAX_CONFIG_BYTES, "config file", ConfigError)) or {}
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
        f"Config key {key} ({source}) expects {_a(type(default).__name__)} like {default!r}, got {value!r} "
        f"({type(value).__name__})."
    )


def _a(noun: str) -> str:
    """The noun with its indefinite article ("an int", "a float")."""
    return f"{'an' if noun[0] in 'aeiou' else 'a'} {noun}"


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
                f"Unknown config key {full} ({source}).{hint} Every valid key, with its default and meaning, is "
                "listed by `python -m reid.config`; a key of your own component exists once its module is "
                "imported (--plugin)."
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
    """Check the core rules and every registered component's (which also resolve shorthands such as
    MODEL.LFM.ENABLED), once, so every consumer sees one truth."""
    for key, allowed in defaults.CHOICES.items():
        checks.require_choice(key, _get(cfg, key), allowed)
    for key, example in defaults.NON_EMPTY.items():
        if not _get(cfg, key):
            raise ConfigError(f"Config key {key} is empty; name at least one: {example}.")
    for key in defaults.POSITIVE:
        checks.require_positive(key, _get(cfg, key))
    for key in defaults.AT_LEAST_ONE:
        checks.require_range(key, _get(cfg, key), 1, None)
    for key in defaults.NON_NEGATIVE:
        checks.require_range(key, _get(cfg, key), 0, None)
    for key in defaults.PROBABILITIES:
        checks.require_range(key, _get(cfg, key), 0.0, 1.0)
    for key in defaults.AREA_RANGES:
        checks.require_ordered_pair(key, _get(cfg, key), 0.0, 1.0)
    for key in defaults.IMAGE_SIZES:
        size = tuple(_get(cfg, key))
        if len(size) != 2 or min(size) <= 0:
            raise ConfigError(f"Config key {key} must be (height, width) with positive sides, got {size}.")
    for key in defaults.RGB_TRIPLES:
        checks.require_length(key, _get(cfg, key), 3, "one value per RGB channel")
    if min(cfg.MODEL.PIXEL_STD) <= 0:
        raise ConfigError(f"Config key MODEL.PIXEL_STD must be positive, got {tuple(cfg.MODEL.PIXEL_STD)}.")
    if list(cfg.SOLVER.STEPS) != sorted(cfg.SOLVER.STEPS):
        raise ConfigError(f"Config key SOLVER.STEPS must be in increasing order, got {tuple(cfg.SOLVER.STEPS)}.")
    if cfg.DATALOADER.SAMPLER == "pk" and cfg.SOLVER.IMS_PER_BATCH % cfg.DATALOADER.NUM_INSTANCE:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be a multiple of DATALOADER.NUM_INSTANCE "
            f"({cfg.DATALOADER.NUM_INSTANCE}) for the PK sampler."
        )
    check_registered_components(cfg)


_get = checks.get


class _PlainDumper(yaml.SafeDumper):
    """Safe YAML without anchors: equal lists (SIZE_TRAIN, SIZE_TEST) are written out, not as &id001/*id001."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_config(cfg: CN) -> str:
    """The config as plain YAML (sorted keys, no anchors), readable by ``--config``."""
    return yaml.dump(config_to_dict(cfg), Dumper=_PlainDumper, sort_keys=True, default_flow_style=False)


def save_config(cfg: CN, path: str | Path) -> Path:
    """Write the final config as yml (readable by ``--config``) so every output records how it was made;
    atomically, with one clear message when the disk is full."""
    return atomic_write_text(Path(path), dump_config(cfg))


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
    """A plain, JSON-ready mapping of the config (tuples become lists)."""
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: plain(item) for key, item in value.items()}
        if isinstance(value, (tuple, list)):
            return [plain(item) for item in value]
        return value

    return plain(cfg)


def changes_since_stored(stored: dict, current: dict) -> list[tuple[str, Any, Any]]:
    """``(KEY, value before KEY existed, current value)`` for each key of ``VALUES_BEFORE_KEY_EXISTED`` that the
    stored config (nested, as :func:`config_to_dict` gives) lacks and whose earlier behaviour the current
    config does not keep: continuing such a run, or mixing it with new ones, would change its recipe silently.
    An empty ``stored`` (no config was stored at all) says nothing about the version: no change is reported."""
    if not stored:
        return []
    old, new = flatten_config(stored), flatten_config(current)
    return [(key, before, new[key]) for key, (before, in_use) in defaults.VALUES_BEFORE_KEY_EXISTED.items()
            if key not in old and key in new and new[key] != before and (in_use is None or new.get(in_use))]


def flatten_config(tree: dict, prefix: str = "") -> dict[str, Any]:
    """``{"MODEL.LFM.PROB": 0.15, ...}`` from a nested config mapping (e.g. :func:`config_to_dict`'s)."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat
