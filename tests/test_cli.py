"""Entry-point plumbing: user errors print one paragraph and exit non-zero, never a traceback."""

from __future__ import annotations

import configparser
import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reid.config import load_config
from reid.engine.training import train
from reid.utils.cli import run_cli
from reid.utils.errors import ConfigError, DatasetError, ReIDError, summarize_exception


class _UnreadableImages(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int):
        raise DatasetError(f"Cannot read image /data/broken_{index}.jpg: the file is empty.")


def test_error_from_a_loader_worker_is_printed_without_its_traceback(capsys):
    def main() -> None:
        for _ in torch.utils.data.DataLoader(_UnreadableImages(), num_workers=1):
            pass

    with pytest.raises(SystemExit) as exit_info:
        run_cli(main)
    err = capsys.readouterr().err
    assert exit_info.value.code == DatasetError.exit_code
    assert "Cannot read image /data/broken_0.jpg" in err
    assert "Traceback" not in err and "worker" not in err


def test_a_table_under_the_message_keeps_its_lines(capsys):
    table = ["batch  max |diff|  min cosine", "    1    3.1e-02      0.9990", "    4    2.7e-02      0.9993"]

    def main() -> None:
        raise ReIDError("The exported model does not reproduce the PyTorch model, " * 3 + "\n" + "\n".join(table))

    with pytest.raises(SystemExit):
        run_cli(main)
    lines = capsys.readouterr().err.splitlines()
    assert lines[1].startswith("Error: The exported") and len(lines[1]) <= 107  # the paragraph is wrapped
    assert lines[-3:] == ["  " + row for row in table]  # the table is not


def test_unwritable_path_names_the_path(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")

    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: (blocker / "run").mkdir(parents=True))
    assert exit_info.value.code == 2  # an input error like any other
    assert str(blocker / "run") in capsys.readouterr().err


def test_options_after_overrides_are_named():
    with pytest.raises(ConfigError, match="--weights appears among the KEY VALUE overrides"):
        load_config(None, ["SOLVER.MAX_EPOCHS", "2", "--weights", "best.pth"])


@pytest.mark.parametrize("key, value", [("SOLVER.BASE_LR", "-1.0"), ("SOLVER.MAX_EPOCHS", "0"),
                                        ("TEST.IMS_PER_BATCH", "0"), ("DATALOADER.NUM_WORKERS", "-1"),
                                        ("TEST.ATTACK.EPS", "(-2.0, 4.0)")])
def test_out_of_range_values_are_refused(key, value):
    with pytest.raises(ConfigError, match=key):
        load_config(None, [key, value])


def test_missing_base_names_the_file_that_refers_to_it(tmp_path):
    child = tmp_path / "child.yml"
    child.write_text("_BASE_: nowhere.yml\n")
    with pytest.raises(ConfigError, match="child.yml inherits from a missing file"):
        load_config(child)


def test_training_refuses_to_replace_an_existing_run(tmp_path):
    (tmp_path / "best.pth").write_bytes(b"a trained model")
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ReIDError, match="--resume.*--overwrite"):
        train(cfg)
    assert (tmp_path / "best.pth").read_bytes() == b"a trained model"
    assert not (tmp_path / "config.yaml").exists()


def test_exception_summary_joins_a_header_with_its_first_detail():
    exc = RuntimeError('Error(s) in loading state_dict for ReIDModel:\n\tMissing key(s) in state_dict: "a".')
    expected = 'Error(s) in loading state_dict for ReIDModel: Missing key(s) in state_dict: "a".'
    assert summarize_exception(exc) == expected
    assert summarize_exception(EOFError()) == "EOFError"


def console_scripts() -> dict[str, str]:
    parser = configparser.ConfigParser()
    parser.read(Path(__file__).resolve().parents[1] / "setup.cfg")
    lines = parser["options.entry_points"]["console_scripts"].strip().splitlines()
    return dict(tuple(part.strip() for part in line.split("=")) for line in lines)


def test_every_console_script_is_a_package_function_that_its_tool_runs(monkeypatch, capsys):
    scripts = console_scripts()
    assert {"reid-train", "reid-test", "reid-export", "reid-extract", "reid-search", "reid-attack",
            "reid-study"} <= set(scripts)
    tools = Path(__file__).resolve().parents[1] / "tools"
    for command, target in scripts.items():
        name = command.removeprefix("reid-").replace("-", "_")
        assert target == f"reid.cli.{name}:entry", command  # a function of the installed package
        module = importlib.import_module(f"reid.cli.{name}")
        monkeypatch.setattr(sys, "argv", [f"/venv/bin/{command}", "--help"])
        with pytest.raises(SystemExit) as exit_info:
            module.entry()
        assert exit_info.value.code == 0, command
        assert f"usage: {command}" in capsys.readouterr().out, command  # that tool's own --help
        assert f"from reid.cli.{name} import entry" in (tools / f"{name}.py").read_text()  # one copy of each command


def test_installed_console_script_runs_from_anywhere(tmp_path):
    script = Path(sys.executable).parent / "reid-train"
    if not script.is_file():
        pytest.skip("the package is not installed in this environment (pip install -e .)")
    done = subprocess.run([str(script), "--help"], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Train a ReID model" in done.stdout


@pytest.mark.parametrize("tool", sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "tools").glob(
    "benchmark_*.py")))
def test_benchmark_tools_start(tool):
    """The benchmark scripts are not console scripts, so nothing else imports them: their --help at least runs
    (an import of a moved module fails here, not on the GPU machine)."""
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "tools" / f"{tool}.py"), "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_benchmarks_describe_the_machine_they_ran_on():
    import os

    from reid.utils.env import describe_machine

    described = describe_machine(torch.device("cpu"))
    assert described.endswith(f", {os.cpu_count()} cores, {torch.get_num_threads()} torch threads")
    assert not described.startswith(",")  # a CPU model (or "unknown CPU") comes first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given when CUDA is missing")
def test_benchmarks_asked_for_cuda_without_one_stop_with_one_line():
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, str(repo / "tools" / "benchmark_lfm.py"), "--device", "cuda"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--device is 'cuda' but no CUDA device is available; use --device cpu." in done.stderr
