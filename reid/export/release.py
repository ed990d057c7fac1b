"""The release format: one torch file with the weights and the config that rebuilds the model.

Choice: a ``torch.save`` file read with ``torch.load(weights_only=True)`` rather than safetensors plus a
JSON sidecar. It is one file to copy around, ``weights_only`` loading only reconstructs tensors and plain
containers (a crafted file cannot run code), and every loader of the toolkit
(:func:`~reid.modeling.checkpoint.load_model`, so FeatureExtractor and tools/test.py) already
reads it because it has the same ``model`` + ``config`` keys as a training checkpoint. Contents:

- ``format``: ``"lfm-reid/release"``, ``version``: 1
- ``model``: the state dict without the classifier (and no optimizer, scheduler or RNG state)
- ``config``: the full config as a plain dict (MODEL.* rebuilds the network, INPUT.SIZE_TEST and TEST.*
  define the feature)
- ``feat_dim``: D, ``input``: see :func:`input_spec`
- ``output``: ``{"feat_norm": bool, "flip": bool}``

``format`` and ``version`` are checked on loading (:func:`reid.utils.checkpoint.check_format`): a file of another
program, or a release of a newer version than this code reads, is refused with a message saying so,
instead of failing later on a missing key. ``feat_dim``, ``input`` and ``output`` describe the file for
deployment tools without rebuilding the model; the loader rebuilds everything from ``config``, the single
source of truth (a ``--config`` or ``KEY VALUE`` override on loading may change TEST.* on purpose).

With ``half=True`` floating-point tensors are stored as float16 (half the size); they are cast back to
float32 on loading, so inference still runs in float32.
"""

from __future__ import annotations

from pathlib import Path

from yacs.config import CfgNode

from reid.config import config_to_dict
from reid.modeling import ReIDModel
from reid.utils.checkpoint import RELEASE_FORMAT, RELEASE_VERSION, atomic_save

__all__ = ["RELEASE_FORMAT", "RELEASE_VERSION", "input_spec", "release_dict", "save_release"]


def input_spec(cfg: CfgNode, half: bool = False) -> dict:
    """What an exported model expects, stored in release files and printed by tools/export.py."""
    height, width = cfg.INPUT.SIZE_TEST
    return {"size": [int(height), int(width)], "range": [0.0, 1.0], "channels": "RGB", "layout": "NCHW",
            "dtype": "float16" if half else "float32"}


def release_dict(model: ReIDModel, cfg: CfgNode, half: bool = False) -> dict:
    """The release file's contents for ``model`` built from ``cfg``."""
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()
             if not key.startswith("head.classifier.")}
    if half:
        state = {key: value.half() if value.is_floating_point() else value for key, value in state.items()}
    return {
        "format": RELEASE_FORMAT,
        "version": RELEASE_VERSION,
        "model": state,
        "config": config_to_dict(cfg),
        "feat_dim": int(model.feat_dim),
        "input": input_spec(cfg),  # inputs stay float32: only the storage is halved
        "output": {"feat_norm": bool(cfg.TEST.FEAT_NORM), "flip": bool(cfg.TEST.FLIP)},
    }


def save_release(model: ReIDModel, cfg: CfgNode, path: str | Path, half: bool = False) -> Path:
    """Write ``model`` as a release file at ``path`` (atomically)."""
    return atomic_save(release_dict(model, cfg, half), path)
