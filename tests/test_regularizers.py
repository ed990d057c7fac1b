"""Regulariser registry, DropBlock/dropout semantics, each regulariser built from the config, vectorisation, and
attaching a regulariser to a CNN stage."""

from __future__ import annotations

import copy
import warnings

import pytest
import timm
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.transforms import v2

from reid.config import load_config
from reid.data import build_transforms
from reid.modeling import build_model
from reid.modeling.regularizers.lfm import LocalFeatureMasking
from reid.modeling.regularizers import (
    REGULARIZER_REGISTRY,
    RESNET_STAGES,
    attach_at_stage,
    build_regularizer,
    build_regularizer_from_config,
)
from reid.modeling.regularizers.dropblock import DropBlock2d
from reid.utils.errors import ConfigError, ReIDError
from tests.test_lfm import CountTorchCalls

# Every registered regulariser that puts a module into the network (random erasing is input-level: None),
# so a new one is tested here without editing this file.
NAMES = [name for name in REGULARIZER_REGISTRY.names() if build_regularizer(name) is not None]
# Settings that make a small batch certainly change in training mode; a regulariser without an entry is
# tested with its defaults.
TRAIN_KWARGS = {"lfm": {"prob": 1.0}, "dropout": {"p": 0.3}, "spatial_dropout": {"p": 0.3},
                "dropblock": {"block_size": 3, "keep_prob": 0.8}}


def test_registry_holds_the_comparison_regularizers():
    builtin = {"none", "lfm", "dropout", "spatial_dropout", "dropblock"}
    assert builtin <= set(NAMES)
    assert "random_erasing" in REGULARIZER_REGISTRY.names() and "random_erasing" not in NAMES  # input-level
    assert isinstance(build_regularizer("lfm"), LocalFeatureMasking)
    assert isinstance(build_regularizer("none"), nn.Identity)


@pytest.mark.parametrize("name", NAMES)
def test_train_only(name):
    x = torch.randn(4, 16, 12, 8)
    module = build_regularizer(name, **TRAIN_KWARGS.get(name, {}))
    torch.manual_seed(0)
    y = module(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert torch.equal(y, x) == (name == "none")
    torch.manual_seed(0)
    assert torch.equal(module(x), y)  # reproducible under the global seed
    assert module.eval()(x) is x


def test_bad_names_and_arguments_are_reported():
    with pytest.raises(ReIDError, match="dropblock"):
        build_regularizer("drop_block")
    with pytest.raises(ConfigError, match="block_size, keep_prob"):
        build_regularizer("dropblock", p=0.1)
    with pytest.raises(ConfigError):
        build_regularizer("none", p=0.1)
    with pytest.raises(ConfigError):
        build_regularizer("dropblock", keep_prob=0.0)


def test_dropout_is_elementwise_and_spatial_dropout_drops_whole_channels():
    x = torch.rand(32, 64, 8, 8) + 1  # strictly positive: zeros in the output were dropped
    torch.manual_seed(0)
    y = build_regularizer("dropout", p=0.3)(x)
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.01)
    per_channel = (y == 0).flatten(2).float().mean(2)
    assert ((per_channel > 0) & (per_channel < 1)).float().mean() > 0.9  # not whole channels

    y = build_regularizer("spatial_dropout", p=0.3)(x)
    dropped = (y == 0).flatten(2)
    assert torch.equal(dropped.all(2), dropped.any(2))  # a channel is dropped entirely or not at all
    assert dropped.all(2).float().mean().item() == pytest.approx(0.3, abs=0.03)
    kept = ~dropped.all(2)
    torch.testing.assert_close(y[kept], x[kept] / 0.7)


def expected_dropblock_keep_rate(height, width, block, keep_prob):
    """Exact E[kept fraction]: a pixel survives iff none of the seeds whose block covers it fired."""
    gamma = min(1.0, (1 - keep_prob) / block**2 * height * width / ((height - block + 1) * (width - block + 1)))

    def covering(size):  # per coordinate: number of valid seed positions whose block covers it
        pos = torch.arange(size)
        return (torch.minimum(pos, torch.tensor(size - block)) - (pos - block + 1).clamp(min=0) + 1).double()

    seeds = covering(height)[:, None] * covering(width)[None, :]
    return ((1 - gamma) ** seeds).mean().item()


def test_dropblock_keep_rate_blocks_and_scaling():
    block, keep_prob, size = 5, 0.9, 32
    x = torch.ones(64, 16, size, size)
    torch.manual_seed(0)
    y = DropBlock2d(block_size=block, keep_prob=keep_prob)(x)
    kept = y > 0
    keep_rate = kept.float().mean().item()
    assert keep_rate == pytest.approx(expected_dropblock_keep_rate(size, size, block, keep_prob), abs=0.003)
    assert keep_rate == pytest.approx(keep_prob, abs=0.02)
    torch.testing.assert_close(y[kept], torch.full_like(y[kept], 1 / keep_rate))

    # The dropped area is exactly a union of whole block x block squares inside the map.
    dropped = (~kept).float().flatten(0, 1).unsqueeze(1)
    full_windows = 1 - F.max_pool2d(1 - dropped, block, stride=1)
    rebuilt = F.max_pool2d(F.pad(full_windows, (block - 1,) * 4), block, stride=1)
    assert torch.equal(rebuilt, dropped)


