"""BoT's training augmentation for a whole batch at once, on whatever device holds the images.

The workers path augments one image at a time (:func:`reid.data.transforms.build_transforms`); this module
draws the same per-sample parameters for a batch (horizontal flip, zero-pad + random crop, random erasing
of INPUT.RE_STYLE) and applies them in a few vectorised operations, with no Python loop over images:

- :func:`draw_params` draws every random number on the CPU from one ``torch.Generator``: a batch's
  augmentation depends on that generator's state only, not on the device, so CPU and CUDA runs (and a
  resumed run) draw the same augmentations.
- :func:`apply_params` gathers the batch from a zero-padded uint8 tensor of the whole training set
  (one indexing of all crop windows: gather and crop are one copy), flips, converts to float in [0, 1]
  and erases, all on the images' device.

The crop is taken before the flip (the workers path flips first): flipping a crop of offset ``dx`` equals
cropping the flipped image at ``2 * PADDING - dx``, and both offsets are uniform over 0..2*PADDING, so the
two orders have the same distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch
from torchvision.transforms.v2 import functional as TF
from yacs.config import CfgNode

from reid.data.transforms import EraseSettings, erase_settings


@dataclass
class AugmentParams:
    """Per-sample parameters of one batch: int64 (B,) tensors (on the CPU when drawn)."""

    flip: torch.Tensor  # 1: mirror horizontally
    crop_top: torch.Tensor  # crop offsets into the zero-padded image, uniform over 0..2*PADDING
    crop_left: torch.Tensor
    erase_top: torch.Tensor  # erased rectangle; height 0 = no erasing
    erase_left: torch.Tensor
    erase_height: torch.Tensor
    erase_width: torch.Tensor

    def pack(self, index: torch.Tensor) -> torch.Tensor:
        """(B, 8) int64: ``index`` then every field, so that one host-to-device copy carries a batch."""
        return torch.stack([index, *(getattr(self, f.name) for f in fields(self))], dim=1)

    @classmethod
    def unpack(cls, packed: torch.Tensor) -> tuple[torch.Tensor, "AugmentParams"]:
        columns = packed.unbind(1)
        return columns[0], cls(*columns[1:])


@dataclass(frozen=True)
class AugmentSettings:
    """What the training transform of a config does; see :func:`augment_settings`."""

    size: tuple[int, int]  # (height, width) after the crop
    padding: int
    flip_prob: float
    erase: EraseSettings


ATTEMPTS_PER_DRAW = 10  # erasing tries drawn at once; the rest only while some sample has found none


def draw_params(generator: torch.Generator, batch_size: int, settings: AugmentSettings) -> AugmentParams:
    """Every random choice of a batch, from ``generator`` (a CPU generator), in a fixed order.

    Erasing as in BoT / torchvision: with probability ``prob``, up to ``attempts`` tries of (area, aspect);
    the first try whose rectangle fits strictly inside the image is erased at a uniform position. Tries are
    drawn for the whole batch, 10 at a time, and each sample takes its first fitting one: the sequential
    loop's distribution, without a Python loop over samples.
    """
    b, (height, width), pad, erase = batch_size, settings.size, settings.padding, settings.erase
    flip = (torch.rand(b, generator=generator, dtype=torch.float64) < settings.flip_prob).long()
    crop_top = torch.randint(0, 2 * pad + 1, (b,), generator=generator)
    crop_left = torch.randint(0, 2 * pad + 1, (b,), generator=generator)

    erase_draw = torch.rand(b, generator=generator, dtype=torch.float64) < erase.prob
    h = torch.zeros(b, dtype=torch.long)
    w = torch.zeros(b, dtype=torch.long)
    found = torch.zeros(b, dtype=torch.bool)
    tries_left = erase.attempts
    while tries_left > 0 and not bool((found | ~erase_draw).all()):  # samples not erased need no try
        tries = min(ATTEMPTS_PER_DRAW, tries_left)
        tries_left -= tries
        try_h, try_w = _erase_tries(generator, b, tries, settings)
        fits = (try_h < height) & (try_w < width)
        first = fits.long().argmax(dim=1, keepdim=True)  # the first fitting try (0 when none fits)
        new = fits.any(dim=1) & ~found
        h = torch.where(new, try_h.gather(1, first).squeeze(1), h)
        w = torch.where(new, try_w.gather(1, first).squeeze(1), w)
        found |= new
    erased = erase_draw & found
    position = torch.rand(2, b, generator=generator, dtype=torch.float64)
    # floor(u * n) is uniform over 0..n-1; the clamp guards the u -> 1 rounding edge
    erase_top = torch.minimum((position[0] * (height - h + 1)).long(), height - h)
    erase_left = torch.minimum((position[1] * (width - w + 1)).long(), width - w)
    zero = torch.zeros_like(h)
    return AugmentParams(flip, crop_top, crop_left, torch.where(erased, erase_top, zero),
                         torch.where(erased, erase_left, zero), torch.where(erased, h, zero),
                         torch.where(erased, w, zero))


def _erase_tries(generator: torch.Generator, batch: int, tries: int,
                 settings: AugmentSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """(height, width) int64 (batch, tries) of erasing tries: area and aspect drawn as the style says."""
    erase, (height, width) = settings.erase, settings.size
    uniform = torch.rand(2, batch, tries, generator=generator, dtype=torch.float64)
    area = (erase.area[0] + (erase.area[1] - erase.area[0]) * uniform[0]) * (height * width)
    low, high = erase.aspect
    if erase.log_uniform_aspect:
        low, high = math.log(low), math.log(high)
    aspect = low + (high - low) * uniform[1]
    if erase.log_uniform_aspect:
        aspect = aspect.exp()
    # torch.round rounds halves to even, like Python's round() in BoT's and torchvision's code.
    return torch.sqrt(area * aspect).round().long(), torch.sqrt(area / aspect).round().long()


def pad_images(images: torch.Tensor, padding: int) -> torch.Tensor:
    """The zero-padded contiguous copy of a uint8 (N, 3, H, W) set that :func:`apply_params` crops from."""
    if padding > 0:
        images = torch.nn.functional.pad(images, (padding, padding, padding, padding))
    return images.contiguous()


def crop_rows(padded: torch.Tensor, index: torch.Tensor, top: torch.Tensor, left: torch.Tensor,
              size: tuple[int, int]) -> torch.Tensor:
    """``padded[index[b], :, top[b]:top[b] + H, left[b]:left[b] + W]`` for every b, as one (B, 3, H, W) copy.

    Every output row is a W-long run of the padded set's bytes. Viewed as the windows of W bytes that
    start at every byte offset, the set yields all of them with one ``index_select`` of row starts:
    a copy of whole rows, about 10x faster on CPU than advanced indexing of four dimensions.
    """
    batch, (height, width) = index.shape[0], size
    channels, padded_h, padded_w = padded.shape[1:]
    flat = padded.reshape(-1)
    windows = flat.as_strided((flat.numel() - width + 1, width), (1, 1))
    device = padded.device
    plane = (index.view(-1, 1, 1) * channels + torch.arange(channels, device=device).view(1, -1, 1)) * padded_h
    rows = plane + top.view(-1, 1, 1) + torch.arange(height, device=device).view(1, 1, -1)
    starts = rows * padded_w + left.view(-1, 1, 1)
    return windows.index_select(0, starts.view(-1)).view(batch, channels, height, width)


def erase_weight(params: AugmentParams, size: tuple[int, int]) -> torch.Tensor:
    """Float (B, 1, H, W): 1 inside each sample's erased rectangle, 0 elsewhere (all 0 when its height is 0)."""
    height, width = size
    device = params.erase_top.device
    top, left = params.erase_top.view(-1, 1), params.erase_left.view(-1, 1)
    rows = torch.arange(height, device=device)
    cols = torch.arange(width, device=device)
    in_rows = (rows >= top) & (rows < top + params.erase_height.view(-1, 1))  # (B, H)
    in_cols = (cols >= left) & (cols < left + params.erase_width.view(-1, 1))  # (B, W)
    # An outer product of floats (vectorised) rather than of bools (an element loop on CPU).
    return (in_rows.float()[:, :, None] * in_cols.float()[:, None, :]).unsqueeze(1)


