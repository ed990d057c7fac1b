"""Finding images in a folder tree and reading identity/camera from dataset-style file names."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from reid.data.datasets.base import IMAGE_SUFFIXES, describe_folder
from reid.utils.errors import DatasetError, ReIDError

UNKNOWN = -1  # pid / camid of a file name that follows no known convention

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


def scan_images(folder: str | os.PathLike) -> ImageScan:
    """Every .jpg/.jpeg/.png/.bmp file under ``folder`` (recursively, case-insensitive), and the other files.

    Hidden files and folders are ignored. A missing folder, or one without images, is a DatasetError
    that says what the folder holds.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DatasetError(f"Image folder {folder} does not exist or is not a folder ({describe_folder(folder)}).")
    scan = ImageScan()
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                (scan.images if name.lower().endswith(IMAGE_SUFFIXES) else scan.others).append(Path(dirpath) / name)
    if not scan.images:
        raise DatasetError(
            f"Image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}, searched recursively): "
            f"{describe_folder(folder)}."
        )
    scan.images.sort()
    scan.others.sort()
    return scan


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
