"""Writing files so that nothing saved before is lost, and OS errors while writing as one clear message.

Every write goes to a temporary sibling ``.<name>.<random>.tmp`` that is renamed over the target once
complete, so a kill, a full disk or a quota leaves the previous file as it was. A failure becomes a
:class:`WriteError` naming the file, what the OS said (``ENOSPC``: no space left...), the bytes needed
and free where known, and a sentence from the caller (e.g. which checkpoint still holds the work).
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import IO, Callable

from reid.utils.errors import ReIDError

logger = logging.getLogger("reid")

TMP_SUFFIX = ".tmp"
# tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp") names: 8 characters from its alphabet in between.
_TMP_NAME = re.compile(r"^\.(?P<name>.+)\.[a-z0-9_]{8}\.tmp$")

_MEANINGS = {  # errno -> (what happened, what to do); os.strerror covers the rest
    errno.ENOSPC: ("no space left on the device", "Free space (e.g. old epoch_*.pth checkpoints) or write elsewhere."),
    errno.EDQUOT: ("your disk quota is exceeded", "Free space within your quota or write elsewhere."),
    errno.EFBIG: ("the file is larger than allowed (the shell's file-size limit, ulimit -f, or the "
                  "filesystem's maximum file size)", "Raise the limit or write elsewhere."),
    errno.EROFS: ("the filesystem is mounted read-only", "Write to another folder."),
    errno.EACCES: ("permission denied", "Write to a folder you own, or fix its permissions."),
    errno.EPERM: ("the operation is not permitted", "Write to a folder you own, or fix its permissions."),
    errno.EIO: ("an input/output error (a failing disk or a lost network mount)",
                "Check the disk (dmesg) or the network mount before writing there again."),
    errno.ESTALE: ("a stale network file handle (the folder was removed or the mount changed on the server)",
                   "Remount or write elsewhere."),
    errno.ENOENT: ("its folder no longer exists (removed while writing?)", "Recreate the folder or write elsewhere."),
    errno.ENAMETOOLONG: ("the file name is too long", "Use a shorter folder or file name."),
    errno.EMFILE: ("too many files are open in this process", "Raise the open-file limit (ulimit -n)."),
    errno.ENFILE: ("too many files are open on the system", "Retry when fewer files are open."),
}
_SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
# torch.save's zip writer turns a failed write into this RuntimeError; with a file object the OSError is
# its __context__, with a path only "unexpected pos" or "file write failed" remains.
_TORCH_WRITE_FAILURE = re.compile(r"inline_container\.cc|unexpected pos|file write failed|PytorchStreamWriter")


class WriteError(ReIDError):
    """A file could not be written (full disk, quota, read-only or lost filesystem, permissions...)."""

    def __init__(self, message: str, path: Path, os_error: OSError | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.os_error = os_error  # kept for callers and tests; never shown as a chained traceback


def find_os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``: itself, or one in its ``__cause__`` / ``__context__`` chain."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno is not None:
            return current
        current = current.__cause__ or current.__context__
    return None


def is_write_failure(exc: BaseException) -> bool:
    """True for an OSError, or a library error (torch.save's zip writer) that a failed write caused."""
    return find_os_error(exc) is not None or (isinstance(exc, RuntimeError) and bool(
        _TORCH_WRITE_FAILURE.search(str(exc))))


def describe_write_error(exc: BaseException, path: str | os.PathLike, bytes_needed: int | None = None,
                         note: str | None = None) -> str:
    """One paragraph: the file, what the OS said, bytes needed vs free where known, what to do, ``note``."""
    path = Path(path)
    os_error = find_os_error(exc)
    code = os_error.errno if os_error is not None else None
    free = free_bytes(path.parent)
    if code is None and free is not None and bytes_needed is not None and free < bytes_needed:
        code = errno.ENOSPC  # torch's writer dropped the errno, but the numbers speak
    if code is None:
        meaning, advice = "the write failed", "Check the disk and the folder, then retry."
        if free is not None:
            advice = f"The filesystem has {format_bytes(free)} free; check it and the folder, then retry."
    else:
        meaning, advice = _MEANINGS.get(code, (os.strerror(code).lower(), "Check the folder, then retry."))
        meaning = f"{meaning} ({errno.errorcode.get(code, code)})"
    parts = [f"Cannot write {path}: {meaning}."]
    if code in _SPACE_ERRNOS or code is None:
        space = []
        if bytes_needed is not None:
            space.append(f"it needs about {format_bytes(bytes_needed)}")
        if free is not None:
            space.append(f"{format_bytes(free)} free on the filesystem of {path.parent}")
        if space:
            quota = " (a quota can be smaller than the free space)" if code == errno.EDQUOT else ""
            sentence = f"{'; '.join(space)}{quota}."
            parts.append(sentence[0].upper() + sentence[1:])
    parts.append(advice)
    if note:
        parts.append(note.strip())
    return " ".join(parts)


def free_bytes(folder: str | os.PathLike) -> int | None:
    """Bytes available to this user on the filesystem holding ``folder`` (its nearest existing ancestor)."""
    folder = Path(folder)
    for candidate in (folder, *folder.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def format_bytes(count: int) -> str:
    """1536 -> '1.5 KiB'; exact bytes below 1 KiB."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None], bytes_needed: int | None = None,
                 note: str | None = None) -> Path:
    """Run ``write(file)`` on a temporary sibling of ``path``, fsync it, then rename it over ``path``.

    A failure removes the temporary file and leaves an existing ``path`` untouched; an OS error (or
    torch.save's wrapped one) becomes a :class:`WriteError` (see :func:`describe_write_error`) raised
    without a chained traceback. Anything else (a KeyboardInterrupt, a bug in ``write``) passes through
    unchanged, after the same clean-up.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TMP_SUFFIX, dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; follow the umask like open() would
        os.replace(tmp, path)
        tmp = None
        _fsync_folder(path.parent)  # the rename itself survives a power cut
    except BaseException as exc:
        if tmp is not None:
            _remove_quietly(Path(tmp))
        if isinstance(exc, Exception) and is_write_failure(exc):
            if path.exists():
                note = f"The previous {path.name} is unchanged. {note or ''}".strip()
            error = WriteError(describe_write_error(exc, path, bytes_needed, note), path, find_os_error(exc))
            raise error from None
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes, note: str | None = None) -> Path:
    """``data`` written to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda f: f.write(data), bytes_needed=len(data), note=note)


def atomic_write_text(path: str | os.PathLike, text: str, note: str | None = None) -> Path:
    """``text`` (UTF-8) written to ``path`` atomically: results.json, metrics summaries, config.yaml, CSVs."""
    return atomic_write_bytes(path, text.encode("utf-8"), note=note)


def append_text(path: str | os.PathLike, text: str, note: str | None = None) -> Path:
    """Append ``text`` (e.g. one metrics.jsonl line) to ``path``; a failed append leaves no partial line.

    On an OS error the file is cut back to its previous length (best effort) and a :class:`WriteError` is
    raised, so a reader never meets half a JSON record written by a full disk.
    """
    path = Path(path)
    data = text.encode("utf-8")
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise WriteError(describe_write_error(exc, path, len(data), note), path, exc) from None
    try:
        previous_size = os.fstat(fd).st_size
        written = 0
        while written < len(data):  # unbuffered: nothing is left to be flushed (half a line) at close
            written += os.write(fd, data[written:])
    except OSError as exc:
        _truncate_quietly(fd, previous_size)
        raise WriteError(describe_write_error(exc, path, len(data), note), path, exc) from None
    finally:
        os.close(fd)
    return path


def _truncate_quietly(fd: int, size: int) -> None:
    try:
        os.ftruncate(fd, size)
    except OSError:
        pass


#: A temporary file younger than this may belong to a write in progress by a command that does not lock the
#: folder (extract.py's features, search.py's picture, plot_cmc's plots written into a run's folder): kept.
STALE_AFTER_SECONDS = 120


def remove_stale_temporaries(folder: str | os.PathLike, min_age: float = STALE_AFTER_SECONDS) -> list[Path]:
    """Remove the ``.<name>.<8 chars>.tmp`` files a killed :func:`atomic_write` left directly in ``folder``.

    Only regular files of exactly that pattern, untouched for ``min_age`` seconds, go (never links, folders or
    other files); call it once the folder's run lock is held, so that no locked command is mid-write there.
    Returns what was removed.
    """
    folder = Path(folder)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except FileNotFoundError:
        return removed
    for entry in entries:
        if not _TMP_NAME.match(entry.name) or entry.is_symlink() or not entry.is_file(follow_symlinks=False):
            continue
        stat = entry.stat(follow_symlinks=False)
        if time.time() - stat.st_mtime < min_age:
            continue
        size = stat.st_size
        try:
            os.unlink(entry.path)
        except FileNotFoundError:
            continue
        removed.append(Path(entry.path))
        logger.info(f"Removed {entry.path} ({format_bytes(size)}), a partial write left by an interrupted run.")
    return sorted(removed)


def read_text_capped(path: str | os.PathLike, max_bytes: int, what: str = "file",
                     error: type[ReIDError] = ReIDError) -> str:
    """The UTF-8 text of ``path``, or ``error`` when it is larger than ``max_bytes`` (checked before reading)."""
    path = Path(path)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > max_bytes:
            raise error(f"{what.capitalize()} {path} is {format_bytes(size)}, more than the {format_bytes(max_bytes)} "
                        f"a {what} may hold: is it the right file?")
        data = f.read(max_bytes + 1)  # a file still growing is cut at the cap too
    if len(data) > max_bytes:
        raise error(f"{what.capitalize()} {path} grew beyond {format_bytes(max_bytes)} while being read.")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what.capitalize()} {path} is not UTF-8 text (byte {exc.start} cannot be decoded): "
                    "is it the right file?") from None


def _remove_quietly(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:  # e.g. the filesystem went read-only: the stale-file sweep removes it later
        pass


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a folder; the data itself is already synced
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
