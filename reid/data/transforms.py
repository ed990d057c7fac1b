"""BoT (reid-strong-baseline) image transforms, built with torchvision.transforms.v2 on tensors.

Design decision: transforms output float RGB in [0, 1], NOT normalised. The ImageNet mean/std
normalisation (MODEL.PIXEL_MEAN / MODEL.PIXEL_STD) happens inside the model (as in fast-reid), so an
exported model takes raw pixels and nothing outside it has to repeat the normalisation. Random erasing
therefore fills erased pixels with MODEL.PIXEL_MEAN, which the model's normalisation turns into 0: the same
as BoT's erasing of a normalised image with 0.

Train: resize to INPUT.SIZE_TRAIN -> horizontal flip (INPUT.FLIP_PROB) -> zero-pad INPUT.PADDING and
random-crop back -> float [0, 1] -> random erasing (INPUT.RE_PROB, area INPUT.RE_AREA, aspect 0.3-3.3).
Random erasing is torchvision's, which draws the aspect ratio log-uniformly (symmetric between tall and
wide boxes); BoT's own code draws it uniformly in [0.3, 3.3], which favours wide boxes. LFM keeps the
paper's uniform draw, since that is the method under study.
Test: resize to INPUT.SIZE_TEST -> float [0, 1].
The geometric steps run on uint8 (cheaper); the input is an RGB uint8 HxWx3 array from ``read_image``.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import v2
from yacs.config import CfgNode

ERASE_ASPECT = (0.3, 3.3)  # BoT's aspect-ratio range of an erased rectangle (r1 = 0.3 and 1 / r1)


def to_tensor_image(img: np.ndarray) -> torch.Tensor:
    """An RGB uint8 HxWx3 array as a uint8 CHW tensor."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} of shape {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def build_transforms(cfg: CfgNode, is_train: bool) -> v2.Compose:
    """The train (random) or test (deterministic) pipeline: uint8 HxWx3 RGB array -> float CHW in [0, 1]."""
    size = tuple(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST)
    steps: list[v2.Transform] = [v2.ToImage(), v2.Resize(size, antialias=True)]
    if is_train:
        if cfg.INPUT.FLIP_PROB > 0:
            steps.append(v2.RandomHorizontalFlip(cfg.INPUT.FLIP_PROB))
        if cfg.INPUT.PADDING > 0:
            steps.append(v2.RandomCrop(size, padding=cfg.INPUT.PADDING, fill=0))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if is_train and cfg.INPUT.RE_PROB > 0:
        steps.append(
            v2.RandomErasing(
                p=cfg.INPUT.RE_PROB,
                scale=tuple(cfg.INPUT.RE_AREA),
                ratio=ERASE_ASPECT,
                value=list(cfg.MODEL.PIXEL_MEAN),
            )
        )
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
