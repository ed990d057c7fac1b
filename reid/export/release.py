"""The release format: one torch file with the weights and the config that rebuilds the model.

Choice: a ``torch.save`` file read with ``torch.load(weights_only=True)`` rather than safetensors plus a
JSON sidecar. It is one file to copy around, ``weights_only`` loading only reconstructs tensors and plain
containers (a crafted file cannot run code), and every loader of the toolkit
(:func:`~reid.engine.inference.load_model_for_inference`, so FeatureExtractor and tools/test.py) already
reads it because it has the same ``model`` + ``config`` keys as a training checkpoint. Contents:

- ``format``: ``"lfm-reid/release"``, ``version``: 1
- ``model``: the state dict without the classifier (and no optimizer, scheduler or RNG state)
- ``config``: the full config as a plain dict (MODEL.* rebuilds the network, INPUT.SIZE_TEST and TEST.*
  define the feature)
- ``feat_dim``: D, ``input``: see :func:`~reid.export.exportable.input_spec`
- ``output``: ``{"feat_norm": bool, "flip": bool}``

With ``half=True`` floating-point tensors are stored as float16 (half the size); they are cast back to
float32 on loading, so inference still runs in float32.
"""

from __future__ import annotations

from pathlib import Path

from yacs.config import CfgNode

from reid.config import config_to_dict
from reid.export.exportable import input_spec
from reid.modeling import ReIDModel
from reid.utils.checkpoint import atomic_save

RELEASE_FORMAT = "lfm-reid/release"
RELEASE_VERSION = 1


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
