"""ImageNet weights from a local file or the local caches only; never a download, never pickled code.

A plain torchvision or timm state dict (``resnet50-0676ba61.pth``, timm's ``model.safetensors``) loads
as it is: prefixes such as ``module.`` are stripped and the classifier is dropped here, not by the user.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from reid.modeling.backbones import Backbone
from reid.utils.checkpoint import describe_load_failure
from reid.utils.errors import CheckpointError, ReIDError

logger = logging.getLogger("reid.modeling")

_STRIP_PREFIXES = ("module.", "model.", "backbone.body.", "backbone.", "body.")


def find_cached_weights(arch: str) -> Path | None:
    """Look for ``arch`` ImageNet weights in the torch hub cache and the Hugging Face (timm) cache."""
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    candidates = sorted(hub.glob(f"{arch}-*.pth")) if hub.is_dir() else []
    hf_home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface")) / "hub"
    if hf_home.is_dir():
        candidates += sorted(hf_home.glob(f"models--timm--{arch}.*/snapshots/*/model.safetensors"))
    return candidates[0] if candidates else None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A tensor mapping from ``.safetensors`` or a ``torch.save`` file, loaded without running code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file {path} does not exist.")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt zip, unsafe pickle, truncated file...
        raise CheckpointError(
            f"Cannot load weights from {path}: {describe_load_failure(exc)} Only tensor files saved with torch.save "
            "or safetensors are accepted."
        ) from exc
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict (a mapping of names to tensors).")
    return state


def load_imagenet_weights(backbone: Backbone, path: str | Path) -> None:
    """Load a torchvision/timm ImageNet state dict into ``backbone.body``, ignoring its classifier."""
    state = read_state_dict(path)
    own = backbone.body.state_dict()
    matched, mismatched = {}, []
    for key, value in state.items():
        for prefix in _STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                break
        if key not in own:
            continue  # fc.* / classifier.* and anything the backbone does not have
        if own[key].shape != value.shape:
            mismatched.append(f"{key} {tuple(value.shape)} vs {tuple(own[key].shape)}")
            continue
        matched[key] = value
    missing = [k for k in own if k not in matched and not k.endswith("num_batches_tracked")]
    if mismatched or len(matched) < 0.9 * len(own):
        raise CheckpointError(
            f"{path} does not fit backbone {backbone.arch}: {len(matched)} of {len(own)} tensors matched"
            + (f"; shape mismatches: {', '.join(mismatched[:5])}" if mismatched else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
            + ". Check MODEL.BACKBONE and MODEL.PRETRAINED_PATH."
        )
    backbone.body.load_state_dict(matched, strict=False)
    logger.info("Loaded ImageNet weights for %s from %s (%d tensors).", backbone.arch, path, len(matched))


def load_pretrained(backbone: Backbone, path: str = "") -> None:
    """Resolve MODEL.PRETRAINED_PATH (or the caches) and load it; explain how to proceed when absent."""
    resolved = Path(path) if path else find_cached_weights(backbone.arch)
    if resolved is None or not resolved.is_file():
        where = f"MODEL.PRETRAINED_PATH {path!r} does not exist" if path else (
            f"no {backbone.arch} weights were found in the torch hub cache ({torch.hub.get_dir()}/checkpoints) "
            "or the Hugging Face cache"
        )
        raise ReIDError(
            f"ImageNet weights are needed (MODEL.PRETRAINED True) but {where}, and this toolkit never downloads. "
            f"Copy the torchvision file (e.g. resnet50-0676ba61.pth) or timm's model.safetensors to this machine and "
            f"pass MODEL.PRETRAINED_PATH /path/to/file, or train from scratch with MODEL.PRETRAINED False."
        )
    load_imagenet_weights(backbone, resolved)
