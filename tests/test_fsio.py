"""Writes that lose nothing: a full disk or another OS error is one clear message, the previous file stays."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from reid.data.io import save_picture
from reid.utils import fsio
from reid.utils.checkpoint import atomic_save, load_checkpoint
from reid.utils.cli import run_cli
from reid.utils.errors import ReIDError
from reid.utils.fsio import (
    WriteError,
    atomic_write_text,
    describe_write_error,
    read_text_capped,
    remove_stale_temporaries,
)

ROOT = Path(__file__).resolve().parents[1]


def _said(fragment: str, printed: str) -> bool:
    """Whether the CLI printed ``fragment``; it wraps paragraphs at spaces and at the hyphens of paths."""
    return "".join(fragment.split()) in "".join(printed.split())


SAVE_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
import torch
from reid.utils.checkpoint import atomic_save
from reid.utils.cli import run_cli

path = sys.argv[1]
atomic_save({"model": {"w": torch.ones(10)}, "epoch": 1}, path)  # the last good checkpoint
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # so that a write past the limit fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))  # a full disk, as far as this process sees
run_cli(lambda: atomic_save({"model": {"w": torch.zeros(256 * 1024)}, "epoch": 2}, path,
                            note=f"The last good checkpoint is {path} (epoch 1)."))
"""


def test_file_size_limit_while_saving_a_checkpoint(tmp_path: Path) -> None:
    script, path = tmp_path / "save.py", tmp_path / "run" / "last.pth"
    script.write_text(SAVE_UNDER_FILE_SIZE_LIMIT)
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    message = result.stderr
    assert "Traceback" not in message and "inline_container" not in message and "unexpected pos" not in message
    assert _said(f"Cannot write {path}: the file is larger than allowed", message)
    assert _said("(EFBIG)", message) and _said("It needs about 1.0 MiB", message)
    assert _said(f"The previous last.pth is unchanged. The last good checkpoint is {path} (epoch 1).", message)
    previous = load_checkpoint(path)
    assert previous["epoch"] == 1 and torch.equal(previous["model"]["w"], torch.ones(10))
    assert os.listdir(path.parent) == ["last.pth"]  # the partial temporary file is gone


@pytest.fixture
def small_disk(tmp_path: Path):
    """A real 1 MiB tmpfs where the test runs as root and may mount one; skipped otherwise."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount_point)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def test_full_tmpfs_while_saving_a_checkpoint(small_disk: Path, capsys) -> None:
    path = small_disk / "last.pth"
    atomic_save({"model": {"w": torch.ones(10)}, "epoch": 1}, path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: atomic_save({"model": {"w": torch.zeros(512 * 1024)}, "epoch": 2}, path))  # 2 MiB
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert _said(f"Cannot write {path}: no space left on the device (ENOSPC).", message)
    assert _said("It needs about 2.0 MiB;", message) and _said(f"free on the filesystem of {small_disk}", message)
    assert _said("The previous last.pth is unchanged.", message) and "Traceback" not in message
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(small_disk) == ["last.pth"]
    atomic_write_text(small_disk / "results.json", "{}")  # the disk is usable again: the partial file was removed
    with pytest.raises(WriteError, match=r"results.json: no space left on the device \(ENOSPC\)"):
        atomic_write_text(small_disk / "results.json", "x" * (2 << 20))
    assert (small_disk / "results.json").read_text() == "{}"


def test_atomic_write_text_keeps_the_previous_file_on_error(tmp_path: Path, monkeypatch) -> None:
    path = atomic_write_text(tmp_path / "results.json", '{"mAP": 0.5}')
    assert path.read_text() == '{"mAP": 0.5}'

    def quota_exceeded(fd):
        raise OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))

    monkeypatch.setattr(os, "fsync", quota_exceeded)
    with pytest.raises(WriteError) as error:
        atomic_write_text(path, '{"mAP": 0.9}', note="Results are also in log.txt.")
    message = str(error.value)
    assert message.startswith(f"Cannot write {path}: your disk quota is exceeded (EDQUOT).")
    assert "(a quota can be smaller than the free space)" in message
    assert message.endswith("The previous results.json is unchanged. Results are also in log.txt.")
    assert error.value.__cause__ is None and error.value.__suppress_context__  # no chained traceback
    assert error.value.os_error.errno == errno.EDQUOT
    assert path.read_text() == '{"mAP": 0.5}' and os.listdir(tmp_path) == ["results.json"]


def test_torch_writer_failure_is_recognised(tmp_path: Path, monkeypatch) -> None:
    wrapped = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise wrapped
    except RuntimeError:
        pass
    assert "no space left on the device (ENOSPC)" in describe_write_error(wrapped, tmp_path / "a.pth")
    bare = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")  # errno lost
    monkeypatch.setattr(fsio, "free_bytes", lambda folder: 1000)
    assert "no space left on the device (ENOSPC)" in describe_write_error(bare, tmp_path / "a.pth", 10**6)
    unknown = describe_write_error(bare, tmp_path / "a.pth")  # no numbers to go by: said as it is
    assert unknown.startswith(f"Cannot write {tmp_path / 'a.pth'}: the write failed.") and "1000 B free" in unknown


@pytest.mark.parametrize("code, meaning", [(errno.EROFS, "the filesystem is mounted read-only (EROFS)"),
                                           (errno.EACCES, "permission denied (EACCES)"),
                                           (errno.EIO, "an input/output error")])
def test_other_os_errors_are_named(tmp_path: Path, code: int, meaning: str) -> None:
    message = describe_write_error(OSError(code, os.strerror(code)), tmp_path / "best.pth", 10**6)
    assert message.startswith(f"Cannot write {tmp_path / 'best.pth'}: {meaning}")
    assert "needs about" not in message  # space figures only where space is the problem


def test_unwritable_folder_becomes_a_write_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(WriteError, match=r"Cannot write .*file/sub/x.json: .*\(ENOTDIR\)"):
        atomic_write_text(blocker / "sub" / "x.json", "{}")


KILLED_MID_WRITE = """
import os, signal, sys
from reid.utils.fsio import atomic_write

