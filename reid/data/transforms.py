"""BoT (reid-strong-baseline) image transforms, built with torchvision.transforms.v2 on tensors.

Design decision: transforms output float RGB in [0, 1], NOT normalised. The ImageNet mean/std
normalisation (MODEL.PIXEL_MEAN / MODEL.PIXEL_STD) happens inside the model (as in fast-reid), so an
exported model takes raw pixels and nothing outside it has to repeat the normalisation.

Train: resize to INPUT.SIZE_TRAIN -> horizontal flip (INPUT.FLIP_PROB) -> zero-pad INPUT.PADDING and
random-crop back -> float [0, 1] -> random erasing (INPUT.RE_PROB, area INPUT.RE_AREA).
Test: resize to INPUT.SIZE_TEST -> float [0, 1].
The geometric steps run on uint8 (cheaper); the input is an RGB uint8 HxWx3 array from ``read_image``.

Random erasing has two styles (INPUT.RE_STYLE), described by :class:`EraseSettings` so that the workers
path here and the batched tensor path (:mod:`reid.data.batch_augment`) draw from the same distribution:

- ``bot`` (default): BoT's own code. Up to 100 attempts, each drawing the area uniformly in INPUT.RE_AREA
  and the aspect ratio (height / width) uniformly in [0.3, 1 / 0.3] (so tall boxes are drawn more often
  than wide ones); the first that fits is erased. BoT erases the *normalised* image with MODEL.PIXEL_MEAN;
  since our normalisation ``(x - mean) / std`` is inside the model, the raw value written is
  ``mean + mean * std`` per channel, which the model turns into ``mean``.
- ``torchvision``: fast-reid's choice, torchvision's RandomErasing: up to 10 attempts, the aspect ratio
  log-uniform in [0.3, 3.3] (symmetric between tall and wide boxes), erased pixels set to the raw pixel
  mean (0 after the model's normalisation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torchvision.transforms import v2
from yacs.config import CfgNode

RE_STYLES = ("bot", "torchvision")
ERASE_ASPECT = (0.3, 3.3)  # torchvision style: the aspect-ratio range fast-reid passes to RandomErasing
BOT_ERASE_ASPECT = (0.3, 1 / 0.3)  # BoT: r1 = 0.3 and 1 / r1
BOT_ERASE_ATTEMPTS = 100
TORCHVISION_ERASE_ATTEMPTS = 10  # fixed inside torchvision's RandomErasing


@dataclass(frozen=True)
class EraseSettings:
    """How random erasing draws its rectangle and what it writes, for both data backends."""

    prob: float
    area: tuple[float, float]  # fraction of the image
    aspect: tuple[float, float]  # height / width
    log_uniform_aspect: bool  # torchvision draws log(aspect) uniformly; BoT draws the aspect uniformly
    attempts: int
    fill: tuple[float, ...]  # raw [0, 1] value per channel, written after the float conversion


def erase_settings(cfg: CfgNode) -> EraseSettings:
    """The erasing of INPUT.RE_STYLE with INPUT.RE_PROB / INPUT.RE_AREA and the fill for MODEL.PIXEL_MEAN/STD."""
    mean = [float(m) for m in cfg.MODEL.PIXEL_MEAN]
    if cfg.INPUT.RE_STYLE == "bot":
        # BoT writes `mean` into the normalised image: x = mean + mean * std is what normalises to it.
        fill = tuple(m + m * float(s) for m, s in zip(mean, cfg.MODEL.PIXEL_STD))
        return EraseSettings(float(cfg.INPUT.RE_PROB), tuple(cfg.INPUT.RE_AREA), BOT_ERASE_ASPECT, False,
                             BOT_ERASE_ATTEMPTS, fill)
    return EraseSettings(float(cfg.INPUT.RE_PROB), tuple(cfg.INPUT.RE_AREA), ERASE_ASPECT, True,
                         TORCHVISION_ERASE_ATTEMPTS, tuple(mean))


class BotRandomErasing(v2.RandomErasing):
    """BoT's random erasing: up to ``attempts`` tries, area and aspect ratio drawn uniformly.

    Only the drawing of the rectangle differs from torchvision's RandomErasing (which draws the aspect
    log-uniformly and tries 10 times); applying it (``transform``) is torchvision's. The random numbers
    come from torch's global generator, as for every v2 transform, so loader workers' seeds apply.
    """

    def __init__(self, p: float = 0.5, scale: Sequence[float] = (0.02, 0.4),
                 ratio: Sequence[float] = BOT_ERASE_ASPECT, value: Sequence[float] = (0.0,),
                 attempts: int = BOT_ERASE_ATTEMPTS) -> None:
        super().__init__(p=p, scale=scale, ratio=ratio, value=list(value))
        self.attempts = attempts

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        _, img_h, img_w = v2.query_chw(flat_inputs)
        area = img_h * img_w
        for _ in range(self.attempts):
            # float64 draws, like BoT's Python floats
            target_area = area * torch.empty(1, dtype=torch.float64).uniform_(self.scale[0], self.scale[1]).item()
            aspect = torch.empty(1, dtype=torch.float64).uniform_(self.ratio[0], self.ratio[1]).item()
            h = int(round(math.sqrt(target_area * aspect)))
            w = int(round(math.sqrt(target_area / aspect)))
            if h < img_h and w < img_w:
                i = int(torch.randint(0, img_h - h + 1, size=(1,)).item())
                j = int(torch.randint(0, img_w - w + 1, size=(1,)).item())
                return dict(i=i, j=j, h=h, w=w, v=torch.tensor(self.value)[:, None, None])
        return dict(i=0, j=0, h=img_h, w=img_w, v=None)  # no attempt fitted: the image is left as it is


def build_erasing(settings: EraseSettings) -> v2.RandomErasing:
    """The v2 transform of ``settings`` (applied to a float image in [0, 1])."""
    if settings.log_uniform_aspect:
        if settings.attempts != TORCHVISION_ERASE_ATTEMPTS:
            raise ValueError(f"torchvision's RandomErasing always tries {TORCHVISION_ERASE_ATTEMPTS} times")
        return v2.RandomErasing(p=settings.prob, scale=settings.area, ratio=settings.aspect,
                                value=list(settings.fill))
    return BotRandomErasing(p=settings.prob, scale=settings.area, ratio=settings.aspect, value=settings.fill,
                            attempts=settings.attempts)


def to_tensor_image(img: np.ndarray) -> torch.Tensor:
    """An RGB uint8 HxWx3 array as a uint8 CHW tensor."""
    if img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise ValueError(f"expected a uint8 HxWx3 image, got {img.dtype} of shape {img.shape}")
    return torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()


def resize_steps(size: Sequence[int]) -> list[v2.Transform]:
    """Array -> uint8 CHW tensor at ``size``: the one resize of both backends (the tensor cache uses it too)."""
    return [v2.ToImage(), v2.Resize(tuple(size), antialias=True)]


def build_resize(size: Sequence[int]) -> v2.Compose:
    """RGB uint8 HxWx3 array -> plain uint8 (3, H, W) tensor at ``size``, exactly as the loaders resize."""
    return v2.Compose([*resize_steps(size), v2.ToPureTensor()])


def build_transforms(cfg: CfgNode, is_train: bool) -> v2.Compose:
    """The train (random) or test (deterministic) pipeline: uint8 HxWx3 RGB array -> float CHW in [0, 1]."""
    size = tuple(cfg.INPUT.SIZE_TRAIN if is_train else cfg.INPUT.SIZE_TEST)
    steps: list[v2.Transform] = resize_steps(size)
    if is_train:
        if cfg.INPUT.FLIP_PROB > 0:
            steps.append(v2.RandomHorizontalFlip(cfg.INPUT.FLIP_PROB))
        if cfg.INPUT.PADDING > 0:
            steps.append(v2.RandomCrop(size, padding=cfg.INPUT.PADDING, fill=0))
    steps.append(v2.ToDtype(torch.float32, scale=True))
    if is_train and cfg.INPUT.RE_PROB > 0:
        steps.append(build_erasing(erase_settings(cfg)))
    steps.append(v2.ToPureTensor())
    return v2.Compose(steps)
