"""Backbones, ImageNet weight loading, the BNNeck head and the assembled model."""

import pickle

import pytest
import torch
import torchvision

from reid.config import load_config
from reid.modeling import BACKBONE_REGISTRY, build_backbone, build_model
from reid.modeling.heads import BNNeckHead
from reid.modeling.pretrained import load_pretrained
from reid.utils.errors import CheckpointError, ConfigError, ReIDError


@pytest.fixture(autouse=True)
def empty_weight_caches(tmp_path, monkeypatch):
    """Never pick up weights a developer happens to have cached."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))


def small_cfg(*opts):
    return load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", *opts])


@pytest.mark.parametrize("last_stride, expected", [(1, (16, 8)), (2, (8, 4))])
def test_last_stride(last_stride, expected):
    backbone = build_backbone("resnet18", last_stride).eval()
    assert backbone(torch.zeros(1, 3, 256, 128)).shape[-2:] == expected


def test_timm_backbone_and_last_stride():
    backbone = build_backbone("timm:resnet18", 1).eval()
    assert backbone(torch.zeros(1, 3, 256, 128)).shape == (1, 512, 16, 8)


@pytest.mark.parametrize("prefix", ["", "module."])
def test_plain_torchvision_state_dict_loads_without_surgery(tmp_path, prefix):
    reference = torchvision.models.resnet18()
    path = tmp_path / "resnet18-f37072fd.pth"
    torch.save({prefix + k: v for k, v in reference.state_dict().items()}, path)  # fc.* included
    backbone = build_backbone("resnet18")
    load_pretrained(backbone, str(path))
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)
    assert torch.equal(backbone.body.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)


def test_timm_safetensors_loads(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    reference = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(path))
    backbone = build_backbone("resnet18")  # timm and torchvision ResNets share parameter names
    load_pretrained(backbone, str(path))
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)


def test_weights_found_in_torch_hub_cache(tmp_path):
    reference = torchvision.models.resnet18()
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "resnet18-f37072fd.pth")
    backbone = build_backbone("resnet18")
    load_pretrained(backbone, "")
    assert torch.equal(backbone.body.conv1.weight, reference.conv1.weight)


def test_missing_weights_explain_how_to_proceed():
    with pytest.raises(ReIDError, match="MODEL.PRETRAINED False"):
        build_model(load_config(None, ["MODEL.BACKBONE", "resnet18"]), num_classes=3)


def test_wrong_architecture_weights_refused(tmp_path):
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), path)
    with pytest.raises(CheckpointError, match="does not fit backbone resnet18"):
        load_pretrained(build_backbone("resnet18"), str(path))


class Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_weights_file_cannot_execute_code(tmp_path, capsys):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"conv1.weight": Evil()}, f)
    with pytest.raises(CheckpointError, match="evil.pth"):
        load_pretrained(build_backbone("resnet18"), str(path))
    torch.save({"conv1.weight": Evil()}, tmp_path / "evil_torch.pth")
    with pytest.raises(CheckpointError, match="refused on purpose") as info:
        load_pretrained(build_backbone("resnet18"), str(tmp_path / "evil_torch.pth"))
    assert "this must never run" not in capsys.readouterr().out
    assert "weights_only" not in str(info.value)  # torch's advice to turn the check off is not repeated
    text = tmp_path / "notes.pth"
    text.write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.pth: it is not a torch checkpoint"):
        load_pretrained(build_backbone("resnet18"), str(text))


def test_bnneck_head_train_and_eval_outputs():
    head = BNNeckHead(8, num_classes=5)
    assert not head.bottleneck.bias.requires_grad and torch.all(head.bottleneck.bias == 0)
    assert head.classifier.bias is None
    fmap = torch.randn(4, 8, 3, 2)
    out = head.train()(fmap)
    assert out["logits"].shape == (4, 5) and out["feat"].shape == (4, 8)
    assert torch.allclose(out["feat"], fmap.mean((2, 3)))
    head.eval()
    after = head(fmap)
    assert torch.allclose(after, head.bottleneck(fmap.mean((2, 3))))
    head.neck_feat = "before"
    assert torch.allclose(head(fmap), fmap.mean((2, 3)))


def test_model_normalises_inside_and_returns_features():
    cfg = small_cfg("INPUT.SIZE_TEST", "(64, 32)")
    model = build_model(cfg, num_classes=7)
    images = torch.rand(2, 3, 64, 32)
    train_out = model.train()(images)
    assert train_out["logits"].shape == (2, 7) and train_out["feat"].shape == (2, 512)
    model.eval()
    feats = model(images)
    assert feats.shape == (2, 512)
    manual = model.head(model.backbone((images - model.pixel_mean) / model.pixel_std))
    assert torch.allclose(feats, manual)
    assert "pixel_mean" not in model.state_dict()  # constants of the config, not weights


def test_inference_model_without_classifier_loads_trained_weights():
    trained = build_model(small_cfg(), num_classes=11).state_dict()
    model = build_model(small_cfg(), num_classes=0)
    missing, unexpected = model.load_state_dict(trained, strict=False)
    assert not missing and unexpected == ["head.classifier.weight"]


@pytest.mark.parametrize("stage", ["conv1", "stem", "layer1", "layer2"])
def test_regulariser_placement_is_train_only(stage):
    cfg = small_cfg("MODEL.REGULARIZER.NAME", "lfm", "MODEL.REGULARIZER.STAGE", stage, "MODEL.LFM.PROB", "1.0")
    model = build_model(cfg, num_classes=0)
    plain = build_model(small_cfg(), num_classes=0)
    plain.load_state_dict(model.state_dict())  # the regulariser adds no weights and renames nothing
    images = torch.rand(2, 3, 64, 32)
    model.eval(), plain.eval()
    assert torch.equal(model(images), plain(images))
    model.train(), plain.train()
    torch.manual_seed(0)
    assert not torch.allclose(model(images)["feat"], plain(images)["feat"])


def test_unknown_stage_is_a_clear_error():
    with pytest.raises(ReIDError, match="layer9"):
        build_model(small_cfg("MODEL.REGULARIZER.NAME", "lfm", "MODEL.REGULARIZER.STAGE", "layer9"), 0)


@pytest.mark.parametrize("stage, path", [("conv1", "conv_stem"), ("layer1", "blocks.0"), ("layer2", "blocks.1")])
def test_placement_names_work_for_non_resnet_timm_cnns(stage, path):
    pytest.importorskip("timm")
    cfg = small_cfg("MODEL.BACKBONE", "timm:mobilenetv3_small_050", "MODEL.REGULARIZER.NAME", "lfm",
                    "MODEL.REGULARIZER.STAGE", stage, "MODEL.LFM.PROB", "1.0", "MODEL.LFM.FILL", "zero")
    model = build_model(cfg, num_classes=0).train()
    assert model.backbone.stage_path(stage) == path
    seen = []
    model.backbone.body.get_submodule(path).register_forward_hook(lambda m, i, out: seen.append(out))
    model(torch.rand(2, 3, 64, 32))
    assert (seen[0] == 0).any()  # the hook output is the masked map (LFM runs before this hook's view)


def test_missing_placement_name_lists_the_backbones_own():
    from reid.modeling.backbones import Backbone

    body = torch.nn.Module()
    body.features = torch.nn.Conv2d(3, 8, 3)
    backbone = Backbone(body, 8, "toy", {"conv1": "features"})
    assert backbone.stage_path("conv1") == "features" and backbone.stage_path("features") == "features"
    with pytest.raises(ConfigError, match=r"'stem' has no counterpart in backbone toy.*conv1 \(features\)"):
        backbone.stage_path("stem")


@pytest.mark.parametrize("name", BACKBONE_REGISTRY.names())
def test_every_registered_backbone_builds_from_the_config(name):
    """Over the registry (timm-style): each backbone builds from MODEL.BACKBONE with BoT's last stride and maps
    a 64x32 batch to a (N, out_channels, 4, 2) map; every stage name it declares is a module of its body."""
    cfg = load_config(None, ["MODEL.BACKBONE", name, "MODEL.PRETRAINED", "False", "MODEL.LAST_STRIDE", "1"])
    model = build_model(cfg, num_classes=0).eval()
    with torch.no_grad():
        out = model.backbone(torch.rand(2, 3, 64, 32))
    assert out.shape == (2, model.backbone.out_channels, 4, 2)
    modules = dict(model.backbone.body.named_modules())
    assert all(path in modules for path in model.backbone.stages.values())


def test_family_names_resolve_in_the_registry():
    assert "timm:mobilenetv3_small_050" in BACKBONE_REGISTRY and "timm:" not in BACKBONE_REGISTRY
    with pytest.raises(ConfigError, match="MODEL.BACKBONE holds 'resnet5'.*'resnet50'"):
        load_config(None, ["MODEL.BACKBONE", "resnet5"])


def test_already_normalised_images_are_detected_once(caplog):
    cfg = load_config(None, ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False"])
    model = build_model(cfg, num_classes=0).eval()
    images = torch.rand(2, 3, 64, 32)
    with caplog.at_level("WARNING", logger="reid.modeling"), torch.no_grad():
        model(images)  # RGB in [0, 1]: as expected
        assert "expects RGB in [0, 1]" not in caplog.text
        fresh = build_model(cfg, num_classes=0).eval()
        normalised = (images - model.pixel_mean) / model.pixel_std  # what torchreid's loaders hand over
        fresh(normalised)
        fresh(normalised)
    assert caplog.text.count("expects RGB in [0, 1]") == 1  # said once, not per batch
    with caplog.at_level("WARNING", logger="reid.modeling"):
        build_model(cfg, num_classes=0).train()(normalised)  # training batches come from our own loaders
    assert caplog.text.count("expects RGB in [0, 1]") == 1
