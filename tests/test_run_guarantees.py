"""What a run guarantees, end to end through the tools (README, "What a run guarantees"): one run per folder,
datasets that change under a run are named, batches that would make the triplet loss 0 are refused, a full
disk is one message, a resumed run from scratch does not repeat metrics, stale temporaries are removed."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reid.config import load_config
from reid.engine.run import RunFolder
from reid.engine.training import train
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import ConfigError, ReIDError
from tests.conftest import tiny_train_opts

REPO = Path(__file__).resolve().parents[1]


def tool(name: str, *args: object, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, str(REPO / "tools" / f"{name}.py"), *map(str, args)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


@pytest.mark.slow
def test_a_second_run_on_a_folder_in_use_stops_and_the_first_keeps_its_weights(synthetic_root, tmp_path):
    out = tmp_path / "run"
    opts = ["--config", "bot_synthetic.yml",
            *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "3", "DATASETS.TEST", "synthetic_market")]
    first = tool("train", *opts)
    lock = out / ".lock"
    deadline = time.time() + 120
    while not (lock.is_file() and lock.read_text().strip()) and first.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    second = tool("train", "--overwrite", *opts)  # even --overwrite may not take a folder in use
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2, err
    assert f"pid {first.pid}" in err and "tools/train.py" in err and str(out) in err.replace("\n  ", " ")
    assert "Traceback" not in err
    _, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err[-2000:]
    state = load_checkpoint(out / "last.pth")
    assert state["epoch"] == 3 and state["config"]["SOLVER"]["MAX_EPOCHS"] == 3  # the first run's, complete
    again = tool("train", "--resume", *opts)  # the lock died with its process: the folder is free again
    assert again.wait(timeout=300) == 0


@pytest.fixture(scope="module")
def trained(synthetic_root, tmp_path_factory) -> Path:
    """A tiny run of one epoch on a private copy of the synthetic data (tests change its gallery)."""
    import shutil

    root = tmp_path_factory.mktemp("data")
    shutil.copytree(synthetic_root / "synthetic_market", root / "synthetic_market")
    out = tmp_path_factory.mktemp("run")
    train(load_config("bot_synthetic.yml", tiny_train_opts(root, out, "SOLVER.MAX_EPOCHS", "1",
                                                           "DATASETS.TEST", "synthetic_market")))
    return out


def test_results_record_what_was_evaluated(trained):
    results = json.loads((trained / "results.json").read_text())["results"]["synthetic_market"]
    record = json.loads((trained / "datasets.json").read_text())["synthetic_market"]
    assert results["images"]["query"] == record["query"]["images"] > 0
    assert results["fingerprints"]["gallery"] == record["gallery"]
    assert load_checkpoint(trained / "last.pth")["datasets"] == json.loads((trained / "datasets.json").read_text())


@pytest.mark.slow
def test_a_gallery_changed_since_training_stops_the_evaluation(trained, tmp_path):
    cfg = load_config(trained / "config.yaml")
    gallery = Path(cfg.DATASETS.ROOT) / "synthetic_market" / "bounding_box_test"
    removed = [p for p in sorted(gallery.glob("*.jpg")) if not p.name.startswith("-1")][::2]  # junk is not counted
    for path in removed:
        path.unlink()
    proc = tool("test", "--weights", trained / "last.pth", "OUTPUT_DIR", tmp_path / "t", "DATALOADER.NUM_WORKERS", "0")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "Traceback" not in err
    message = err.replace("\n  ", " ")
    assert "synthetic_market" in message and "gallery:" in message and "DATASETS.ALLOW_CHANGES" in message
    # Accepted explicitly, it evaluates the changed set and records its counts.
    proc = tool("test", "--weights", trained / "last.pth", "OUTPUT_DIR", tmp_path / "t",
                "DATALOADER.NUM_WORKERS", "0", "DATASETS.ALLOW_CHANGES", "True")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    row = json.loads((tmp_path / "t" / "results.json").read_text())["results"]["synthetic_market"]
    before = json.loads((trained / "datasets.json").read_text())["synthetic_market"]["gallery"]["images"]
    assert row["images"]["gallery"] == before - len(removed)


def test_one_identity_per_batch_is_refused_with_the_triplet_loss():
    with pytest.raises(ConfigError, match=r"SOLVER\.IMS_PER_BATCH \(16\) / DATALOADER\.NUM_INSTANCE \(16\)"):
        load_config(None, ["SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "16"])
    load_config(None, ["SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_INSTANCE", "16", "MODEL.LOSSES", "('ce',)"])


def test_num_instance_above_the_median_says_how_batches_are_filled(synthetic_root, tmp_path, caplog):
    from reid.data import build_dataset
    from reid.engine.training import note_sampler_filling

    cfg = load_config(None, ["DATALOADER.NUM_INSTANCE", "8", "SOLVER.IMS_PER_BATCH", "64"])
    with caplog.at_level("WARNING", logger="reid.engine"):
        note_sampler_filling(cfg, {"synthetic_market": build_dataset("synthetic_market", synthetic_root, False)})
    assert "DATALOADER.NUM_INSTANCE is 8" in caplog.text and "repeated images" in caplog.text


def test_a_folder_with_only_a_log_or_config_holds_a_run(tmp_path):
    for name in ("config.yaml", "log.txt", "metrics.jsonl"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).write_text("x")
        with pytest.raises(ReIDError, match=name):
            RunFolder(folder).check_start(resume=False, overwrite=False)
        RunFolder(folder).check_start(resume=True, overwrite=False)


@pytest.mark.slow
def test_resume_from_scratch_keeps_no_metrics_of_the_killed_run_and_removes_temporaries(synthetic_root, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(json.dumps({"type": "train", "epoch": 1, "iter": 2, "loss": 9.0}) + "\n")
    stale = out / ".last.pth.a1b2c3d4.tmp"  # what a kill during atomic_save leaves, minutes ago
    stale.write_bytes(b"\0" * 1000)
    os.utime(stale, (time.time() - 600, time.time() - 600))
    opts = tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "synthetic_market")
    train(load_config("bot_synthetic.yml", opts), resume=True)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    iterations = [r["iter"] for r in records if r["type"] == "train"]
    assert len(iterations) == len(set(iterations)) and all(r.get("loss") != 9.0 for r in records)
    assert any(p.name.startswith("metrics.") and p.name != "metrics.jsonl" for p in out.iterdir())  # rotated
    assert not stale.exists()


@pytest.mark.slow
def test_a_full_disk_while_saving_is_one_message(synthetic_root, tmp_path):
    """A file-size limit (as a full disk would) on the training process: the first checkpoint cannot be
    written. The tool says which file and why, exits 2, and leaves no temporary file."""
    out = tmp_path / "run"

    def limit_file_size() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 * 2**20, 2 * 2**20))

    proc = tool("train", "--config", "bot_synthetic.yml",
                *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "synthetic_market"),
                preexec_fn=limit_file_size)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2, err[-2000:]
    message = err.replace("\n  ", " ")
    assert "last.pth" in message and "EFBIG" in message and "Traceback" not in err
    assert not list(out.glob(".*.tmp")) and not (out / "last.pth").exists()
    assert "inline_container" not in err  # the message is ours, not torch's "unexpected pos"


def test_ctrl_c_says_which_checkpoint_holds_the_work_and_how_to_continue(synthetic_root, tmp_path, monkeypatch,
                                                                         capsys):
    from reid.engine.hooks import Checkpointer
    from reid.utils.cli import run_cli

    save = Checkpointer.after_epoch

    def interrupted_after_the_first_checkpoint(self):
        save(self)
        raise KeyboardInterrupt

    monkeypatch.setattr(Checkpointer, "after_epoch", interrupted_after_the_first_checkpoint)
    out = tmp_path / "run"
    cfg = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, out, "DATASETS.TEST", "synthetic_market"))
    monkeypatch.setattr(sys, "argv", ["tools/train.py", "--config", "bot_synthetic.yml", "SOLVER.MAX_EPOCHS", "2"])
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train(cfg))
    assert exit_info.value.code == 130
    err = " ".join(capsys.readouterr().err.split())
    assert f"{out / 'last.pth'}" in err and "epoch 1" in err
    assert "python tools/train.py --resume --config bot_synthetic.yml SOLVER.MAX_EPOCHS 2" in err


@pytest.fixture
def locked_folder(tmp_path):
    """A folder whose run lock another process holds (as a running command would) until the test ends."""
    from tests.test_runlock import HOLDER, _python

    folder, script = tmp_path / "busy", tmp_path / "hold_run.py"
    script.write_text(HOLDER)
    holder = _python(script, str(folder))
    assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
    yield folder, holder.pid
    holder.communicate(input="", timeout=60)


def test_every_command_that_writes_a_run_folder_is_refused_on_a_locked_one(locked_folder, synthetic_root, tmp_path):
    # tools/test.py, tools/attack.py, tools/study.py and an export into a run's folder take the lock before they
    # read or write anything: the missing weights below are never opened.
    from reid.engine.testing import test as run_test
    from reid.experiments.attack import attack
    from reid.experiments.study import run_study
    from reid.export import export_model
    from reid.utils.runlock import RunLockedError
    from tests.test_study import one_cell_study

    folder, pid = locked_folder
    cfg = load_config("bot_synthetic.yml", ["OUTPUT_DIR", str(folder), "DATASETS.ROOT", str(synthetic_root)])
    missing = tmp_path / "never_read.pth"
    (folder / "config.yaml").write_text("")  # the folder holds a run: an export into it takes its lock
    commands = {
        "test": lambda: run_test(cfg, missing),
        "attack": lambda: attack(cfg, missing, ["fgsm"], [2], ["feature"], steps=1),
        "study": lambda: run_study(one_cell_study(tmp_path, synthetic_root, output_dir=str(folder))),
        "export": lambda: export_model(missing, folder / "model.onnx", fmt="onnx"),
    }
    for name, command in commands.items():
        with pytest.raises(RunLockedError) as refused:
            command()
        assert refused.value.exit_code == 2, name
        assert f"Output folder {folder} is in use by another run" in str(refused.value), name
        assert f"pid {pid}" in str(refused.value), name
    assert not (folder / "model.onnx").exists() and not list(folder.glob("*.json"))


def test_lock_output_is_held_by_rank_0_only_and_clears_stale_temporaries(tmp_path, monkeypatch):
    from reid.engine.run import lock_output

    folder = tmp_path / "run"
    folder.mkdir()
    stale = folder / ".model.onnx.export__.tmp"  # what a killed export leaves, minutes ago
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 600, time.time() - 600))
    monkeypatch.setenv("RANK", "1")
    with lock_output(folder) as lock:
        assert not lock.held and stale.exists()  # another rank neither locks nor touches rank 0's files
    monkeypatch.setenv("RANK", "0")
    with lock_output(folder) as lock:
        assert lock.held and not stale.exists()