def test_dropblock_block_larger_than_map_is_clipped():
    torch.manual_seed(0)
    y = DropBlock2d(block_size=7, keep_prob=0.5)(torch.ones(256, 2, 4, 3))
    per_map = (y == 0).flatten(2)
    assert torch.equal(per_map.all(2), per_map.any(2))  # the clipped block covers the whole 4x3 map
    assert per_map.any()


def count_calls(module: nn.Module, x: torch.Tensor) -> int:
    with CountTorchCalls() as counter:
        module(x)
    return counter.calls


def test_dropblock_is_vectorised_over_samples_channels_and_blocks():
    """A Python loop over samples, channels or block seeds would make the number of torch calls grow."""
    dropblock = DropBlock2d(block_size=3, keep_prob=0.8)
    base = count_calls(dropblock, torch.randn(2, 4, 8, 8))
    assert count_calls(dropblock, torch.randn(64, 4, 8, 8)) == base
    assert count_calls(dropblock, torch.randn(2, 256, 8, 8)) == base
    assert count_calls(dropblock, torch.randn(2, 4, 32, 32)) == base  # 16x the block seeds
    dropblock.block_size = 7
    assert count_calls(dropblock, torch.randn(2, 4, 8, 8)) == base


# ----- each regulariser from the config, at its stage -----

TINY = ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False"]
CONFIGURED = {  # MODEL.REGULARIZER.NAME -> (its settings, the module it must build, with them)
    "dropout": (["MODEL.DROPOUT.P", "0.25"], lambda m: type(m) is nn.Dropout and m.p == 0.25),
    "spatial_dropout": (["MODEL.DROPOUT.P", "0.25"], lambda m: type(m) is nn.Dropout2d and m.p == 0.25),
    "dropblock": (["MODEL.DROPBLOCK.BLOCK_SIZE", "5", "MODEL.DROPBLOCK.KEEP_PROB", "0.8"],
                  lambda m: isinstance(m, DropBlock2d) and (m.block_size, m.keep_prob) == (5, 0.8)),
    "lfm": (["MODEL.LFM.PROB", "1.0"], lambda m: isinstance(m, LocalFeatureMasking) and m.prob == 1.0),
}


@pytest.mark.parametrize("name", list(CONFIGURED))
def test_config_builds_each_regularizer_at_its_stage_train_only(name):
    settings, is_expected = CONFIGURED[name]
    cfg = load_config(None, [*TINY, "MODEL.REGULARIZER.NAME", name, "MODEL.REGULARIZER.STAGE", "conv1", *settings])
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=0, load_imagenet=False)
    body = model.backbone.body
    assert is_expected(body.regularizer), body.regularizer
    keys = list(build_model(load_config(None, TINY), num_classes=0, load_imagenet=False).state_dict())
    assert list(model.state_dict()) == keys  # checkpoints of every arm share one layout

    seen = capture_stage_output(body, "conv1")  # what conv1 passes on to bn1, after the regulariser
    x = torch.rand(4, 3, 64, 32)
    with torch.no_grad():
        model.eval()
        model(x)
        evaluated = seen["out"]
        assert torch.equal(evaluated, F.conv2d((x - model.pixel_mean) / model.pixel_std, body.conv1.weight,
                                               stride=2, padding=3))  # the identity in eval mode
        model.train()
        model(x)
    assert not torch.equal(seen["out"], evaluated)  # active in training


@pytest.mark.parametrize("name", REGULARIZER_REGISTRY.names())
def test_every_registered_regularizer_builds_from_its_config_and_is_train_only(name):
    """Over the registry, as timm's tests are over list_models(): a regulariser added in its own file is
    checked here without editing this test."""
    cfg = load_config(None, [*TINY, "MODEL.REGULARIZER.NAME", name, "INPUT.RE_PROB", "0.5"])
    module = build_regularizer_from_config(cfg)
    model = build_model(cfg, num_classes=0, load_imagenet=False)
    plain = build_model(load_config(None, TINY), num_classes=0, load_imagenet=False)
    assert list(model.state_dict()) == list(plain.state_dict())  # checkpoints of every arm share one layout
    if module is None:  # nothing in the network: the data transforms regularise (or nothing does)
        assert not hasattr(model.backbone.body, "regularizer")
        return
    x = torch.rand(16, 8, 12, 6)
    assert module.eval()(x) is x or torch.equal(module.eval()(x), x)  # the identity in eval mode
    torch.manual_seed(0)
    assert not torch.equal(module.train()(x), x)  # active in training (batch of 16: LFM masks some sample)


