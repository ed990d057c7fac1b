"""From a checkpoint to a model: the one place that turns a weights file into ``(model, config)``.

Every tool, the study, export and ``--resume`` come through here:

- :func:`read_stored_config`: the config stored in a training checkpoint or release file, with ``KEY VALUE``
  overrides merged before it is checked (so an override can repair a value this version refuses);
- :func:`resolve_config`: the config to rebuild a model with: a given file, name or CfgNode, else the stored one;
- :func:`load_state_checked`: weights into a model, with one clear message when names or shapes differ;
- :func:`load_model`: all of it, and the model in eval mode on a device, warning when a given config
  computes other features than the stored one.

Files are read with ``torch.load(weights_only=True)`` (:func:`reid.utils.checkpoint.load_checkpoint`):
a checkpoint never runs code.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn
from yacs.config import CfgNode

from reid.config import config_from_dict, config_to_dict, flatten_config, load_config
from reid.modeling.model import ReIDModel, build_model
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import CheckpointError, ConfigError, summarize_exception

logger = logging.getLogger("reid.modeling")

# Keys that change the features a model computes without changing its tensors' shapes: weights load
# fine with other values, but the features are then not those the model was trained to give.
FEATURE_KEYS = ("MODEL.LAST_STRIDE", "MODEL.POOLING", "MODEL.NECK_FEAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
                "INPUT.SIZE_TEST")
CLASSIFIER_PREFIX = "head.classifier."  # not needed for features: any number of identities loads

ConfigSource = str | Path | CfgNode | None


class CheckpointSummary(NamedTuple):
    """What a checkpoint says about the run that wrote it, without building a model."""

    epoch: int  # completed epochs (0 for a release file)
    config: dict | None  # the stored config as a plain mapping (None when absent)
    datasets: dict | None  # fingerprints of the data the run read (None in files of earlier versions)


def summarize_checkpoint(weights: str | Path) -> CheckpointSummary:
    """The completed epochs, the stored config and the dataset record of a training checkpoint or release file."""
    state = load_checkpoint(weights)
    config, datasets = state.get("config"), state.get("datasets")
    return CheckpointSummary(int(state.get("epoch", 0)), config if isinstance(config, dict) else None,
                             datasets if isinstance(datasets, dict) else None)


class LoadedModel(NamedTuple):
    """A trained model in eval mode and the config it was built from."""

    model: ReIDModel
    cfg: CfgNode


def read_stored_config(weights: str | Path, opts: Sequence[str] = (), state: Mapping | None = None) -> CfgNode:
    """The config stored in the checkpoint or release file ``weights``, with ``KEY VALUE`` overrides.

    ``state``: the file's contents when already read. A file that stores no config, or one this version
    cannot read, is a CheckpointError saying to pass the training config instead; a bad override is a
    ConfigError naming the key.
    """
    state = load_checkpoint(weights) if state is None else state
    stored = state.get("config")
    if not isinstance(stored, dict):
        raise CheckpointError(f"{weights} stores no config; pass the training config with --config.")
    try:
        return config_from_dict(stored, list(opts))
    except ConfigError as exc:
        if opts:
            try:
                config_from_dict(stored)
            except ConfigError:
                pass
            else:
                raise  # the stored config is fine: the override is wrong, and the error names it
        raise CheckpointError(f"The config stored in {weights} is not valid for this version: {exc} Override the "
                              "key with KEY VALUE, or pass the training config with --config.") from exc


def resolve_config(weights: str | Path, config: ConfigSource = None, opts: Sequence[str] = (),
                   state: Mapping | None = None) -> CfgNode:
    """The config to rebuild ``weights`` with: ``config`` (a file, a name of a shipped config, or a CfgNode)
    or, when None, the one stored in the file; ``KEY VALUE`` overrides ``opts`` apply to either."""
    opts = list(opts)
    if isinstance(config, CfgNode):
        return config_from_dict(config_to_dict(config), opts) if opts else config
    if config is not None:
        return load_config(config, opts)
    return read_stored_config(weights, opts, state)


EVALUATION_ADVICE = ("Use the config the model was trained with (OUTPUT_DIR/config.yaml), or leave --config out to "
                     "use the one stored in the checkpoint.")


def load_state_checked(model: nn.Module, state_dict: Mapping[str, torch.Tensor], weights: str | Path,
                       cfg: CfgNode, strict: bool = True, advice: str = EVALUATION_ADVICE) -> None:
    """``model.load_state_dict`` with one CheckpointError naming the file, the backbone, what differs and
    ``advice`` (what to do about it, which depends on why the weights are loaded)."""
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
        problems = [f"{len(names)} {kind} tensors (e.g. {', '.join(names[:3])})"
                    for kind, names in (("missing", missing), ("unexpected", unexpected)) if names and strict]
    except RuntimeError as exc:  # same names, other shapes (e.g. resnet18 weights, resnet50 config)
        problems = [f"shape mismatches ({summarize_exception(exc)})"]
    if problems:
        raise CheckpointError(
            f"The weights in {weights} do not match the config (MODEL.BACKBONE {cfg.MODEL.BACKBONE!r}, "
            f"MODEL.NECK {cfg.MODEL.NECK!r}): {' and '.join(problems)}. {advice}"
        )


def load_model(weights: str | Path, config: ConfigSource = None, opts: Sequence[str] = (),
               device: str | torch.device = "cpu") -> LoadedModel:
    """The model of a training checkpoint or release file, in eval mode on ``device``, and its config.

    ``config`` and ``opts`` as in :func:`resolve_config`. The classifier is not needed to extract
    features, so a checkpoint trained with any number of identities loads.
    """
    state = load_checkpoint(weights)
    cfg = resolve_config(weights, config, opts, state)
    if (config is not None or opts) and isinstance(state.get("config"), dict):
        warn_about_feature_keys(weights, state["config"], cfg)
    model = build_model(cfg, num_classes=0, load_imagenet=False)
    features_only = {k: v for k, v in state["model"].items() if not k.startswith(CLASSIFIER_PREFIX)}
    load_state_checked(model, features_only, weights, cfg)
    return LoadedModel(model.to(device).eval(), cfg)


def warn_about_feature_keys(weights: str | Path, stored: dict, cfg: CfgNode) -> None:
    """Warn when ``cfg`` computes features otherwise than the config stored with the weights."""
    before, now = flatten_config(stored), flatten_config(config_to_dict(cfg))  # both with lists, not tuples
    changes = [f"{key} {before[key]} -> {now[key]}" for key in FEATURE_KEYS
               if key in before and before[key] != now[key]]
    if changes:
        logger.warning(f"The config (--config or KEY VALUE overrides) differs from the one stored in {weights} in "
                       f"keys that change the features: {', '.join(changes)}. The weights load, but the features "
                       "are not those the model was trained to give; to get those, use the stored config: no "
                       "--config, and no override of these keys.")
