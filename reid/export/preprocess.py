"""Turning whatever a user has (paths, OpenCV arrays, tensors) into the evaluation's model input.

Every input becomes a float32 RGB (3, H, W) tensor in [0, 1] at INPUT.SIZE_TEST through the same
torchvision pipeline as evaluation (:func:`reid.data.build_transforms` with ``is_train=False``).

- ``str`` / ``os.PathLike``: an image file, read with :func:`reid.data.read_image` (RGB).
- ``numpy.ndarray``, uint8: **BGR** (H, W, 3) as ``cv2.imread`` returns it, BGRA (H, W, 4), grayscale
  (H, W) or (H, W, 1); a 4-D (N, H, W, C) array is N such images. Any size.
- ``torch.Tensor``: **RGB** (3, H, W) or (N, 3, H, W), float in [0, 1] or uint8 in [0, 255]
  (torchvision's convention). Any size; resized like the others.
"""

from __future__ import annotations

import os
from typing import Any

import cv2
import numpy as np
import torch
from yacs.config import CfgNode

from reid.data import build_transforms, read_image
from reid.utils.errors import ReIDError

# cv2 colour conversions to RGB by channel count of an OpenCV-style array.
_TO_RGB = {1: cv2.COLOR_GRAY2RGB, 3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}


def split_inputs(inputs: Any) -> list[Any]:
    """One list entry per image: a path, an (H, W[, C]) array or a (3, H, W) tensor."""
    if isinstance(inputs, (str, os.PathLike)):
        return [inputs]
    if isinstance(inputs, np.ndarray):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    if isinstance(inputs, torch.Tensor):
        return list(inputs) if inputs.ndim == 4 else [inputs]
    if isinstance(inputs, (list, tuple)):
        items = []
        for item in inputs:
            if isinstance(item, (list, tuple)):
                raise ReIDError("Nested lists of images are not supported: pass a flat list of paths, arrays or "
                                "tensors.")
            items += split_inputs(item)
        return items
    raise ReIDError(
        f"Cannot extract features from a {type(inputs).__name__}: pass image paths, OpenCV/numpy images "
        "(BGR uint8) or tensors (RGB, float in [0, 1]), alone or in a list."
    )


class Preprocessor:
    """``preprocessor(item) -> (3, H, W)`` float32 RGB tensor in [0, 1] at INPUT.SIZE_TEST.

    The two steps are public so that callers can run :meth:`decode` (OpenCV only, which releases the GIL)
    in worker threads and :meth:`to_model_input` (torch) in the calling thread: torch operations started
    from many threads each bring their own OpenMP thread team and oversubscribe the cores.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.transform = build_transforms(cfg, is_train=False)
        self.max_pixels = cfg.INPUT.MAX_IMAGE_PIXELS  # so `KEY VALUE` on extract/search sets the cap too

    def __call__(self, item: Any) -> torch.Tensor:
        return self.to_model_input(self.decode(item))

    def decode(self, item: Any) -> np.ndarray | torch.Tensor:
        """A path or an OpenCV-style array as an RGB uint8 (H, W, 3) array; a tensor unchanged."""
        if isinstance(item, (str, os.PathLike)):
            if os.path.isdir(item):
                raise ReIDError(f"{os.fspath(item)} is a folder; pass its image files "
                                "(e.g. reid.export.find_images(folder)).")
            return read_image(item, self.max_pixels)
        if isinstance(item, np.ndarray):
            return _array_to_rgb(item)
        if isinstance(item, torch.Tensor):
            return item
        raise ReIDError(f"Cannot extract features from a {type(item).__name__} inside the list of inputs.")

    def to_model_input(self, image: np.ndarray | torch.Tensor) -> torch.Tensor:
        """A decoded image resized to INPUT.SIZE_TEST as float32 in [0, 1]."""
        return self.transform(_check_tensor(image) if isinstance(image, torch.Tensor) else image)


def _array_to_rgb(image: np.ndarray) -> np.ndarray:
    channels = 1 if image.ndim == 2 else image.shape[-1] if image.ndim == 3 else 0
    if image.dtype != np.uint8 or channels not in _TO_RGB or min(image.shape[:2], default=0) == 0:
        raise ReIDError(
            f"A numpy image must be uint8 (H, W, 3) BGR as cv2.imread returns it, (H, W, 4) BGRA or (H, W) "
            f"grayscale; got {image.dtype} of shape {image.shape}."
        )
    return cv2.cvtColor(np.ascontiguousarray(image), _TO_RGB[channels])


def _check_tensor(image: torch.Tensor) -> torch.Tensor:
    if image.ndim != 3 or image.shape[0] != 3 or min(image.shape[1:]) == 0:
        raise ReIDError(f"A tensor image must be RGB (3, H, W) or (N, 3, H, W); got shape {tuple(image.shape)}.")
    if image.is_floating_point():
        low, high = image.aminmax()
        if low < -1e-3 or high > 1 + 1e-3:
            raise ReIDError(
                f"A float tensor image must hold values in [0, 1] (normalisation happens inside the model); got "
                f"values from {low.item():.3g} to {high.item():.3g}. Divide 0-255 images by 255, and do not "
                "subtract the mean or divide by the std yourself."
            )
    elif image.dtype != torch.uint8:
        raise ReIDError(f"A tensor image must be float in [0, 1] or uint8 in [0, 255], not {image.dtype}.")
    return image
