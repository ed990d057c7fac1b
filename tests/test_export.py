"""Export: ONNX / TorchScript / release round trips against the eval-mode PyTorch model, LFM absent from
the exported graphs, failed verification handling, bad weights, and the tools/export.py command line."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from reid.config import config_to_dict, load_config
from reid.export import (
    RELEASE_FORMAT,
    ExportableReID,
    ExportVerificationError,
    FeatureExtractor,
    export_model,
)
from reid.export import exporter as exporter_module
from reid.export.onnx_export import RANDOM_OPS as ONNX_RANDOM_OPS
from reid.export.onnx_export import onnx_operators, onnx_session, run_onnx
from reid.export.torchscript import RANDOM_OPS as TORCHSCRIPT_RANDOM_OPS
from reid.export.torchscript import load_torchscript, torchscript_operators
from reid.export.release import RELEASE_VERSION, release_dict
from reid.export.verify import FP16_TOLERANCE, FP32_TOLERANCE, Tolerance, VerificationReport, compare
from reid.modeling import build_model
from reid.modeling.regularizers.lfm import LocalFeatureMasking
from reid.utils.checkpoint import CHECKPOINT_FORMAT, atomic_save
from reid.utils.errors import CheckpointError, ReIDError

REPO = Path(__file__).resolve().parents[1]
TINY_OPTS = ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", "INPUT.SIZE_TEST", "(64, 32)",
             "MODEL.REGULARIZER.NAME", "lfm", "MODEL.LFM.PROB", "1.0"]  # LFM masks every sample in training


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, torch.nn.Module]:
    """A fake training checkpoint of a tiny LFM model (non-trivial BN statistics) and its eval-mode model."""
    cfg = load_config(None, TINY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    with torch.no_grad():  # a few training-mode passes move the BatchNorm statistics away from the init
        for _ in range(2):
            model(torch.rand(4, 3, 64, 32))
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    atomic_save({"model": model.state_dict(), "config": config_to_dict(cfg), "optimizer": {}}, path)
    return path, model.eval()


def reference(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(model(images), dim=1)


def test_lfm_is_attached_and_active_in_training(tiny) -> None:
    """Guards the other tests: the model does hold an active LFM, so "absent from the export" means something."""
    model = copy.deepcopy(tiny[1])  # a training pass updates BatchNorm statistics: keep the fixture's intact
    assert any(isinstance(m, LocalFeatureMasking) for m in model.modules())
    images = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        evaluated = model(images)
        model.train()
        for bn in (m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)):
            bn.eval()  # isolate LFM: only it differs between the two passes
        assert not torch.allclose(model(images)["bn_feat"], evaluated, atol=1e-4)


def test_onnx_round_trip_with_dynamic_batch(tiny, tmp_path) -> None:
    weights, model = tiny
    result = export_model(weights, tmp_path / "m.onnx", "onnx")
    assert result.path.is_file() and result.report.passed and result.batch is None
    assert [c.batch for c in result.report.comparisons] == [1, 4]
    assert not (ONNX_RANDOM_OPS | {"RandomUniformLike"}) & onnx_operators(result.path)  # no LFM, no dropout
    session = onnx_session(result.path)
    for n in (2, 5):  # batch sizes other than those the exporter checked
        images = torch.rand(n, 3, 64, 32)
        out = torch.from_numpy(run_onnx(session, images))
        assert out.shape == (n, model.feat_dim)
        assert (out - reference(model, images)).abs().max() < 1e-4
        assert torch.equal(out, torch.from_numpy(run_onnx(session, images)))  # deterministic: no mask drawn


def test_onnx_fixed_batch_and_half(tiny, tmp_path) -> None:
    weights, model = tiny
    result = export_model(weights, tmp_path / "m16.onnx", "onnx", batch=3, half=True)
    assert result.input["dtype"] == "float16" and [c.batch for c in result.report.comparisons] == [3]
    session = onnx_session(result.path)
    (spec,) = session.get_inputs()
    assert spec.shape == [3, 3, 64, 32] and spec.type == "tensor(float16)"
    images = torch.rand(3, 3, 64, 32)
    out = torch.from_numpy(run_onnx(session, images)).float()
    assert F.cosine_similarity(out, reference(model, images)).min() > 0.999


def test_torchscript_round_trip_with_two_batch_sizes(tiny, tmp_path) -> None:
    weights, model = tiny
    result = export_model(weights, tmp_path / "m.ts", "torchscript")
    assert result.report.passed
    loaded = load_torchscript(result.path)
    assert not TORCHSCRIPT_RANDOM_OPS & torchscript_operators(loaded)
    with torch.no_grad():
        for n in (1, 6):
            images = torch.rand(n, 3, 64, 32)
            out = loaded(images)
            assert (out - reference(model, images)).abs().max() < 1e-4
            assert torch.equal(out, loaded(images))


def test_release_file_is_safe_and_rebuilds_the_same_features(tiny, tmp_path) -> None:
    weights, model = tiny
    result = export_model(weights, tmp_path / "model_release.pth", "release")
    data = torch.load(result.path, weights_only=True)  # only tensors and plain containers
    assert data["format"] == RELEASE_FORMAT and data["feat_dim"] == model.feat_dim
    assert data["input"] == {"size": [64, 32], "range": [0.0, 1.0], "channels": "RGB", "layout": "NCHW",
                             "dtype": "float32"}
    assert "optimizer" not in data and not any(k.startswith("head.classifier.") for k in data["model"])
    extractor = FeatureExtractor(result.path, device="cpu")
    images = torch.rand(3, 3, 64, 32)
    assert torch.allclose(extractor(images), reference(model, images), atol=1e-6)


def test_exportable_applies_flip_and_normalisation(tiny) -> None:
    _, model = tiny
    images = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        expected = F.normalize(model(images) + model(images.flip(3)), dim=1)
        assert torch.allclose(ExportableReID(model, feat_norm=True, flip=True)(images), expected, atol=1e-6)
        raw = ExportableReID(model, feat_norm=False)(images)
        assert torch.equal(raw, model(images))


def test_release_format_and_version_are_checked_on_loading(tiny, tmp_path) -> None:
    _, model = tiny
    data = release_dict(model, load_config(None, TINY_OPTS))  # what tools/export.py --format release writes
    images = torch.rand(2, 3, 64, 32)
    for name, changes, message in [
        ("other.pth", {"format": "someone-else/model"}, r"'someone-else/model' file, not a model of this toolkit"),
        ("newer.pth", {"version": RELEASE_VERSION + 1}, rf"version {RELEASE_VERSION + 1}, written by a newer"),
        ("broken.pth", {"version": "1"}, "invalid version '1'"),
    ]:
        path = tmp_path / name
        torch.save({**data, "model": {}, **changes}, path)  # refused on its header: the weights are not needed
        with pytest.raises(CheckpointError, match=message) as info:
            FeatureExtractor(path, device="cpu")
        assert name in str(info.value)
    # Training checkpoints say what they are as well, and files without a format field still load.
    for name, header in (("checkpoint.pth", {"format": CHECKPOINT_FORMAT}), ("plain.pth", {})):
        path = tmp_path / name
        torch.save({"model": data["model"], "config": data["config"], **header}, path)
        assert torch.allclose(FeatureExtractor(path, device="cpu")(images), reference(model, images), atol=1e-6)


def test_fp32_verification_is_absolute_and_fp16_scales_with_the_features() -> None:
    # Raw (not normalised) features of magnitude up to 5, as a ResNet's BNNeck gives them.
    reference_features = torch.randn(4, 16, generator=torch.Generator().manual_seed(0)).clamp(-1, 1) * 5
    assert reference_features.abs().max() == 5
    shifted = reference_features + 5e-4  # 1e-4 of the largest value, but 5e-4 absolute: not float32 agreement
    fp32 = compare("raw features", shifted, reference_features, FP32_TOLERANCE)
    assert not fp32.passed and fp32.max_abs == pytest.approx(5e-4, abs=1e-6)
    assert compare("raw features", reference_features + 5e-5, reference_features, FP32_TOLERANCE).passed
    fp16 = compare("raw features", shifted, reference_features, FP16_TOLERANCE)
    assert fp16.passed  # 1e-2 x max |ref| for float16, whose rounding grows with the values
    report = VerificationReport(FP32_TOLERANCE, [fp32]).format()
    assert "max |diff|" in report and "max |ref|" in report and "5.00" in report and "FAILED" in report
    assert "max |diff| <= 0.0001 (absolute)" in report
    assert "x max(1, max |ref|)" in VerificationReport(FP16_TOLERANCE, [fp16]).format()


def test_failed_verification_keeps_the_file_as_failed(tiny, tmp_path, monkeypatch) -> None:
    weights, _ = tiny
    monkeypatch.setattr(exporter_module, "FP32_TOLERANCE", Tolerance(max_abs=-1.0, min_cosine=2.0))
    output = tmp_path / "m.pth"  # any format: the release file is the quickest to write and verify
    with pytest.raises(ExportVerificationError, match="m.pth.failed"):
        export_model(weights, output, "release")
    assert not output.exists() and (tmp_path / "m.pth.failed").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["m.pth.failed"]  # no temporary file left behind


def test_bad_weights_are_named(tiny, tmp_path) -> None:
    weights, _ = tiny
    not_a_checkpoint = tmp_path / "notes.txt"
    not_a_checkpoint.write_text("hello")
    with pytest.raises(CheckpointError, match="notes.txt"):
        export_model(not_a_checkpoint, tmp_path / "m.onnx", "onnx")
    for wrong in (["MODEL.BACKBONE", "resnet50"], ["MODEL.BACKBONE", "resnet34"]):  # shapes differ / keys missing
        with pytest.raises(CheckpointError, match="tiny.pth"):
            export_model(weights, tmp_path / "m.onnx", "onnx", config=load_config(None, TINY_OPTS + wrong))
    with pytest.raises(ReIDError, match="format"):
        export_model(weights, tmp_path / "m.x", "tflite")
    with pytest.raises(ReIDError, match="ONNX only"):  # a TorchScript trace takes any batch size
        export_model(weights, tmp_path / "m.ts", "torchscript", batch=4)
    (tmp_path / "a_file").write_text("")
    with pytest.raises(ReIDError, match="Cannot create the folder of .*a_file"):  # checked before exporting
        export_model(weights, tmp_path / "a_file" / "m.onnx", "onnx")
    assert not list(tmp_path.glob("m.*"))


def run_tool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / "export.py"), *args], check=False,
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_export_cli(tiny, tmp_path) -> None:
    weights, _ = tiny
    output = tmp_path / "cli.onnx"
    ok = run_tool("--weights", str(weights), "--format", "onnx", "--output", str(output), "--batch", "2")
    assert ok.returncode == 0, ok.stderr
    assert output.is_file() and "N 2" in ok.stdout and "ok" in ok.stdout and "FAILED" not in ok.stdout
    bad = run_tool("--weights", str(tmp_path / "missing.pth"), "--format", "onnx", "--output", str(output))
    assert bad.returncode != 0 and "missing.pth" in bad.stderr and "Traceback" not in bad.stderr
