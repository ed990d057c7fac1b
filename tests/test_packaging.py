"""Installed like a library: a wheel in a fresh virtual environment runs the commands from any folder, with
the shipped configs found by name; and a component of one's own is one file, trained from the command line
(the README's example, run as written)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

from tests.conftest import tiny_train_opts

REPO = Path(__file__).resolve().parents[1]


def run(cmd: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    # Without PYTHONPATH: the installed package must be found on its own, never the checkout's.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.fixture(scope="module")
def installed_venv(tmp_path_factory) -> Path:
    """A new venv with the wheel of this checkout installed (not editable); torch and the other dependencies
    come from the test's own environment through a .pth file, so nothing is downloaded."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"  # a copy, so building leaves no build/ or egg-info in the checkout
    top_level = {".git", ".venv", "output", "datasets", "build", "dist", ".pytest_cache"}

    def ignore(folder: str, names: list[str]) -> set[str]:
        skipped = {n for n in names if n == "__pycache__" or n.endswith(".egg-info")}
        return skipped | (top_level & set(names) if Path(folder) == REPO else set())

    shutil.copytree(REPO, source, symlinks=True, ignore=ignore)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "-w", work / "dist", source], cwd=work)
    wheel = next((work / "dist").glob("lfm_reid-*.whl"))
    env_dir = work / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    python = env_dir / "bin" / "python"
    site = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=work).stdout.strip()
    (Path(site) / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel], cwd=work)
    return env_dir


@pytest.mark.slow
def test_wheel_commands_run_from_any_folder(installed_venv, synthetic_root, tmp_path):
    bin_dir = installed_venv / "bin"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = run([bin_dir / "python", "-c", "import reid; print(reid.__file__)"], cwd=elsewhere).stdout
    assert str(installed_venv) in where and str(REPO) not in where  # the installed package, not the checkout

    out = tmp_path / "run"
    # A shipped config found by name, from a folder that has no configs/ and no tools/.
    run([bin_dir / "reid-train", "--config", "lfm_synthetic.yml",
         *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "synthetic_market")],
        cwd=elsewhere)
    assert (out / "last.pth").is_file() and (out / "results.json").is_file()
    run([bin_dir / "reid-test", "--weights", out / "last.pth", "OUTPUT_DIR", tmp_path / "test",
         "DATASETS.ROOT", synthetic_root, "DATALOADER.NUM_WORKERS", "0"], cwd=elsewhere)
    assert (tmp_path / "test" / "results.json").is_file()
    run([bin_dir / "reid-export", "--weights", out / "last.pth", "--format", "release", "--output",
         tmp_path / "model.pth"], cwd=elsewhere)
    assert (tmp_path / "model.pth").is_file()
    help_text = run([bin_dir / "reid-study", "--help"], cwd=elsewhere).stdout
    assert "usage: reid-study" in help_text


def readme_plugin_example() -> tuple[str, list[str]]:
    """The README's "add a regulariser" example: the file, and the training command that uses it."""
    text = (REPO / "README.md").read_text()
    section = text.split("<!-- plugin-example -->")[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    command = re.search(r"```bash\n(python tools/train\.py [^\n]*)\n```", section).group(1)
    return code, command.split()


def test_readme_plugin_example_is_one_file(tmp_path):
    code, _ = readme_plugin_example()
    assert len(code.strip().splitlines()) <= 25  # the promise: a complete example in about 20 lines


@pytest.mark.slow
def test_readme_plugin_example_trains_from_the_command_line(synthetic_root, tmp_path):
    code, command = readme_plugin_example()
    plugin = tmp_path / command[command.index("--plugin") + 1]
    plugin.write_text(code)
    assert command[:2] == ["python", "tools/train.py"]
    out = tmp_path / "run"
    run([sys.executable, REPO / "tools" / "train.py", *command[2:],
         *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "synthetic_market")],
        cwd=tmp_path)
    config = (out / "config.yaml").read_text()
    name = command[command.index("MODEL.REGULARIZER.NAME") + 1]
    assert f"NAME: {name}" in config  # the run used the plugin's regulariser, with its own config node
    # Without the plugin, its name is an unknown regulariser: the message says how to bring it in.
    done = subprocess.run([sys.executable, REPO / "tools" / "train.py", "--config", "lfm_synthetic.yml",
                           "MODEL.REGULARIZER.NAME", name], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "--plugin" in done.stderr