def test_config_random_erasing_is_input_level_only():
    cfg = load_config(None, [*TINY, "MODEL.REGULARIZER.NAME", "random_erasing", "INPUT.RE_PROB", "0.5"])
    model = build_model(cfg, num_classes=0, load_imagenet=False)
    assert not hasattr(model.backbone.body, "regularizer")  # nothing at the stage: the input is erased instead
    erasing = [t for t in build_transforms(cfg, is_train=True).transforms if isinstance(t, v2.RandomErasing)]
    assert len(erasing) == 1 and erasing[0].p == 0.5
    assert not any(isinstance(t, v2.RandomErasing) for t in build_transforms(cfg, is_train=False).transforms)
    with pytest.raises(ConfigError, match="INPUT.RE_PROB > 0"):  # the arm would otherwise regularise nothing
        load_config(None, [*TINY, "MODEL.REGULARIZER.NAME", "random_erasing", "INPUT.RE_PROB", "0.0"])


# ----- attaching to CNN stages -----


@pytest.fixture(scope="module")
def resnet18_weights() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None)


@pytest.fixture
def resnet18(resnet18_weights):
    """A factory of identical, independent ResNet-18s (copying is faster than initialising)."""
    return lambda: copy.deepcopy(resnet18_weights)


def capture_stage_output(model: nn.Module, path: str) -> dict:
    """Records what the stage passes on (hooks run in order, so this sees the regulariser's output)."""
    seen = {}
    model.get_submodule(path).register_forward_hook(lambda m, i, o: seen.update(out=o))
    return seen


@pytest.mark.parametrize("stage", list(RESNET_STAGES))
def test_attach_to_torchvision_resnet_stages(stage, resnet18):
    x = torch.randn(2, 3, 32, 16)
    plain, model = resnet18(), resnet18()
    keys = list(model.state_dict())
    lfm = LocalFeatureMasking(prob=1.0, fill="zero")
    attach_at_stage(model, stage, lfm)
    assert model.regularizer is lfm and list(model.state_dict()) == keys
    seen, plain_seen = capture_stage_output(model, RESNET_STAGES[stage]), capture_stage_output(
        plain, RESNET_STAGES[stage]
    )

    model.eval()
    assert not lfm.training
    assert torch.equal(model(x), plain.eval()(x))

    model.train()
    masked_output = model(x)
    assert not torch.equal(masked_output, plain.train()(x))
    changed = seen["out"] != plain_seen["out"]  # same weights and input: only the masking differs
    assert changed.any() and (seen["out"][changed] == 0).all()


def test_attach_by_module_path_to_timm_cnn():
    torch.manual_seed(0)
    model = timm.create_model("mobilenetv3_small_100", pretrained=False, num_classes=0)
    keys = list(model.state_dict())
    attach_at_stage(model, "conv_stem", LocalFeatureMasking(prob=1.0, fill="zero"), name="lfm")
    assert list(model.state_dict()) == keys
    seen = capture_stage_output(model, "conv_stem")
    x = torch.randn(2, 3, 32, 16)
    model.eval()
    reference = model(x)
    assert not (seen["out"] == 0).any()
    model.lfm.train()  # only the regulariser in train mode: BN statistics stay fixed
    masked_output = model(x)
    assert (seen["out"] == 0).any() and not torch.equal(masked_output, reference)


def test_attach_errors(resnet18):
    model = resnet18()
    with pytest.raises(ReIDError, match="conv1, bn1, relu, maxpool, layer1"):
        attach_at_stage(model, "layer9", nn.Identity())
    with pytest.raises(ReIDError, match="Sequential"):
        attach_at_stage(nn.Sequential(nn.Conv2d(3, 4, 3)), "0", nn.Identity())
    with pytest.raises(ReIDError, match="state-dict"):
        attach_at_stage(model, "conv1", nn.BatchNorm2d(64))
    attach_at_stage(model, "layer1.0.conv1", nn.Identity())  # any dotted path
    with pytest.raises(ReIDError, match="already has an attribute 'regularizer'"):
        attach_at_stage(model, "conv1", nn.Identity())


def test_removing_the_handle_and_deep_copies(resnet18):
    x = torch.randn(2, 3, 32, 16)
    model = resnet18().train()
    handle = attach_at_stage(model, "conv1", LocalFeatureMasking(prob=1.0, fill="zero"))
    seen = capture_stage_output(model, "conv1")

    twin = copy.deepcopy(model)  # e.g. an EMA copy: its hook must drive its own regulariser
    twin_seen = capture_stage_output(twin, "conv1")
    model.eval()
    twin(x)
    assert (twin_seen["out"] == 0).any()
    twin.regularizer.eval()
    twin.train()  # .train() reaches the copied regulariser
    assert twin.regularizer.training and not model.regularizer.training

    model.train()
    handle.remove()
    model(x)
    assert not (seen["out"] == 0).any()


def test_jit_trace_in_eval_mode_contains_no_regularizer(resnet18):
    x = torch.randn(1, 3, 32, 16)
    plain, model = resnet18().eval(), resnet18()
    attach_at_stage(model, "conv1", LocalFeatureMasking(prob=1.0))
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated in recent torch
        traced = torch.jit.trace(model, x)
        traced_plain = torch.jit.trace(plain, x)
    assert torch.equal(traced(x), plain(x))

    def operations(module):  # the computation, without attribute look-ups of submodules
        return [node.kind() for node in module.inlined_graph.nodes() if node.kind().startswith("aten::")]

    assert operations(traced) == operations(traced_plain)
