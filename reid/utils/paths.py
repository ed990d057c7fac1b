"""Why a path cannot be used, in words: missing, a broken or looping symbolic link, the wrong kind, no access.

``os.path.exists`` says False for a missing file, a broken link and a link loop alike; a user who is told
"does not exist" about a link that is right there looks in the wrong place. :func:`describe_path_problem`
tells them apart (one ``stat``, more only when something is wrong).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Literal, NamedTuple

ProblemKind = Literal["missing", "broken_link", "link_loop", "not_a_file", "not_a_folder", "no_access", "error"]
MAX_LINK_HOPS = 40  # Linux's own limit (MAXSYMLINKS) before it reports ELOOP


class PathProblem(NamedTuple):
    """What is wrong with a path: ``kind`` for the caller's advice, ``text`` a clause that starts with the path."""

    kind: ProblemKind
    text: str


def describe_path_problem(path: str | os.PathLike,
                          expect: Literal["file", "folder"] | None = None) -> PathProblem | None:
    """None when ``path`` exists (and is a regular file / a folder, when ``expect`` says so), else the problem.

    Examples of ``text``: "data/x.jpg does not exist", "data/x.jpg is a broken symbolic link to /mnt/a/x.jpg
    (the target does not exist)", "data/x.jpg is a symbolic link loop (data/x.jpg -> y.jpg -> x.jpg)",
    "data/market1501 (on the way to data/market1501/query) is a broken symbolic link to /gone".
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        return _missing_problem(path, exc)
    if expect == "file" and not stat.S_ISREG(info.st_mode):
        what = "a folder" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return PathProblem("not_a_file", f"{path} is {what}, not a file")
    if expect == "folder" and not stat.S_ISDIR(info.st_mode):
        return PathProblem("not_a_folder", f"{path} is a file, not a folder")
    return None


def _missing_problem(path: Path, exc: OSError) -> PathProblem:
    if exc.errno == errno.ELOOP:
        culprit = _first_component(path, lambda p: _stat_errno(p) == errno.ELOOP) or path
        where = "" if culprit == path else f" (on the way to {path})"
        return PathProblem("link_loop", f"{culprit}{where} is a symbolic link loop ({link_chain(culprit)})")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR):
        broken = _first_component(path, lambda p: os.path.islink(p) and not os.path.exists(p))
        if broken is not None:
            where = "" if broken == path else f" (on the way to {path})"
            return PathProblem("broken_link", f"{broken}{where} is a broken symbolic link to {os.readlink(broken)} "
                                              "(the target does not exist)")
        if exc.errno == errno.ENOTDIR:
            return PathProblem("missing", f"{path} does not exist (a part of the path is a file, not a folder)")
        return PathProblem("missing", f"{path} does not exist")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return PathProblem("no_access", f"{path} cannot be accessed (permission denied on it or on a folder above it)")
    return PathProblem("error", f"{path} cannot be accessed: {exc.strerror or exc}")


def _stat_errno(path: Path) -> int | None:
    try:
        os.stat(path)
    except OSError as exc:
        return exc.errno
    return None


def _first_component(path: Path, matches) -> Path | None:
    """The shortest prefix of ``path`` (from its first component down to itself) for which ``matches`` holds."""
    parts = path.parts
    for end in range(1, len(parts) + 1):
        prefix = Path(*parts[:end])
        if matches(prefix):
            return prefix
    return None


def link_chain(path: str | os.PathLike, max_hops: int = MAX_LINK_HOPS) -> str:
    """"a -> b -> a": the targets a symbolic link leads through, as written in the links, until one repeats."""
    current = Path(path)
    shown, seen = [str(current)], set()
    for _ in range(max_hops):
        if not current.is_symlink():
            break
        key = os.path.abspath(current)
        if key in seen:
            break
        seen.add(key)
        target = os.readlink(current)
        shown.append(target)
        current = current.parent / target
    else:
        shown.append("...")
    return " -> ".join(shown)