def apply_params(padded: torch.Tensor, index: torch.Tensor, params: AugmentParams, settings: AugmentSettings,
                 fill: torch.Tensor, channels_last: bool = False) -> torch.Tensor:
    """The augmented float32 batch in [0, 1] of ``padded[index]`` (all tensors on ``padded``'s device).

    ``padded``: uint8 (N, 3, H + 2P, W + 2P) from :func:`pad_images`; ``fill``: float32 (3,) erasing value.
    ``channels_last`` returns the batch in that memory format (converted while still uint8: 4x cheaper).
    Fixed shapes and gathers only (no data-dependent sizes, no scatter), so nothing waits for the device
    and the result is deterministic on every device.
    """
    crops = crop_rows(padded, index, params.crop_top, params.crop_left, settings.size)
    # Flip: pick each sample from the batch or from its mirror (torch.where is several times slower on CPU).
    batch = crops.shape[0]
    both = torch.cat([crops, crops.flip(3)])
    crops = both.index_select(0, torch.arange(batch, device=crops.device) + batch * params.flip)
    if channels_last:
        crops = crops.contiguous(memory_format=torch.channels_last)
    images = TF.to_dtype(crops, torch.float32, scale=True)  # the workers path's conversion
    # lerp with weights 0/1 is exact (x + 0 * (fill - x), fill - (fill - x) * 0) and vectorised, unlike where.
    return images.lerp_(fill.view(1, -1, 1, 1).to(images.dtype), erase_weight(params, settings.size))


def augment_settings(cfg: CfgNode) -> AugmentSettings:
    """The training augmentation of ``cfg`` (INPUT.*), as :func:`reid.data.transforms.build_transforms` does it."""
    erase = erase_settings(cfg)
    return AugmentSettings((int(cfg.INPUT.SIZE_TRAIN[0]), int(cfg.INPUT.SIZE_TRAIN[1])), int(cfg.INPUT.PADDING),
                           float(cfg.INPUT.FLIP_PROB), erase)