def write(f):
    f.write(b"x" * 4096)
    f.flush()
    os.kill(os.getpid(), signal.SIGKILL)  # killed while the checkpoint is being written

atomic_write(sys.argv[1], write)
"""


def test_stale_temporary_of_a_killed_write_is_removed_and_nothing_else(tmp_path: Path) -> None:
    script, folder = tmp_path / "kill.py", tmp_path / "run"
    script.write_text(KILLED_MID_WRITE)
    folder.mkdir()
    (folder / "last.pth").write_bytes(b"previous")
    result = subprocess.run([sys.executable, str(script), str(folder / "last.pth")],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True)
    assert result.returncode == -9
    (stale,) = [name for name in os.listdir(folder) if name.endswith(".tmp")]
    assert stale.startswith(".last.pth.")
    keep = [".last.pth.short.tmp", "notes.tmp", ".hidden", "last.pth.abcdefgh.tmp", ".x.abcdefgh.tmp.bak"]
    for name in keep:
        (folder / name).write_text("keep me")
    (folder / ".dir.abcdefgh.tmp").mkdir()
    (folder / ".link.abcdefgh.tmp").symlink_to(folder / "last.pth")
    in_progress = folder / ".features.npz.q1w2e3r4.tmp"  # being written now by a command without the lock
    in_progress.write_bytes(b"partial")
    assert remove_stale_temporaries(folder) == []  # the killed write is seconds old: it could still be running
    old = time.time() - fsio.STALE_AFTER_SECONDS - 1
    os.utime(folder / stale, (old, old))
    assert remove_stale_temporaries(folder) == [folder / stale]
    assert sorted(os.listdir(folder)) == sorted([*keep, ".dir.abcdefgh.tmp", ".link.abcdefgh.tmp", "last.pth",
                                                 in_progress.name])
    assert (folder / "last.pth").read_bytes() == b"previous"
    assert remove_stale_temporaries(tmp_path / "missing") == []


def test_read_text_capped(tmp_path: Path) -> None:
    path = tmp_path / "config.yml"
    path.write_text("a: 1\n")
    assert read_text_capped(path, 100) == "a: 1\n"
    path.write_bytes(b"a" * 101)
    with pytest.raises(fsio.ReIDError, match=r"config.yml is 101 B, more than the 100 B a file may hold"):
        read_text_capped(path, 100)
    path.write_bytes(b"\xff\xfe")
    with pytest.raises(fsio.ReIDError, match="is not UTF-8 text"):
        read_text_capped(path, 100)


def test_failed_append_leaves_no_partial_line(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    fsio.append_text(path, '{"epoch": 1}\n')
    script = tmp_path / "append.py"
    script.write_text(
        "import resource, signal, sys\n"
        "from reid.utils.cli import run_cli\n"
        "from reid.utils.fsio import append_text\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))\n"
        "run_cli(lambda: append_text(sys.argv[1], '{\"epoch\": 2, \"pad\": \"' + 'x' * 8192 + '\"}\\n'))\n")
    result = subprocess.run([sys.executable, str(script), str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2 and _said(f"Cannot write {path}: the file is larger than allowed", result.stderr)
    assert path.read_text() == '{"epoch": 1}\n'  # cut back: no half record for a reader to choke on


PICTURES_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
import numpy as np
from matplotlib.figure import Figure
from reid.data.io import save_picture
from reid.evaluation.visualize import save_figure
from reid.utils.cli import run_cli

folder, which = Path(sys.argv[1]), sys.argv[2]
small = np.zeros((8, 8, 3), np.uint8)
save_picture(folder / "list.png", small)  # a good earlier picture
noise = np.random.default_rng(0).integers(0, 255, (400, 400, 3), dtype=np.uint8)  # ~480 KB as a PNG
figure = Figure(figsize=(8, 8))
figure.add_subplot(1, 1, 1).imshow(noise)
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
if which == "picture":
    run_cli(lambda: save_picture(folder / "list.png", noise, "ranked list"))
else:
    run_cli(lambda: save_figure(figure, folder / "cmc.png", dpi=100))
"""


