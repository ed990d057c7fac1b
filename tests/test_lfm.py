"""Local Feature Masking: semantics, rectangle statistics, determinism, gradients, vectorisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.overrides import TorchFunctionMode

from reid.modeling.regularizers.lfm import LocalFeatureMasking, Rectangles
from reid.utils.errors import ConfigError, ReIDError


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def expected_mask(rects: Rectangles, channels: int, height: int, width: int) -> torch.Tensor:
    """The (N, C, H, W) union of the drawn rectangles, written with plain loops as a reference."""
    n, k = rects.channel.shape
    mask = torch.zeros(n, channels, height, width, dtype=torch.bool)
    for i in range(n):
        if not rects.masked[i]:
            continue
        for j in range(k):
            top, left = int(rects.top[i, j]), int(rects.left[i, j])
            h, w = int(rects.height[i, j]), int(rects.width[i, j])
            mask[i, int(rects.channel[i, j]), top : top + h, left : left + w] = True
    return mask


def draw_and_apply(lfm: LocalFeatureMasking, x: torch.Tensor, seed: int = 0):
    """The rectangles ``lfm`` draws for ``x`` with ``seed``, and its output for the same draws."""
    lfm.generator = seeded(seed)
    rects = lfm.sample_rectangles(*x.shape, device=x.device)
    lfm.generator = seeded(seed)
    return rects, lfm(x)


def test_defaults_are_the_papers_settings():
    lfm = LocalFeatureMasking()
    assert lfm.prob == 0.15 and lfm.channels == 32 and lfm.fill == "random"
    assert lfm.area == (0.02, 0.4) and lfm.aspect == pytest.approx((0.3, 1 / 0.3))
    assert not lfm.shared_channels and lfm.generator is None
    text = repr(lfm)
    assert "prob=0.15" in text and "channels=32" in text and "fill='random'" in text


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("channels_last", [False, True])
def test_shape_dtype_and_memory_format_are_kept(dtype, channels_last):
    x = torch.randn(3, 16, 12, 8).to(dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    y = LocalFeatureMasking(prob=1.0, channels=4, generator=seeded())(x)
    assert y.shape == x.shape and y.dtype == dtype and not torch.equal(y, x)
    assert y.is_contiguous(memory_format=torch.channels_last) == channels_last


def test_eval_mode_and_zero_prob_return_the_input_object():
    x = torch.randn(2, 8, 6, 4)
    lfm = LocalFeatureMasking(prob=1.0).eval()
    assert lfm(x) is x
    assert LocalFeatureMasking(prob=0.0)(x) is x


def test_masks_exactly_the_drawn_rectangles():
    lfm = LocalFeatureMasking(prob=1.0, channels=6, fill="zero")
    x = torch.ones(4, 512, 20, 12)
    rects, y = draw_and_apply(lfm, x)
    mask = expected_mask(rects, 512, 20, 12)
    assert torch.equal(y == 0, mask)
    for i in range(4):  # one masked channel per distinct draw
        distinct = rects.channel[i].unique().numel()
        assert int(mask[i].flatten(1).any(1).sum()) == distinct


def test_masked_regions_are_boxes_not_full_width_bands():
    lfm = LocalFeatureMasking(prob=1.0, channels=8, fill="zero", generator=seeded(3))
    height, width = 32, 16
    y = lfm(torch.ones(16, 4096, height, width))
    masked = (y == 0).flatten(0, 1)
    masked = masked[masked.flatten(1).any(1)]  # the masked (sample, channel) slices
    assert len(masked) >= 100
    rows, cols = masked.any(2), masked.any(1)
    for region, r, c in zip(masked, rows, cols):
        r_idx, c_idx = r.nonzero().flatten(), c.nonzero().flatten()
        box = region[r_idx[0] : r_idx[-1] + 1, c_idx[0] : c_idx[-1] + 1]
        if int(region.sum()) == box.numel():  # a single rectangle (overlaps of two draws are rare)
            assert box.all()
    heights, widths = rows.sum(1), cols.sum(1)
    assert (widths < width).float().mean() > 0.95 and (heights < height).float().mean() > 0.95


def expected_rectangle_stats(height, width, area, aspect, attempts, grid=1000):
    """Mean area fraction and mean h/w of an accepted rectangle, by integrating over (area, aspect).

    Each candidate is accepted iff it fits (h < H and w < W) and the first fitting candidate is used,
    so an accepted rectangle follows the candidate distribution conditioned on fitting.
    """
    u = (np.arange(grid) + 0.5) / grid
    area_px = (area[0] + (area[1] - area[0]) * u)[:, None] * height * width
    ratio = (aspect[0] + (aspect[1] - aspect[0]) * u)[None, :]
    h = np.maximum(np.round(np.sqrt(area_px * ratio)), 1)
    w = np.maximum(np.round(np.sqrt(area_px / ratio)), 1)
    fits = (h < height) & (w < width)
    assert (1 - fits.mean()) ** attempts < 1e-6  # the clamped fallback is negligible here
    return (h * w)[fits].mean() / (height * width), (h / w)[fits].mean()


def test_rectangle_statistics_match_random_erasing():
    lfm = LocalFeatureMasking(generator=seeded(7))  # the paper's settings on a ResNet-50 conv1 map
    n, c, height, width = 20000, 64, 128, 64
    rects = lfm.sample_rectangles(n, c, height, width, "cpu")

    assert rects.masked.float().mean().item() == pytest.approx(0.15, abs=0.01)
    h, w = rects.height.double(), rects.width.double()
    area_mean, ratio_mean = expected_rectangle_stats(height, width, lfm.area, lfm.aspect, lfm.MAX_ATTEMPTS)
    assert (h * w / (height * width)).mean().item() == pytest.approx(area_mean, abs=0.003)
    # The mean aspect tells uniform sampling (1.8) from log-uniform sampling (1.3).
    assert (h / w).mean().item() == pytest.approx(ratio_mean, abs=0.02)
    ratio = h / w
    assert ratio.min() >= 0.3 * 0.8 and ratio.max() <= 1 / 0.3 * 1.2  # within range up to rounding
    assert ratio.min() < 0.35 and ratio.max() > 2.9
    assert (rects.height < height).all() and (rects.width < width).all()
    assert (rects.top >= 0).all() and (rects.top + rects.height <= height).all()
    assert (rects.left >= 0).all() and (rects.left + rects.width <= width).all()
    # Top-left corners are uniform over valid positions: E[top] = (H - h) / 2.
    assert (rects.top - (height - h) / 2).mean().item() == pytest.approx(0, abs=0.2)
    assert (rects.left - (width - w) / 2).mean().item() == pytest.approx(0, abs=0.2)
    counts = torch.bincount(rects.channel.flatten(), minlength=c).double()
    assert (counts / counts.mean() - 1).abs().max() < 0.05
    assert rects.fill_uniform.min() >= 0 and rects.fill_uniform.max() < 1


def test_maps_too_small_for_any_candidate_stay_in_bounds():
    lfm = LocalFeatureMasking(prob=1.0, channels=3, area=(0.9, 1.0), generator=seeded())
    for height, width in [(1, 1), (1, 5), (3, 2)]:
        rects = lfm.sample_rectangles(50, 4, height, width, "cpu")
        assert (rects.height >= 1).all() and (rects.width >= 1).all()
        assert (rects.top + rects.height <= height).all() and (rects.left + rects.width <= width).all()
        assert lfm(torch.ones(2, 4, height, width)).shape == (2, 4, height, width)


def test_channel_fraction_and_shared_channels():
    assert LocalFeatureMasking(channels=0.25).num_draws(64) == 16
    assert LocalFeatureMasking(channels=0.001).num_draws(64) == 1
    rects = LocalFeatureMasking(channels=5, shared_channels=True).sample_rectangles(6, 64, 8, 8, "cpu")
    assert rects.channel.shape == (6, 5) and (rects.channel == rects.channel[0]).all()
    rects = LocalFeatureMasking(channels=5).sample_rectangles(6, 64, 8, 8, "cpu")
    assert not (rects.channel == rects.channel[0]).all()


def test_seeded_generator_and_global_seed_are_reproducible():
    x = torch.randn(8, 32, 16, 8)
    lfm = LocalFeatureMasking(prob=0.5, generator=seeded(1))
    first = lfm(x)
    lfm.generator = seeded(1)
    assert torch.equal(lfm(x), first)
    lfm.generator = seeded(2)
    assert not torch.equal(lfm(x), first)

    lfm.generator = None
    torch.manual_seed(5)
    first = lfm(x)
    torch.manual_seed(5)
    assert torch.equal(lfm(x), first)


def test_fill_modes():
    x = torch.randn(4, 64, 16, 8) * 3 + 5  # values far from [0, 1)
    lfm = LocalFeatureMasking(prob=1.0, channels=8)
    for fill in ("zero", "mean", "random"):
        lfm.fill = fill
        rects, y = draw_and_apply(lfm, x)
        mask = expected_mask(rects, 64, 16, 8)
        assert torch.equal(y[~mask], x[~mask])
        if fill == "zero":
            assert (y[mask] == 0).all()
        elif fill == "mean":
            means = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
            torch.testing.assert_close(y[mask], means[mask])
        else:
            assert (y[mask] >= 0).all() and (y[mask] < 1).all()
            for i, ch in mask.flatten(2).any(2).nonzero().tolist():  # one value per (sample, channel)
                assert y[i, ch][mask[i, ch]].unique().numel() == 1


def test_gradient_is_zero_exactly_at_masked_positions():
    x = torch.randn(4, 32, 12, 8, requires_grad=True)
    lfm = LocalFeatureMasking(prob=1.0, channels=8, fill="mean")
    rects, y = draw_and_apply(lfm, x)
    (y * 2).sum().backward()
    mask = expected_mask(rects, 32, 12, 8)
    assert mask.any()
    assert torch.equal(x.grad, torch.where(mask, 0.0, 2.0))


class CountTorchCalls(TorchFunctionMode):
    """Counts every torch function and tensor method called while the mode is active."""

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def count_calls(lfm: LocalFeatureMasking, x: torch.Tensor) -> int:
    with CountTorchCalls() as counter:
        lfm(x)
    return counter.calls


@pytest.mark.parametrize("fill", ["random", "zero", "mean"])
def test_work_is_vectorised_over_samples_channels_and_draws(fill):
    """A Python loop over samples, channels or draws would make the number of torch calls grow."""
    lfm = LocalFeatureMasking(prob=1.0, channels=4, fill=fill)
    base = count_calls(lfm, torch.randn(2, 16, 8, 8))
    assert count_calls(lfm, torch.randn(64, 16, 8, 8)) == base
    assert count_calls(lfm, torch.randn(2, 256, 8, 8)) == base
    lfm.channels = 64
    assert count_calls(lfm, torch.randn(2, 16, 8, 8)) == base


@pytest.mark.parametrize(
    "kwargs",
    [
        {"prob": 1.5},
        {"channels": 0},
        {"channels": 1.5},
        {"channels": True},
        {"area": (0.5, 0.2)},
        {"aspect": (0.0, 2.0)},
        {"fill": "noise"},
    ],
)
def test_invalid_settings_raise_config_error(kwargs):
    with pytest.raises(ConfigError):
        LocalFeatureMasking(**kwargs)


def test_non_feature_map_input_raises_clear_error():
    with pytest.raises(ReIDError, match="N, C, H, W"):
        LocalFeatureMasking(prob=1.0)(torch.randn(4, 2048))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_input_with_cpu_generator_and_global_rng():
    x = torch.randn(8, 64, 32, 16, device="cuda").to(torch.bfloat16).to(memory_format=torch.channels_last)
    lfm = LocalFeatureMasking(prob=1.0, fill="zero", generator=seeded(0))
    y = lfm(x)
    assert y.device == x.device and y.dtype == torch.bfloat16
    assert y.is_contiguous(memory_format=torch.channels_last)
    _, y_cpu = draw_and_apply(lfm, x.float().cpu())  # same draws on the CPU
    lfm.generator = seeded(0)
    assert torch.equal(lfm(x).float().cpu() == 0, y_cpu == 0)
    lfm.generator = None
    torch.manual_seed(3)
    first = lfm(x)
    torch.manual_seed(3)
    assert torch.equal(lfm(x), first)
