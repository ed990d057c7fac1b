"""Local Feature Masking (LFM), a train-only regulariser for CNN feature maps.

Paper: Gong et al., "Beyond Dropout: Robust CNNs Based on Local Feature Masking", IJCNN 2024.
With probability ``prob`` a sample is masked: ``channels`` of its feature channels are drawn at random
(with replacement) and in each drawn channel one rectangle, sampled like Random Erasing, is filled with
a constant. The authors place it on the output of ResNet-50's first convolution (before ``bn1``).

Differences from the authors' reference code (finger-monkey/beyond_dropout, ``model.py``), which are
deliberate fixes: every sample of the batch can be masked (not only the first 8), the decision is drawn
per sample (not once per batch), the module is the identity in eval mode, masks are true rectangles
(the reference's chained indexing ``x[i][c][a:b][d:e]`` slices rows twice and masks full-width bands),
and the whole batch is masked with a fixed number of tensor operations (no Python loop).

Rectangle sampling (per (sample, drawn channel)): area ``U(area) * H * W``, aspect ratio
``r = U(aspect)`` (uniform, as in Random Erasing and the reference code), ``h = round(sqrt(area * r))``,
``w = round(sqrt(area / r))``, both at least 1. Random Erasing retries until ``h < H and w < W``; here
``MAX_ATTEMPTS`` candidates are drawn at once and the first that fits is used, so accepted rectangles
follow the Random Erasing distribution conditioned on fitting. If none fits (probability
``p_miss ** MAX_ATTEMPTS``, about 3e-13 for a 128x64 map with the default settings, where
``p_miss`` is about 0.056) the first candidate is clamped to ``H - 1`` by ``W - 1`` (at least 1).
The top-left corner is uniform over the positions where the rectangle fits.

Fill and overlaps: the fill value belongs to the (sample, channel) pair, so a channel drawn twice for
one sample is masked on the union of its two rectangles with one value. With ``fill="random"`` each
rectangle of a channel drawn once still gets its own U[0, 1) value, as in the reference code (where a
later rectangle overwrites an earlier one instead). This order-free rule needs no "last write wins"
scatter, which CUDA cannot do deterministically.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn
from yacs.config import CfgNode

from reid.config import ConfigNode, Option
from reid.modeling.regularizers import REGULARIZER_REGISTRY
from reid.utils.errors import ConfigError, ReIDError

FILL_MODES = ("random", "zero", "mean")

LFM_CONFIG = ConfigNode(
    "MODEL.LFM",
    ENABLED=Option(False, "shorthand for MODEL.REGULARIZER.NAME lfm"),
    PROB=Option(0.15, "probability that a sample of the batch is masked", range=(0.0, 1.0)),
    CHANNELS=Option(32, "channels drawn (with replacement) per masked sample", range=(1, None)),
    CHANNEL_FRACTION=Option(0.0, "if > 0, draw this fraction of the stage's channels instead of CHANNELS "
                                 "(0: use MODEL.LFM.CHANNELS)", range=(0.0, 1.0)),
    AREA=Option((0.02, 0.4), "range of a rectangle's area, as a fraction of the feature map", range=(0.0, 1.0),
                ordered_pair=True),
    ASPECT=Option((0.3, 3.33), "range of a rectangle's aspect ratio (height / width)", range=(0.0, None),
                  ordered_pair=True),
    FILL=Option("random", 'value in a rectangle: "random" (uniform [0, 1)), "zero" or "mean" (channel mean)',
                choices=FILL_MODES),
    SHARED_CHANNELS=Option(False, "draw one channel set for the whole batch instead of per sample"),
)


def _resolve_enabled(cfg: CfgNode) -> None:
    """MODEL.LFM.ENABLED True is a shorthand for MODEL.REGULARIZER.NAME lfm."""
    reg = cfg.MODEL.REGULARIZER
    if cfg.MODEL.LFM.ENABLED:
        if reg.NAME not in ("none", "lfm"):
            raise ConfigError(
                f"MODEL.LFM.ENABLED is True but MODEL.REGULARIZER.NAME is {reg.NAME!r}: one stage holds one "
                "regulariser. Set MODEL.LFM.ENABLED False or MODEL.REGULARIZER.NAME lfm."
            )
        reg.NAME = "lfm"


class Rectangles(NamedTuple):
    """One call's random draws; all tensors live on the feature map's device."""

    masked: Tensor  # (N,) bool: whether the sample is masked at all
    channel: Tensor  # (N, k) int64: drawn channel indices
    top: Tensor  # (N, k) int64
    left: Tensor  # (N, k) int64
    height: Tensor  # (N, k) int64, 1 <= height <= H
    width: Tensor  # (N, k) int64, 1 <= width <= W
    fill_uniform: Tensor  # (N, C) float32 in [0, 1): the fill value of each channel when fill="random"


@REGULARIZER_REGISTRY.register("lfm", config=LFM_CONFIG, resolve=_resolve_enabled)
class LocalFeatureMasking(nn.Module):
    """Masks random rectangles in random channels of a (N, C, H, W) feature map during training.

    Args:
        prob: probability that a sample is masked (drawn independently per sample and call).
        channels: number of channel draws per masked sample (``int``), or a fraction of ``C`` (``float``
            in (0, 1], rounded, at least 1). Draws are with replacement.
        area: range of the rectangle's area as a fraction of ``H * W``.
        aspect: range of the aspect ratio height / width (sampled uniformly).
        fill: ``"random"`` (one U[0, 1) value per masked (sample, channel), as the paper), ``"zero"``,
            or ``"mean"`` (the spatial mean of that sample's channel, treated as a constant: no gradient).
            Fill values are cast to the input's dtype (in bfloat16 a value close to 1 rounds to 1.0).
        shared_channels: draw one set of channels for the whole batch instead of one per sample.
        generator: a ``torch.Generator`` for reproducible masks; ``None`` uses the global RNG of the
            input's device (so ``torch.manual_seed`` makes runs reproducible). It can be set later with
            ``lfm.generator = g``. Draws happen on the generator's device; a CPU generator with a CUDA
            input draws its N x (1 + C + 23 k) numbers on the CPU and sends them with one
            non-blocking host-to-device copy (no device synchronisation).

    In eval mode (and when ``prob == 0``) ``forward`` returns its input object unchanged, so traced or
    exported models contain no trace of the module.
    """

    MAX_ATTEMPTS = 10  # rectangle candidates per draw; see the module docstring

    def __init__(
        self,
        prob: float = 0.15,
        channels: float = 32,
        area: tuple[float, float] = (0.02, 0.4),
        aspect: tuple[float, float] = (0.3, 1 / 0.3),
        fill: str = "random",
        shared_channels: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        _check_settings(prob, channels, area, aspect, fill)
        self.prob = float(prob)
        self.channels = channels
        self.area = (float(area[0]), float(area[1]))
        self.aspect = (float(aspect[0]), float(aspect[1]))
        self.fill = fill
        self.shared_channels = bool(shared_channels)
        self.generator = generator

    @classmethod
    def from_config(cls, cfg: CfgNode) -> dict:
        lfm = cfg.MODEL.LFM
        return {"prob": lfm.PROB, "channels": lfm.CHANNEL_FRACTION if lfm.CHANNEL_FRACTION > 0 else lfm.CHANNELS,
                "area": tuple(lfm.AREA), "aspect": tuple(lfm.ASPECT), "fill": lfm.FILL,
                "shared_channels": lfm.SHARED_CHANNELS}

    def num_draws(self, num_channels: int) -> int:
        """How many channels are drawn per masked sample for a map with ``num_channels`` channels."""
        if isinstance(self.channels, float):
            return max(1, round(self.channels * num_channels))
        return self.channels

    def sample_rectangles(
        self, batch: int, num_channels: int, height: int, width: int, device: torch.device | str
    ) -> Rectangles:
        """Draws one call's channels and rectangles with a single call to the random generator."""
        device = torch.device(device)
        k, attempts = self.num_draws(num_channels), self.MAX_ATTEMPTS
        draw_device = self.generator.device if self.generator is not None else device
        # Columns: [sample decision | C fill values | per draw: channel, attempts x area,
        # attempts x aspect, top, left]
        per_draw_size = 2 * attempts + 3
        uniform = torch.rand(
            batch, 1 + num_channels + k * per_draw_size, generator=self.generator, device=draw_device
        ).to(device, non_blocking=True)
        masked = uniform[:, 0] < self.prob
        fill_u = uniform[:, 1 : 1 + num_channels]
        per_draw = uniform[:, 1 + num_channels :].view(batch, k, per_draw_size)
        channel_u, area_u, aspect_u, top_u, left_u = per_draw.split([1, attempts, attempts, 1, 1], dim=-1)
        if self.shared_channels:
            channel_u = channel_u[:1].expand(batch, k, 1)
        channel = (channel_u.squeeze(-1) * num_channels).long().clamp_(max=num_channels - 1)

        area_px = (self.area[0] + (self.area[1] - self.area[0]) * area_u) * (height * width)
        ratio = self.aspect[0] + (self.aspect[1] - self.aspect[0]) * aspect_u
        rect_h = torch.sqrt(area_px * ratio).round_().clamp_(min=1)
        rect_w = torch.sqrt(area_px / ratio).round_().clamp_(min=1)
        fits = (rect_h < height) & (rect_w < width)
        # argmax returns the first maximum: the first candidate that fits, or candidate 0 if none does.
        chosen = fits.to(torch.uint8).argmax(dim=-1, keepdim=True)
        rect_h = rect_h.gather(-1, chosen).squeeze(-1).clamp_(max=max(height - 1, 1))
        rect_w = rect_w.gather(-1, chosen).squeeze(-1).clamp_(max=max(width - 1, 1))

        top = (top_u.squeeze(-1) * (height - rect_h + 1)).long()
        left = (left_u.squeeze(-1) * (width - rect_w + 1)).long()
        rect_h, rect_w = rect_h.long(), rect_w.long()
        return Rectangles(
            masked=masked,
            channel=channel,
            top=torch.minimum(top, height - rect_h),
            left=torch.minimum(left, width - rect_w),
            height=rect_h,
            width=rect_w,
            fill_uniform=fill_u,
        )

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.prob == 0:
            return x
        if x.dim() != 4:
            raise ReIDError(
                f"LocalFeatureMasking expects (N, C, H, W) feature maps but got shape {tuple(x.shape)}; "
                "attach it to a convolutional stage (e.g. conv1, stem, layer1), not after pooling."
            )
        n, c, h, w = x.shape
        with torch.no_grad():
            rects = self.sample_rectangles(n, c, h, w, x.device)
            inside = _rectangle_masks(rects, h, w)  # (N, k, H, W) bool
            # Count how many rectangles cover each pixel of each (sample, channel) slice; > 0 is the union.
            # Integer counts are exact in any accumulation order, so the result is deterministic. uint8
            # (bool reinterpreted, no copy) keeps the buffers small; k >= 256 could overflow it.
            k = rects.channel.shape[1]
            source = inside.view(torch.uint8) if k < 256 else inside.to(torch.int32)
            target = (torch.arange(n, device=x.device).unsqueeze(1) * c + rects.channel).view(-1)
            coverage = torch.zeros(n * c, h, w, dtype=source.dtype, device=x.device)
            coverage.index_add_(0, target, source.view(n * k, h, w))
            mask = coverage.view(n, c, h, w) > 0
            if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
                mask = mask.contiguous(memory_format=torch.channels_last)  # where() follows its first input
            fill = self._fill_values(x, rects)[:, :, None, None]
        return torch.where(mask, fill, x)

    def _fill_values(self, x: Tensor, rects: Rectangles) -> Tensor:
        """(N, C) fill value of each (sample, channel), in the input's dtype."""
        if self.fill == "random":
            return rects.fill_uniform.to(x.dtype)
        if self.fill == "zero":
            return x.new_zeros(x.shape[:2])
        return x.mean(dim=(2, 3), dtype=torch.float32).to(x.dtype)  # "mean"

    def extra_repr(self) -> str:
        aspect = f"({self.aspect[0]:.3g}, {self.aspect[1]:.3g})"
        rng = "global" if self.generator is None else f"generator on {self.generator.device}"
        return (
            f"prob={self.prob}, channels={self.channels}, area={self.area}, aspect={aspect}, "
            f"fill={self.fill!r}, shared_channels={self.shared_channels}, rng={rng}"
        )


def _rectangle_masks(rects: Rectangles, height: int, width: int) -> Tensor:
    """(N, k, H, W) bool: the rectangle of each draw; all False for samples that are not masked."""
    rows = torch.arange(height, device=rects.top.device)
    cols = torch.arange(width, device=rects.top.device)
    in_rows = (rows >= rects.top.unsqueeze(-1)) & (rows < (rects.top + rects.height).unsqueeze(-1))
    in_cols = (cols >= rects.left.unsqueeze(-1)) & (cols < (rects.left + rects.width).unsqueeze(-1))
    in_rows &= rects.masked[:, None, None]
    return in_rows.unsqueeze(-1) & in_cols.unsqueeze(-2)


def _check_settings(
    prob: float,
    channels: float,
    area: tuple[float, float],
    aspect: tuple[float, float],
    fill: str,
) -> None:
    """Raises ConfigError naming the first invalid LFM setting."""
    problems = []
    if not 0.0 <= prob <= 1.0:
        problems.append(f"prob must be in [0, 1], got {prob}")
    if isinstance(channels, bool) or not isinstance(channels, (int, float)):
        problems.append(f"channels must be an int count or a float fraction, got {channels!r}")
    elif isinstance(channels, int) and channels < 1:
        problems.append(f"channels (a count) must be >= 1, got {channels}")
    elif isinstance(channels, float) and not 0.0 < channels <= 1.0:
        problems.append(f"channels (a fraction of C) must be in (0, 1], got {channels}")
    if len(area) != 2 or not 0.0 < area[0] <= area[1] <= 1.0:
        problems.append(f"area must be (low, high) with 0 < low <= high <= 1, got {area}")
    if len(aspect) != 2 or not 0.0 < aspect[0] <= aspect[1] or not math.isfinite(aspect[1]):
        problems.append(f"aspect must be (low, high) with 0 < low <= high, got {aspect}")
    if fill not in FILL_MODES:
        problems.append(f"fill must be one of {', '.join(FILL_MODES)}, got {fill!r}")
    if problems:
        raise ConfigError("Invalid LocalFeatureMasking settings: " + "; ".join(problems) + ".")