@pytest.mark.parametrize("which", ["picture", "figure"])
def test_pictures_on_a_full_disk_are_one_message_and_keep_the_earlier_file(tmp_path: Path, which: str) -> None:
    # Ranked lists, triptychs, search results (save_picture) and plots (save_figure) are encoded in memory and
    # written atomically: a full disk says which file and why, with no traceback and no partial file left.
    script = tmp_path / "draw.py"
    script.write_text(PICTURES_UNDER_FILE_SIZE_LIMIT)
    result = subprocess.run([sys.executable, str(script), str(tmp_path), which], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 2, result.stderr
    name = "list.png" if which == "picture" else "cmc.png"
    assert "Traceback" not in result.stderr
    assert _said(f"Cannot write {tmp_path / name}: the file is larger than allowed", result.stderr)
    assert sorted(os.listdir(tmp_path)) == ["draw.py", "list.png"]  # no temporary left, the earlier picture kept
    assert (tmp_path / "list.png").stat().st_size < 1024


def test_a_picture_with_an_unknown_suffix_is_refused_before_writing(tmp_path: Path) -> None:
    with pytest.raises(ReIDError, match=r"attack triptych .*triptych\.xyz.*use a \.png or \.jpg name"):
        save_picture(tmp_path / "triptych.xyz", np.zeros((4, 4, 3), np.uint8), "attack triptych")
    assert list(tmp_path.iterdir()) == []


LOG_UNDER_FILE_SIZE_LIMIT = """
import resource, signal, sys
from reid.utils.logger import setup_logger

logger = setup_logger(sys.argv[1])
logger.info("first line, written")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
for i in range(100):
    logger.info(f"line {i:03d} " + "x" * 100)
print("still running", flush=True)
"""


def test_a_full_disk_under_log_txt_is_said_once_and_the_run_goes_on(tmp_path: Path) -> None:
    script = tmp_path / "log.py"
    script.write_text(LOG_UNDER_FILE_SIZE_LIMIT)
    folder = tmp_path / "run"
    result = subprocess.run([sys.executable, str(script), str(folder)], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr and "Logging error" not in result.stderr
    assert result.stderr.count(f"Cannot write {folder / 'log.txt'}: the file is larger than allowed") == 1
    assert "Log lines go to the console only from now on." in result.stderr
    assert "line 099" in result.stdout and result.stdout.rstrip().endswith("still running")  # the console kept all
    assert "first line, written" in (folder / "log.txt").read_text()
