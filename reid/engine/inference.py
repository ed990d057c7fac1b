"""Rebuilding a trained model for inference from a checkpoint (training or release format)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from yacs.config import CfgNode

from reid.config import config_from_dict, config_to_dict, flatten_config
from reid.modeling import ReIDModel, build_model
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import CheckpointError, ConfigError

logger = logging.getLogger("reid.engine")

# Keys that change the features a model computes without changing its tensors' shapes: weights load
# fine with other values, but the features are then not those the model was trained to give.
FEATURE_KEYS = ("MODEL.LAST_STRIDE", "MODEL.POOLING", "MODEL.NECK_FEAT", "MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD",
                "INPUT.SIZE_TEST")


def load_model_for_inference(weights: str | Path, cfg: CfgNode | None = None,
                             device: str | torch.device = "cpu") -> tuple[ReIDModel, CfgNode]:
    """The model in eval mode on ``device`` and the config it was built from.

    Without ``cfg``, the config stored in the checkpoint rebuilds the model. The classifier is not
    needed to extract features, so a checkpoint trained with any number of identities loads.
    """
    state = load_checkpoint(weights)
    if cfg is None:
        cfg = _config_in(state, weights)
    elif isinstance(state.get("config"), dict):
        _warn_about_feature_keys(weights, state["config"], cfg)
    model = build_model(cfg, num_classes=0, load_imagenet=False)
    weights_only = {k: v for k, v in state["model"].items() if not k.startswith("head.classifier.")}
    try:
        missing, unexpected = model.load_state_dict(weights_only, strict=False)
        problems = [f"{len(names)} {kind} tensors (e.g. {', '.join(names[:3])})"
                    for kind, names in (("missing", missing), ("unexpected", unexpected)) if names]
    except RuntimeError as exc:  # same names, other shapes (e.g. resnet18 weights, resnet50 config)
        problems = [f"shape mismatches ({str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else exc})"]
    if problems:
        raise CheckpointError(
            f"The weights in {weights} do not match the config (MODEL.BACKBONE {cfg.MODEL.BACKBONE!r}, "
            f"MODEL.NECK {cfg.MODEL.NECK!r}): {' and '.join(problems)}. Use the config the model was trained "
            "with (OUTPUT_DIR/config.yaml), or leave --config out to use the one stored in the checkpoint."
        )
    return model.to(device).eval(), cfg


def stored_config(weights: str | Path, opts: Sequence[str] = ()) -> CfgNode:
    """The config stored in the checkpoint or release file ``weights``, with ``KEY VALUE`` overrides.

    A file that stores no config, or one this version cannot read, is a CheckpointError saying to pass
    the training config instead; a bad override is a ConfigError naming the key.
    """
    return _config_in(load_checkpoint(weights), weights, opts)


def _config_in(state: dict, weights: str | Path, opts: Sequence[str] = ()) -> CfgNode:
    """The stored config with the overrides merged before it is checked, so an override can repair a
    value that this version no longer accepts."""
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{weights} stores no config; pass the training config with --config.")
    try:
        return config_from_dict(state["config"], list(opts))
    except ConfigError as exc:
        if opts:
            try:
                config_from_dict(state["config"])
            except ConfigError:
                pass
            else:
                raise  # the stored config is fine: the override is wrong, and the error names it
        raise CheckpointError(f"The config stored in {weights} is not valid for this version: {exc} Override the "
                              "key with KEY VALUE, or pass the training config with --config.") from exc


def _warn_about_feature_keys(weights: str | Path, stored: dict, cfg: CfgNode) -> None:
    """Warn when the given config computes features otherwise than the config stored with the weights."""
    before, now = flatten_config(stored), flatten_config(config_to_dict(cfg))  # both with lists, not tuples
    changes = [f"{key} {before[key]} -> {now[key]}" for key in FEATURE_KEYS
               if key in before and before[key] != now[key]]
    if changes:
        logger.warning(f"The config (--config or KEY VALUE overrides) differs from the one stored in {weights} in "
                       f"keys that change the features: {', '.join(changes)}. The weights load, but the features "
                       "are not those the model was trained to give; to get those, use the stored config: no "
                       "--config, and no override of these keys.")
