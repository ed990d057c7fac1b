"""The run lock: one run per output folder, refused runs name the holder, a killed holder leaves no stale lock."""

from __future__ import annotations

import errno
import fcntl
import json
import multiprocessing
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reid.utils.runlock import LOCK_NAME, RunLock, RunLockedError

ROOT = Path(__file__).resolve().parents[1]

HOLDER = """
import sys
from reid.utils.cli import run_cli
from reid.utils.runlock import RunLock

def main():
    with RunLock(sys.argv[1]):
        print("locked", flush=True)
        sys.stdin.read()  # hold the lock until the test closes our stdin (or kills us)

run_cli(main)
"""


def _python(script: Path, *args: str, **kwargs) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, str(script), *args], env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kwargs)


@pytest.fixture
def holder_script(tmp_path: Path) -> Path:
    script = tmp_path / "hold_run.py"
    script.write_text(HOLDER)
    return script


def _start_holder(script: Path, folder: Path) -> subprocess.Popen:
    holder = _python(script, str(folder))
    line = holder.stdout.readline()
    assert line.strip() == "locked", holder.stderr.read()
    return holder


def test_second_process_is_refused_with_exit_code_2_naming_the_holder(tmp_path: Path, holder_script: Path) -> None:
    folder = tmp_path / "run"
    holder = _start_holder(holder_script, folder)
    try:
        second = _python(holder_script, str(folder))
        out, err = second.communicate(timeout=60)
        assert second.returncode == 2
        assert out == ""  # it never got the lock
        squashed = "".join(err.split())  # the CLI wraps the paragraph, also at the hyphens of a path
        assert f"Outputfolder{folder}isinusebyanotherrun" in squashed
        assert f"pid{holder.pid}onhost" in squashed
        assert f"hold_run.py{folder})" in squashed  # the holder's command line
        assert "Traceback" not in err
        record = json.loads((folder / LOCK_NAME).read_text())
        assert record["pid"] == holder.pid  # the refused run did not overwrite the holder's record
    finally:
        holder.communicate(input="", timeout=60)
    assert holder.returncode == 0
    assert (folder / LOCK_NAME).read_text() == ""  # a clean release leaves a lock file that names nobody


def test_killed_holder_leaves_the_folder_lockable(tmp_path: Path, holder_script: Path) -> None:
    folder = tmp_path / "run"
    holder = _start_holder(holder_script, folder)
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=60)
    assert json.loads((folder / LOCK_NAME).read_text())["pid"] == holder.pid  # the dead holder's record remains
    with RunLock(folder) as lock:  # ...but the kernel released its lock
        assert lock.held
        assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_nested_locks_in_one_process_share_the_hold(tmp_path: Path) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    (tmp_path / "alias").symlink_to(folder)
    outer, inner = RunLock(folder), RunLock(tmp_path / "alias")  # one folder, two spellings
    with outer:
        with inner:
            assert inner.held and _locked_elsewhere(folder)
        assert _locked_elsewhere(folder)  # the outer hold remains after the inner release
    assert not _locked_elsewhere(folder)


def test_only_the_holding_rank_locks(tmp_path: Path) -> None:
    with RunLock(tmp_path / "run", hold=False) as lock:
        assert not lock.held
        assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_filesystem_without_locks_is_refused_unless_accepted(tmp_path: Path, monkeypatch, caplog) -> None:
    def no_locks(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(RunLockedError, match=r"filesystem does not support file locks \(ENOLCK"):
        RunLock(tmp_path).acquire()
    with caplog.at_level("WARNING", logger="reid"), RunLock(tmp_path, allow_unlocked=True) as lock:
        assert not lock.held
    assert "Running without a lock, as asked" in caplog.text


def _hold_until_told(conn) -> None:
    conn.send("started")
    conn.recv()


def test_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A DataLoader-style forked worker must neither unlock the parent's run nor keep its lock alive."""
    folder = tmp_path / "run"
    lock = RunLock(folder).acquire()
    parent_end, child_end = multiprocessing.Pipe()
    child = multiprocessing.get_context("fork").Process(target=_hold_until_told, args=(child_end,))
    child.start()
    try:
        assert parent_end.recv() == "started"
        assert _locked_elsewhere(folder)  # the child's start did not unlock the parent
        lock.release()
        assert not _locked_elsewhere(folder)  # released although the forked child is still alive
    finally:
        parent_end.send("stop")
        child.join(timeout=60)


def _locked_elsewhere(folder: Path) -> bool:
    """Whether another open file description (as another process would have) finds the folder locked."""
    fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # also drops a lock taken here
    return False
