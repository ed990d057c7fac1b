"""The batched tensor augmentation against the workers path and against BoT's erasing as BoT describes it.

Three things are compared on large samples:

- exactness: a batch from :func:`apply_params` equals, pixel for pixel, the same parameters applied one image
  at a time with torchvision's functional ops (pad, crop, flip, float conversion, erase);
- distributions: flip rate, crop offsets (uniform over 0..2*PADDING per axis), erasing probability, area,
  aspect and position histograms, and fill values agree between the tensor path, the workers path
  (torchvision v2 transforms) and a reference written from BoT's description;
- the two erasing styles differ where they should (the aspect ratio's distribution).

Tolerances: a rate must lie within 4.5 standard errors of its expected value; two histograms may differ
by a total variation distance of at most ``TV_TOLERANCE`` (0.06: about 3x the distance expected from
sampling noise alone at these sample sizes, while the styles' aspect histograms differ by more than 0.25).
"""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from reid.config.loader import load_config
from reid.data import build_transforms
from reid.data.batch_augment import (
    AugmentParams,
    AugmentSettings,
    apply_params,
    augment_settings,
    crop_rows,
    draw_params,
    pad_images,
)
from reid.data.transforms import BOT_ERASE_ASPECT, erase_settings

TV_TOLERANCE = 0.06
AREA_BINS = np.linspace(0.0, 0.45, 10)
ASPECT_BINS = np.geomspace(0.25, 4.0, 9)
POSITION_BINS = np.linspace(0.0, 1.0, 6)


def config(*overrides: str):
    return load_config(None, ["INPUT.SIZE_TRAIN", "(64, 32)", "INPUT.PADDING", "4", *overrides])


def histogram(values: np.ndarray, bins: np.ndarray) -> np.ndarray:
    counts, _ = np.histogram(np.clip(values, bins[0], bins[-1]), bins)
    return counts / max(counts.sum(), 1)


def total_variation(a: np.ndarray, b: np.ndarray) -> float:
    return 0.5 * float(np.abs(a - b).sum())


def assert_rate(hits: int, total: int, expected: float) -> None:
    stderr = math.sqrt(expected * (1 - expected) / total)
    assert abs(hits / total - expected) <= 4.5 * stderr + 1e-12, (hits / total, expected, total)


# ----- BoT's erasing, written from its description (reid-strong-baseline, data/transforms/transforms.py) -----


def bot_reference_rectangle(rng: random.Random, height: int, width: int, prob: float,
                            area: tuple[float, float], r1: float = 0.3, tries: int = 100):
    """(top, left, h, w) of BoT's erased rectangle, or None.

    BoT erases with probability ``prob``; it then tries up to 100 times: a target area uniform in ``area`` of
    the image, an aspect ratio uniform in [r1, 1/r1], h = round(sqrt(area * aspect)) and
    w = round(sqrt(area / aspect)); the first (h, w) strictly smaller than the image is placed at a uniform
    position (top in 0..H-h, left in 0..W-w, both inclusive). When no try fits, nothing is erased.
    """
    if not rng.random() < prob:
        return None
    tries_left = tries
    while tries_left:
        tries_left -= 1
        target = rng.uniform(*area) * height * width
        ratio = rng.uniform(r1, 1.0 / r1)
        h, w = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if h < height and w < width:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    return None


def reference_sample(n: int, height: int, width: int, prob: float, area: tuple[float, float]) -> np.ndarray:
    """(n, 5): erased flag, top, left, h, w of ``n`` reference draws."""
    rng = random.Random(1234)
    rows = []
    for _ in range(n):
        rect = bot_reference_rectangle(rng, height, width, prob, area)
        rows.append((0, 0, 0, 0, 0) if rect is None else (1, *rect))
    return np.array(rows)


def rectangles_from_pixels(images: torch.Tensor) -> np.ndarray:
    """(n, 5): erased flag, top, left, h, w recovered from images that are 0 except the erased rectangle."""
    mask = images[:, 0] > 0  # (n, H, W): every fill is positive in every channel
    rows, cols = mask.any(dim=2), mask.any(dim=1)
    h, w = rows.sum(dim=1), cols.sum(dim=1)
    top, left = rows.float().argmax(dim=1), cols.float().argmax(dim=1)
    # a rectangle: the mask is exactly the product of its row and column extents
    assert torch.equal(mask, rows[:, :, None] & cols[:, None, :])
    return torch.stack([(h > 0).long(), top, left, h, w], dim=1).numpy()


