"""Finding images in a folder tree and reading identity/camera from dataset-style file names."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from reid.data.datasets.base import IMAGE_SUFFIXES, describe_folder
from reid.utils.errors import DatasetError, ReIDError
from reid.utils.paths import describe_path_problem

UNKNOWN = -1  # pid / camid of a file name that follows no known convention
MAX_SCANNED_FILES = 1_000_000  # issue 14: a larger tree is a wrong folder (a disk, a home) until said otherwise

# Patterns capturing pid and 1-based camera, tried in order on the file name.
NAME_CONVENTIONS = (
    re.compile(r"^(-?\d+)_c(\d+)s\d+_"),  # Market-1501: 0002_c1s1_000451_03.jpg
    re.compile(r"^(\d+)_c(\d+)_f\d+"),  # DukeMTMC-reID: 0001_c2_f0046182.jpg
    re.compile(r"^(\d+)_\d+_(\d+)_"),  # MSMT17: 0000_000_01_0303morning_0015_0.jpg
)


@dataclass
class ImageScan:
    """What a folder tree holds: its image files (sorted) and the other files, which are not read."""

    images: list[Path] = field(default_factory=list)
    others: list[Path] = field(default_factory=list)  # files whose suffix is not an image's, sorted


def scan_images(folder: str | os.PathLike, max_files: int = MAX_SCANNED_FILES) -> ImageScan:
    """Every .jpg/.jpeg/.png/.bmp file under ``folder`` (recursively, case-insensitive), and the other files.

    Hidden files and folders are ignored, and linked folders are not entered. A missing folder, one without
    images, a broken or looping symbolic link among the images, or a tree of more than ``max_files`` files
    (a wrong folder, such as a whole disk: the walk stops there) is a DatasetError that says what was found.
    """
    folder = Path(folder)
    problem = describe_path_problem(folder, expect="folder")
    if problem is not None:
        raise DatasetError(f"Image folder {problem.text}.")
    scan = ImageScan()
    bad_links: list[str] = []
    pending = [folder]
    while pending:
        directory = pending.pop()
        try:
            _scan_directory(directory, folder, scan, bad_links, pending, max_files)
        except OSError as exc:
            raise DatasetError(f"Cannot list {directory} (inside image folder {folder}): "
                               f"{exc.strerror or exc}.") from None
    if bad_links:
        bad_links.sort()
        shown = "; ".join(bad_links[:3]) + ("; ..." if len(bad_links) > 3 else "")
        raise DatasetError(f"Image folder {folder} holds {len(bad_links)} image link(s) that lead nowhere: {shown}. "
                           "Fix or remove them.")
    if not scan.images:
        raise DatasetError(
            f"Image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively): "
            f"{describe_folder(folder)}."
        )
    scan.images.sort()
    scan.others.sort()
    return scan


def _scan_directory(directory: Path, folder: Path, scan: ImageScan, bad_links: list[str], pending: list[Path],
                    max_files: int) -> None:
    """One folder of :func:`scan_images`, counted while it is listed (a folder of millions is not read in full)."""
    with os.scandir(directory) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                pending.append(Path(entry.path))
                continue
            is_image = entry.name.lower().endswith(IMAGE_SUFFIXES)
            if entry.is_symlink():
                link_problem = describe_path_problem(entry.path)
                if link_problem is not None:
                    if is_image:  # a broken or looping link where an image should be
                        bad_links.append(link_problem.text)
                    continue
                if entry.is_dir():  # a link to a folder: not entered, as before
                    continue
            (scan.images if is_image else scan.others).append(Path(entry.path))
            if len(scan.images) + len(scan.others) > max_files:
                raise DatasetError(
                    f"Image folder {folder} holds more than {max_files:,} files (stopped counting at "
                    f"{directory}): is it the right folder? Point to the folder of the images themselves, or "
                    "raise the limit if the collection really is that large.")


def find_images(folder: str | os.PathLike) -> list[Path]:
    """The image files of :func:`scan_images`: every .jpg/.jpeg/.png/.bmp file under ``folder``, sorted."""
    return scan_images(folder).images


def describe_others(others: list[Path], shown: int = 3) -> str:
    """'N file(s) are not images (.jpg, ...) and were not read, e.g. a.txt, b.csv', or '' when there are none."""
    if not others:
        return ""
    examples = ", ".join(map(str, others[:shown])) + (", ..." if len(others) > shown else "")
    return f"{len(others)} file(s) are not images ({', '.join(IMAGE_SUFFIXES)}) and were not read, e.g. {examples}"


def parse_identity(name: str | os.PathLike) -> tuple[int, int]:
    """``(pid, camid)`` from a Market-1501, DukeMTMC-reID or MSMT17 style file name, else ``(-1, -1)``.

    ``camid`` is 0-based as in the toolkit's datasets (Market ``c1`` -> 0). Market's junk images keep pid -1.
    """
    base = Path(name).name
    for pattern in NAME_CONVENTIONS:
        match = pattern.match(base)
        if match:
            return int(match[1]), int(match[2]) - 1
    return UNKNOWN, UNKNOWN


def check_writable_file(path: Path) -> Path:
    """``path`` if a file can be written there (its folder exists or can be made, and is writable), else a
    ReIDError; run before the work whose results it will hold, so minutes of extraction are not lost."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReIDError(f"Cannot create the folder of {path}: {exc.strerror or exc}.") from exc
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise ReIDError(f"Cannot write {path}: the file or its folder is not writable.")
    return path
