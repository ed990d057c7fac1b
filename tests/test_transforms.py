"""BoT transforms: shape, dtype, [0, 1] range; train randomness vs test determinism; each erasing style's fill.

The distributions of the erasing styles are checked in tests/test_batch_augment.py, beside the tensor path's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from torchvision.transforms import v2

from reid.config.loader import load_config
from reid.data import build_transforms, to_tensor_image
from reid.data.transforms import BotRandomErasing


def random_image(height: int = 40, width: int = 20) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def test_test_transform_resizes_to_unnormalised_float_deterministically() -> None:
    cfg = load_config(None, ["INPUT.SIZE_TEST", "(32, 16)"])
    transform = build_transforms(cfg, is_train=False)
    img = random_image()
    out = transform(img)
    assert type(out) is torch.Tensor and out.dtype == torch.float32 and out.shape == (3, 32, 16)
    assert 0.0 <= out.min() and out.max() <= 1.0
    assert torch.equal(out, transform(img))
    uniform = np.full((40, 20, 3), (255, 128, 0), np.uint8)
    assert torch.allclose(transform(uniform).mean(dim=(1, 2)), torch.tensor([1.0, 128 / 255, 0.0]), atol=1e-3)


def test_train_transform_shape_range_and_randomness() -> None:
    cfg = load_config(None, ["INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.PADDING", "4"])
    transform = build_transforms(cfg, is_train=True)
    img = random_image(50, 30)
    torch.manual_seed(0)
    outs = [transform(img) for _ in range(8)]
    assert all(o.shape == (3, 32, 16) and o.dtype == torch.float32 for o in outs)
    assert all(0.0 <= o.min() and o.max() <= 1.0 for o in outs)
    assert len({o.sum().item() for o in outs}) > 1
    torch.manual_seed(0)
    assert torch.equal(outs[0], transform(img))  # reproducible from torch's seed


@pytest.mark.parametrize("style", ["bot", "torchvision"])
def test_random_erasing_fill_of_each_style(style: str) -> None:
    mean, std = (0.25, 0.5, 0.75), (0.2, 0.3, 0.1)
    cfg = load_config(None, ["INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.FLIP_PROB", "0", "INPUT.PADDING", "0",
                             "INPUT.RE_PROB", "1.0", "INPUT.RE_AREA", "(0.3, 0.3)", "INPUT.RE_STYLE", style,
                             "MODEL.PIXEL_MEAN", str(mean), "MODEL.PIXEL_STD", str(std)])
    img = np.zeros((32, 16, 3), np.uint8)
    out = build_transforms(cfg, is_train=True)(img)
    erased = out.sum(dim=0) > 0
    assert 0.2 < erased.float().mean() < 0.4
    for channel, (m, s) in enumerate(zip(mean, std)):
        # BoT writes the mean into the normalised image: the model's (x - mean) / std must give it back.
        expected = m + m * s if style == "bot" else m
        assert torch.allclose(out[channel][erased], torch.tensor(expected))
        normalised = (out[channel][erased] - m) / s
        assert torch.allclose(normalised, torch.tensor(m if style == "bot" else 0.0), atol=1e-6)


def test_each_style_builds_its_erasing() -> None:
    bot = build_transforms(load_config(None, []), is_train=True).transforms
    tv = build_transforms(load_config(None, ["INPUT.RE_STYLE", "torchvision"]), is_train=True).transforms
    bot_erasing = [t for t in bot if isinstance(t, v2.RandomErasing)]
    tv_erasing = [t for t in tv if isinstance(t, v2.RandomErasing)]
    assert len(bot_erasing) == len(tv_erasing) == 1
    assert isinstance(bot_erasing[0], BotRandomErasing) and bot_erasing[0].attempts == 100
    assert bot_erasing[0].ratio == pytest.approx((0.3, 1 / 0.3)) and bot_erasing[0].scale == (0.02, 0.4)
    assert type(tv_erasing[0]) is v2.RandomErasing and tv_erasing[0].ratio == (0.3, 3.3)


def test_flip_and_crop_can_be_disabled() -> None:
    cfg = load_config(
        None,
        [
            "INPUT.SIZE_TRAIN",
            "(40, 20)",
            "INPUT.FLIP_PROB",
            "0",
            "INPUT.PADDING",
            "0",
            "INPUT.RE_PROB",
            "0",
            "INPUT.SIZE_TEST",
            "(40, 20)",
        ],
    )
    img = random_image()
    assert torch.equal(build_transforms(cfg, is_train=True)(img), build_transforms(cfg, is_train=False)(img))


def test_to_tensor_image_is_uint8_chw() -> None:
    img = random_image(6, 4)
    out = to_tensor_image(img)
    assert out.dtype == torch.uint8 and out.shape == (3, 6, 4)
    assert torch.equal(out.permute(1, 2, 0), torch.from_numpy(img))
    with pytest.raises(ValueError, match="HxWx3"):
        to_tensor_image(img[..., 0])
