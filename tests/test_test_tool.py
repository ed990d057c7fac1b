"""tools/test.py: one model evaluated on several domains, results.json, pictures, fast failures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from reid.config import config_to_dict, load_config
from reid.engine.testing import test as run_test
from reid.modeling import build_model
from reid.utils.checkpoint import atomic_save
from tests.conftest import tiny_train_opts

REPO = Path(__file__).resolve().parents[1]


# The synthetic training split has 16 identities; the checkpoint's classifier has another number, so
# loading it for testing shows that the classifier is not needed.
OTHER_NUM_IDS = 5


@pytest.fixture
def checkpoint(synthetic_root, tmp_path):
    """A random-init model saved like a training checkpoint (classifier of OTHER_NUM_IDS identities)."""
    cfg = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "train"))
    path = tmp_path / "model.pth"
    atomic_save({"model": build_model(cfg, num_classes=OTHER_NUM_IDS).state_dict(), "config": config_to_dict(cfg)},
                path)
    return path


def test_cross_domain_results_and_pictures(synthetic_root, tmp_path, checkpoint):
    out = tmp_path / "eval"
    cfg = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, out, "TEST.RERANK", "True"))
    table = run_test(cfg, checkpoint, vis=2)
    saved = json.loads((out / "results.json").read_text())["results"]
    assert set(saved) == set(table) == {"synthetic_market", "synthetic_duke"}
    for name, row in saved.items():
        assert {"R1", "R5", "R10", "mAP", "mINP", "cmc", "rerank"} <= set(row)
        assert row["R1"] <= row["R5"] <= row["R10"] and len(row["cmc"]) == cfg.TEST.MAX_RANK
        plot = cv2.imread(str(out / f"cmc_{name}.png"))
        assert plot is not None and plot.shape[0] > 100
        lists = sorted((out / "ranked_lists" / name).iterdir())
        assert len(lists) == 2 and all(cv2.imread(str(p)) is not None for p in lists)
    assert (out / "test_config.yaml").is_file() and not (out / "config.yaml").exists()


def test_cli_missing_target_dataset_fails_fast(synthetic_root, tmp_path, checkpoint):
    cmd = [sys.executable, str(REPO / "tools" / "test.py"), "--weights", str(checkpoint),
           "DATASETS.ROOT", str(synthetic_root), "OUTPUT_DIR", str(tmp_path / "x"),
           "DATASETS.TEST", "('synthetic_market', 'dukemtmc')"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "DukeMTMC-reID" in proc.stderr and "Traceback" not in proc.stderr
    assert "datasets/README.md" in proc.stderr


def test_checkpoint_of_another_architecture_is_refused(synthetic_root, tmp_path, checkpoint):
    cfg = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "x", "MODEL.BACKBONE",
                                                           "resnet34"))
    from reid.utils.errors import CheckpointError

    with pytest.raises(CheckpointError, match="do not match the config"):
        run_test(cfg, checkpoint)


@pytest.mark.slow  # a fresh interpreter importing torch, torchvision, OpenCV and matplotlib takes a few seconds
def test_cli_evaluates_both_domains_and_writes_results(tmp_path, checkpoint):
    # tools/test.py as a command: the config stored in the checkpoint (synthetic market and duke, the
    # tiny data root) plus overrides; results.json holds both targets. Smaller images keep it fast; the
    # in-process test above covers re-ranking and pictures.
    out = tmp_path / "cli"
    cmd = [sys.executable, str(REPO / "tools" / "test.py"), "--weights", str(checkpoint), "OUTPUT_DIR", str(out),
           "INPUT.SIZE_TEST", "(32, 16)", "TEST.MAX_RANK", "10"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = json.loads((out / "results.json").read_text())
    assert saved["weights"] == str(checkpoint)
    assert set(saved["results"]) == {"synthetic_market", "synthetic_duke"}
    for row in saved["results"].values():
        assert 0 <= row["mINP"] <= row["mAP"] <= 1 and 0 <= row["R1"] <= row["R5"] <= row["R10"] <= 1
        assert len(row["cmc"]) == 10 and "rerank" not in row
    assert (out / "cmc_synthetic_market.png").is_file() and (out / "cmc_synthetic_duke.png").is_file()
    assert saved["units"].startswith("metrics are fractions in [0, 1]")
    printed = proc.stdout + proc.stderr
    assert f"Wrote the CMC plot {out / 'cmc_synthetic_market.png'}" in printed  # the user is told where it went
    assert f"Wrote {out / 'report.html'} (open it in a browser)" in printed
    page = (out / "report.html").read_text()
    assert "synthetic_market" in page and "synthetic_duke" in page and "data:image/png;base64," in page


def test_checkpoint_without_config_needs_config(tmp_path, checkpoint):
    from reid.engine.testing import config_and_weights
    from reid.utils.checkpoint import load_checkpoint
    from reid.utils.errors import CheckpointError

    bare = tmp_path / "bare.pth"
    atomic_save({"model": load_checkpoint(checkpoint)["model"]}, bare)
    with pytest.raises(CheckpointError, match="stores no config.*--config"):
        config_and_weights(None, str(bare), [])
    from reid.export import export_model
    from reid.utils.errors import ConfigError

    with pytest.raises(CheckpointError, match="bare.pth stores no config"):  # with overrides too
        export_model(bare, tmp_path / "m.onnx", "onnx", opts=["TEST.FLIP", "True"])
    cfg, _ = config_and_weights(None, str(checkpoint), ["TEST.FLIP", "True"])
    assert cfg.TEST.FLIP and cfg.MODEL.BACKBONE == load_checkpoint(checkpoint)["config"]["MODEL"]["BACKBONE"]
    with pytest.raises(ConfigError, match="TEST.FLIPP"):  # a bad override names the key, not the checkpoint
        config_and_weights(None, str(checkpoint), ["TEST.FLIPP", "True"])


def test_a_config_that_changes_the_features_is_warned_about(synthetic_root, tmp_path, checkpoint, caplog):
    from reid.modeling import load_model

    same = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "train"))
    with caplog.at_level("WARNING", logger="reid.engine"):
        load_model(checkpoint, same)
    assert not caplog.records
    other = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "train", "MODEL.LAST_STRIDE",
                                                             "2", "INPUT.SIZE_TEST", "(128, 64)"))
    with caplog.at_level("WARNING", logger="reid.engine"):
        load_model(checkpoint, other)  # the tensors fit: it loads, with a warning
    (record,) = caplog.records
    assert "model.pth" in record.message and "MODEL.LAST_STRIDE 1 -> 2" in record.message
    assert "INPUT.SIZE_TEST" in record.message and "-> [128, 64]" in record.message


def test_an_override_repairs_a_stored_value_this_version_refuses(tmp_path, checkpoint):
    from reid.modeling import load_model
    from reid.engine.testing import config_and_weights
    from reid.utils.checkpoint import load_checkpoint
    from reid.utils.errors import CheckpointError

    state = load_checkpoint(checkpoint)
    state["config"]["TEST"]["ATTACK"]["EPS"] = [-1.0, 2.0]  # e.g. written by a version that accepted it
    old = tmp_path / "old.pth"
    atomic_save(state, old)
    with pytest.raises(CheckpointError, match="old.pth is not valid for this version.*Override the key"):
        load_model(old)
    cfg, _ = config_and_weights(None, str(old), ["TEST.ATTACK.EPS", "(2.0,)"])
    assert tuple(cfg.TEST.ATTACK.EPS) == (2.0,)
    load_model(old, cfg)