def statistics(rects: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    erased = rects[rects[:, 0] == 1]
    top, left, h, w = erased[:, 1:].T.astype(float)
    return {
        "area": histogram(h * w / (height * width), AREA_BINS),
        "aspect": histogram(h / w, ASPECT_BINS),
        "top": histogram(top / (height - h + 1), POSITION_BINS),
        "left": histogram(left / (width - w + 1), POSITION_BINS),
    }


def tensor_path_rectangles(cfg, n: int, seed: int = 0) -> tuple[np.ndarray, torch.Tensor]:
    """Rectangles erased by the tensor path on black images (no flip, no crop), and the first 2000 images."""
    settings = augment_settings(cfg)
    generator = torch.Generator().manual_seed(seed)
    zeros = torch.zeros(1, 3, *settings.size, dtype=torch.uint8)
    fill = torch.tensor(settings.erase.fill)
    rects, first = [], None
    for start in range(0, n, 2000):
        b = min(2000, n - start)
        params = draw_params(generator, b, settings)
        images = apply_params(zeros, torch.zeros(b, dtype=torch.long), params, settings, fill)
        rects.append(rectangles_from_pixels(images))
        first = images if first is None else first
    return np.concatenate(rects), first


def workers_path_rectangles(cfg, n: int) -> tuple[np.ndarray, torch.Tensor]:
    transform = build_transforms(cfg, is_train=True)
    torch.manual_seed(0)
    black = np.zeros((*cfg.INPUT.SIZE_TRAIN, 3), np.uint8)
    images = torch.stack([transform(black) for _ in range(n)])
    return rectangles_from_pixels(images), images


ERASE_ONLY = ("INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.FLIP_PROB", "0", "INPUT.PADDING", "0")


def test_bot_erasing_matches_the_reference_in_both_backends() -> None:
    cfg = config(*ERASE_ONLY)
    height, width = cfg.INPUT.SIZE_TRAIN
    reference = reference_sample(20000, height, width, cfg.INPUT.RE_PROB, tuple(cfg.INPUT.RE_AREA))
    tensor_rects, tensor_images = tensor_path_rectangles(cfg, 12000)
    worker_rects, worker_images = workers_path_rectangles(cfg, 3000)
    expected = statistics(reference, height, width)
    for rects in (tensor_rects, worker_rects):
        assert_rate(int(rects[:, 0].sum()), len(rects), cfg.INPUT.RE_PROB)  # 100 tries: almost always fits
        observed = statistics(rects, height, width)
        for name in expected:
            assert total_variation(observed[name], expected[name]) <= TV_TOLERANCE, name
    # BoT's fill: MODEL.PIXEL_MEAN once normalised, i.e. mean + mean * std before the model's normalisation
    for images in (tensor_images, worker_images):
        erased = images.abs().sum(dim=1) > 0
        for c, (mean, std) in enumerate(zip(cfg.MODEL.PIXEL_MEAN, cfg.MODEL.PIXEL_STD)):
            values = images[:, c][erased].unique()
            assert torch.equal(values, torch.tensor([mean + mean * std], dtype=torch.float32))
            assert torch.allclose((values - mean) / std, torch.tensor(mean))  # what the model sees


def test_torchvision_style_matches_torchvision_and_differs_from_bot() -> None:
    cfg = config(*ERASE_ONLY, "INPUT.RE_STYLE", "torchvision")
    height, width = cfg.INPUT.SIZE_TRAIN
    tensor_rects, tensor_images = tensor_path_rectangles(cfg, 12000)
    worker_rects, _ = workers_path_rectangles(cfg, 3000)
    tensor_stats, worker_stats = statistics(tensor_rects, height, width), statistics(worker_rects, height, width)
    # with 10 tries, torchvision erases a little less often than RE_PROB: both paths must agree on the rate
    worker_rate = worker_rects[:, 0].mean()
    assert_rate(int(tensor_rects[:, 0].sum()), len(tensor_rects), worker_rate)
    for name in tensor_stats:
        assert total_variation(tensor_stats[name], worker_stats[name]) <= TV_TOLERANCE, name
    bot = statistics(reference_sample(20000, height, width, 0.5, tuple(cfg.INPUT.RE_AREA)), height, width)
    assert total_variation(tensor_stats["aspect"], bot["aspect"]) > 0.15  # log-uniform vs uniform aspect
    erased = tensor_images.abs().sum(dim=1) > 0
    for c, mean in enumerate(cfg.MODEL.PIXEL_MEAN):
        assert torch.equal(tensor_images[:, c][erased].unique(), torch.tensor([mean], dtype=torch.float32))


def test_erase_settings_of_bot() -> None:
    settings = erase_settings(config())
    assert settings.aspect == pytest.approx((0.3, 1 / 0.3)) and settings.aspect == BOT_ERASE_ASPECT
    assert settings.attempts == 100 and not settings.log_uniform_aspect and settings.area == (0.02, 0.4)
    assert settings.fill == pytest.approx(tuple(m + m * s for m, s in zip((0.485, 0.456, 0.406),
                                                                          (0.229, 0.224, 0.225))))


# ----- flip and crop -----


def coded_image(height: int, width: int) -> np.ndarray:
    """R = 7 * row + 1, G = 15 * col + 1, B = 255: every pixel says where it came from (0 = padding)."""
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    return np.stack([7 * rows + 1, 15 * cols + 1, np.full_like(rows, 255)], axis=-1).astype(np.uint8)


def flips_and_shifts(images: torch.Tensor, padding: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per image: flipped?, vertical and horizontal shift of the content, each uniform over 0..2*padding.

    For a crop at offset (dy, dx) into the padded image, pixel (i, j) shows source row i + dy - P. The
    horizontal shift is read the same way after undoing the flip, so that both orders of flip and crop
    (the workers path flips first, the tensor path crops first) give a shift uniform over 0..2P.
    """
    pixels = (images * 255).round().long()
    height, width = images.shape[2:]
    i, j = height // 2, width // 2  # always inside the image: padding < half the size
    src_row = (pixels[:, 0, i, j] - 1) // 7
    src_col, src_next = (pixels[:, 1, i, j] - 1) // 15, (pixels[:, 1, i, j + 1] - 1) // 15
    flipped = src_next < src_col
    shift_y = src_row - i + padding
    shift_x = torch.where(flipped, padding - (src_col + j - (width - 1)), src_col - j + padding)
    return flipped.numpy(), shift_y.numpy(), shift_x.numpy()


FLIP_CROP_ONLY = ("INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.RE_PROB", "0")


def test_flip_and_crop_distributions_match_the_workers_path() -> None:
    cfg = config(*FLIP_CROP_ONLY)
    padding, (height, width) = cfg.INPUT.PADDING, cfg.INPUT.SIZE_TRAIN
    image = coded_image(height, width)
    transform = build_transforms(cfg, is_train=True)
    torch.manual_seed(0)
    workers = torch.stack([transform(image) for _ in range(3000)])
    settings = augment_settings(cfg)
    params = draw_params(torch.Generator().manual_seed(0), 10000, settings)
    padded = pad_images(torch.from_numpy(image).permute(2, 0, 1)[None].contiguous(), padding)
    tensor = apply_params(padded, torch.zeros(10000, dtype=torch.long), params, settings,
                          torch.tensor(settings.erase.fill))
    uniform = np.full(2 * padding + 1, 1 / (2 * padding + 1))
    offset_bins = np.arange(2 * padding + 2) - 0.5
    for images in (workers, tensor):
        flipped, shift_y, shift_x = flips_and_shifts(images, padding)
        assert_rate(int(flipped.sum()), len(flipped), cfg.INPUT.FLIP_PROB)
        for shift in (shift_y, shift_x):
            assert shift.min() >= 0 and shift.max() <= 2 * padding
            assert total_variation(histogram(shift, offset_bins), uniform) <= TV_TOLERANCE
        valid = images[:, 2] > 0  # padding shows as black in every channel
        assert torch.equal(images.sum(dim=1) > 0, valid)
    # the tensor path shows exactly the drawn parameters: crop first, then flip
    flipped, shift_y, shift_x = flips_and_shifts(tensor, padding)
    assert np.array_equal(flipped, params.flip.bool().numpy())
    assert np.array_equal(shift_y, params.crop_top.numpy())
    assert np.array_equal(shift_x, np.where(flipped, 2 * padding - params.crop_left.numpy(),
                                            params.crop_left.numpy()))


def random_batch(settings: AugmentSettings, seed: int, num_images: int, batch_size: int):
    """Random uint8 images of ``settings.size`` (before padding), their padded set, and a batch's indices,
    parameters and erasing fill."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, *settings.size), dtype=torch.uint8, generator=generator)
    index = torch.randint(0, num_images, (batch_size,), generator=generator)
    params = draw_params(generator, batch_size, settings)
    return images, pad_images(images, settings.padding), index, params, torch.tensor(settings.erase.fill)


def test_batch_equals_the_same_parameters_applied_image_by_image() -> None:
    settings = augment_settings(config("INPUT.RE_PROB", "0.7"))
    images, padded, index, params, fill = random_batch(settings, seed=3, num_images=10, batch_size=48)
    batch = apply_params(padded, index, params, settings, fill)
    assert params.erase_height.gt(0).any() and params.flip.eq(1).any() and params.flip.eq(0).any()
    for b in range(48):
        p = {f: int(getattr(params, f)[b]) for f in AugmentParams.__dataclass_fields__}
        image = TF.pad(images[index[b]], [settings.padding])
        image = TF.crop(image, p["crop_top"], p["crop_left"], *settings.size)
        if p["flip"]:
            image = TF.horizontal_flip(image)
        image = TF.to_dtype(image, torch.float32, scale=True)
        if p["erase_height"]:
            image = TF.erase(image, p["erase_top"], p["erase_left"], p["erase_height"], p["erase_width"],
                             fill.view(3, 1, 1))
        assert torch.equal(batch[b], image), b
    channels_last = apply_params(padded, index, params, settings, fill, channels_last=True)
    assert channels_last.is_contiguous(memory_format=torch.channels_last) and torch.equal(channels_last, batch)


def test_crop_rows_is_indexing_of_the_padded_set() -> None:
    generator = torch.Generator().manual_seed(0)
    padded = torch.randint(0, 256, (5, 3, 12, 9), dtype=torch.uint8, generator=generator)
    index, top, left = torch.tensor([4, 0, 4, 2]), torch.tensor([0, 4, 2, 1]), torch.tensor([3, 0, 1, 2])
    crops = crop_rows(padded, index, top, left, (8, 6))
    expected = torch.stack([padded[i, :, t:t + 8, s:s + 6] for i, t, s in zip(index, top, left)])
    assert torch.equal(crops, expected)


def test_draw_params_are_reproducible_and_in_range() -> None:
    settings = augment_settings(config())
    a = draw_params(torch.Generator().manual_seed(7), 256, settings)
    b = draw_params(torch.Generator().manual_seed(7), 256, settings)
    c = draw_params(torch.Generator().manual_seed(8), 256, settings)
    assert torch.equal(a.pack(torch.arange(256)), b.pack(torch.arange(256)))
    assert not torch.equal(a.pack(torch.arange(256)), c.pack(torch.arange(256)))
    height, width = settings.size
    erased = a.erase_height > 0
    assert (a.erase_width[erased] > 0).all() and (a.erase_width[~erased] == 0).all()
    assert (a.erase_top + a.erase_height <= height).all() and (a.erase_left + a.erase_width <= width).all()
    assert (a.erase_height < height).all() and (a.erase_width < width).all()
    assert a.crop_top.max() <= 2 * settings.padding and a.crop_left.min() >= 0
    index, unpacked = AugmentParams.unpack(a.pack(torch.arange(256)))
    assert torch.equal(index, torch.arange(256)) and torch.equal(unpacked.erase_width, a.erase_width)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.cuda
def test_cuda_batches_equal_cpu_batches() -> None:
    """The same parameters give the same pixels on the GPU (gathers through the byte-window view included)."""
    cfg = config("INPUT.SIZE_TRAIN", "(256, 128)", "INPUT.PADDING", "10", "INPUT.RE_PROB", "0.8")
    settings = augment_settings(cfg)
    _, padded, index, params, fill = random_batch(settings, seed=5, num_images=300, batch_size=256)
    expected = apply_params(padded, index, params, settings, fill)
    cuda_index, cuda_params = AugmentParams.unpack(params.pack(index).cuda())
    for channels_last in (False, True):
        batch = apply_params(padded.cuda(), cuda_index, cuda_params, settings, fill.cuda(), channels_last)
        assert batch.device.type == "cuda" and torch.equal(batch.cpu(), expected)
        assert batch.is_contiguous(memory_format=torch.channels_last) == channels_last
