"""One run per output folder: an exclusive ``flock`` on ``<folder>/.lock``, held for the whole run.

The kernel drops the lock when the holding process ends, however it ends (a crash, ``kill -9``, a power
cut of a network client), so a killed run never leaves a stale lock behind. The file records who holds
it (pid, host, command, start time) so that a refused run can say whom it waited for. The file itself
is never deleted: removing a lock file while another process opens it would let two runs hold locks on
two different files of one name.

Usage (only the process that writes, i.e. rank 0 under DDP, holds it)::

    with RunLock(cfg.OUTPUT_DIR, hold=comm.is_main_process()):
        remove_stale_temporaries(cfg.OUTPUT_DIR)
        ...  # the whole run
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from reid.utils.errors import ReIDError
from reid.utils.fsio import WriteError, describe_write_error

logger = logging.getLogger("reid")

LOCK_NAME = ".lock"
_INFO_WAIT_S = 1.0  # how long a refused run waits for a brand-new holder to finish writing who it is


class RunLockedError(ReIDError):
    """The output folder is locked by another run (exit code 2), or cannot be locked at all."""

    exit_code = 2


class _Held:
    """One process-wide hold of a folder: the open lock file and how many RunLocks share it."""

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path
        self.count = 1


_held: dict[tuple[int, int], _Held] = {}  # (st_dev, st_ino) of the folder -> its hold in this process
_held_guard = threading.Lock()


def _forget_in_child() -> None:
    """A forked child (a DataLoader worker) closes its copies of the lock files without unlocking.

    flock belongs to the open file description the child shares with its parent: an unlock in the child
    would unlock the parent's run, and a copy kept open would keep the lock alive after the parent dies.
    """
    global _held_guard
    _held_guard = threading.Lock()
    for hold in _held.values():
        try:
            os.close(hold.fd)
        except OSError:
            pass
    _held.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class RunLock:
    """An exclusive lock on an output folder for the lifetime of a run; a context manager.

    ``hold=False`` makes it a no-op (pass ``comm.is_main_process()`` under DDP: rank 0 holds it for all).
    Re-entrant within one process: a second ``RunLock`` on the same folder (by any spelling of its path)
    shares the first one's hold, and the lock is released when the last of them is released. Another
    process is refused at once with a :class:`RunLockedError` naming the holder. On a filesystem without
    locks the run is refused too, unless ``allow_unlocked=True`` (then it only warns).
    """

    def __init__(self, folder: str | os.PathLike, hold: bool = True, allow_unlocked: bool = False) -> None:
        self.folder = Path(folder)
        self.hold = hold
        self.allow_unlocked = allow_unlocked
        self._key: tuple[int, int] | None = None

    @property
    def path(self) -> Path:
        return self.folder / LOCK_NAME

    @property
    def held(self) -> bool:
        return self._key is not None

    def acquire(self) -> RunLock:
        if not self.hold or self.held:
            return self
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            info = os.stat(self.folder)
        except OSError as exc:
            raise WriteError(describe_write_error(exc, self.path), self.path, exc) from None
        key = (info.st_dev, info.st_ino)
        with _held_guard:
            if key in _held:
                _held[key].count += 1
                self._key = key
                return self
            fd = self._open_locked()
            if fd is None:  # no locks on this filesystem, and the caller accepted running without one
                return self
            _held[key] = _Held(fd, self.path)
            self._key = key
        return self

    def release(self) -> None:
        if self._key is None:
            return
        with _held_guard:
            key, self._key = self._key, None
            hold = _held.get(key)
            if hold is None:  # forgotten in a forked child: the parent owns the lock
                return
            hold.count -= 1
            if hold.count > 0:
                return
            del _held[key]
            try:
                os.ftruncate(hold.fd, 0)  # an idle lock file names nobody
            except OSError:
                pass
            os.close(hold.fd)  # drops the flock

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def _open_locked(self) -> int | None:
        """The lock file's descriptor, locked and holding our record; None when running unlocked was accepted."""
        for _ in range(3):
            fd = self._open()
            try:
                locked = self._lock(fd)
                if locked is None:
                    os.close(fd)
                    return None
                if not locked:
                    raise RunLockedError(self._refusal(_read_holder(fd)))
                if _same_file(fd, self.path):
                    _write_holder(fd)
                    return fd
            except BaseException:
                os.close(fd)  # closing the only descriptor also drops a lock taken above
                raise
            os.close(fd)  # the file was deleted or replaced between open and lock: lock the one there now
        raise RunLockedError(f"Cannot lock output folder {self.folder}: {self.path} keeps being replaced. "
                             "Is another program deleting it?")

    def _open(self) -> int:
        try:
            # O_RDWR without O_TRUNC: the holder's record is only rewritten once the lock is ours
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise WriteError(describe_write_error(exc, self.path), self.path, exc) from None

    def _lock(self, fd: int) -> bool | None:
        """True once locked, False when another process holds it, None on a filesystem without locks when
        ``allow_unlocked`` accepts that (else a RunLockedError)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS):
                raise RunLockedError(f"Cannot lock {self.folder} ({self.path}): {exc.strerror or exc}.") from None
            message = (f"Cannot lock output folder {self.folder}: its filesystem does not support file locks "
                       f"({errno.errorcode.get(exc.errno, exc.errno)}; some network and FUSE mounts), so a second "
                       "run started on this folder could not be stopped from overwriting this one's checkpoints "
                       "and logs.")
            if not self.allow_unlocked:
                raise RunLockedError(f"{message} Use an OUTPUT_DIR on a local disk, or accept the risk "
                                     "explicitly (allow_unlocked).") from None
            logger.warning(f"{message} Running without a lock, as asked.")
            return None

    def _refusal(self, holder: dict) -> str:
        text = (f"Output folder {self.folder} is in use by another run: {describe_holder(holder)}. Two runs in one "
                "folder would overwrite each other's checkpoints, logs and metrics. Wait for that run to finish, stop "
                "it, or choose another OUTPUT_DIR.")
        pid, host = holder.get("pid"), holder.get("host")
        if isinstance(pid, int) and host == socket.gethostname() and not _pid_alive(pid):
            text += (f" (pid {pid} has ended, but a process it started still holds {self.path} open; "
                     f"`fuser -v {self.path}` names it.)")
        return text


def _same_file(fd: int, path: Path) -> bool:
    try:
        on_disk = os.stat(path)
    except OSError:
        return False
    mine = os.fstat(fd)
    return (mine.st_dev, mine.st_ino) == (on_disk.st_dev, on_disk.st_ino)


def _write_holder(fd: int) -> None:
    """Record who holds the lock; best effort (a full disk must not stop the run from locking its folder)."""
    started = datetime.now(timezone.utc).astimezone()
    record = {"pid": os.getpid(), "host": socket.gethostname(), "command": _command_line(),
              "started": started.isoformat(timespec="seconds"), "started_unix": round(started.timestamp(), 3)}
    data = (json.dumps(record) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError as exc:
        logger.warning(f"Could not record the run's pid in its lock file ({exc.strerror or exc}); the lock holds.")


def _read_holder(fd: int) -> dict:
    """The holder's record; a holder that has just locked may not have written it yet, so wait briefly."""
    deadline = time.monotonic() + _INFO_WAIT_S
    while True:
        try:
            raw = os.pread(fd, 65536, 0)
            record = json.loads(raw.decode("utf-8", "replace"))
            if isinstance(record, dict):
                return record
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return {}
        time.sleep(0.05)


def _command_line() -> str:
    argv = list(sys.argv) or ["python"]
    return " ".join([os.path.basename(sys.executable) or "python", *argv])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def describe_holder(record: dict) -> str:
    """'pid 1234 on host gpu1 (python tools/train.py ...), running since 2026-05-01T10:00:00+00:00 (for 12 min)'."""
    if not record.get("pid"):
        return "a process that has not recorded who it is (it may have started a moment ago)"
    host = record.get("host") or "an unknown host"
    text = f"pid {record['pid']} on host {host}"
    if record.get("command"):
        text += f" ({record['command']})"
    if record.get("started"):
        text += f", running since {record['started']}"
        if isinstance(record.get("started_unix"), (int, float)):
            text += f" ({_duration(time.time() - record['started_unix'])})"
    return text


def _duration(seconds: float) -> str:
    minutes = max(0, int(seconds // 60))
    if minutes < 1:
        return "for less than a minute"
    return f"for {minutes} min" if minutes < 120 else f"for {minutes // 60} h {minutes % 60} min"
