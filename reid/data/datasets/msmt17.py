"""MSMT17 (Wei et al., CVPR 2018): 4,101 identities from 15 cameras, described by list files.

Each list line is ``<path relative to the image folder> <pid>``; the camera is the third ``_`` field of the
file name (``0000_000_01_0303morning_0015_0.jpg`` -> camera 1). As in torchreid, ``list_val.txt`` (when
present) is merged into the training set.
"""

from __future__ import annotations

import os
from pathlib import Path

from reid.data.datasets.base import (
    DATASET_REGISTRY,
    README_HINT,
    DatasetSource,
    ImageRecord,
    relabel,
)
from reid.utils.errors import DatasetError

NUM_CAMERAS = 15
TRAIN_DIRS = ("train", "mask_train_v2")  # V1, V2 names
TEST_DIRS = ("test", "mask_test_v2")
REQUIRED_LISTS = ("list_train.txt", "list_query.txt", "list_gallery.txt")
VAL_LIST = "list_val.txt"


def _first_dir(folder: Path, names: tuple[str, ...]) -> Path | None:
    return next((folder / n for n in names if (folder / n).is_dir()), None)


def _relative_files(directory: Path) -> set[str]:
    """Every file under ``directory`` as a relative posix path (one walk, not one stat per list entry)."""
    files = set()
    for dirpath, _, filenames in os.walk(directory):
        prefix = Path(dirpath).relative_to(directory).as_posix()
        files.update(name if prefix == "." else f"{prefix}/{name}" for name in filenames)
    return files


@DATASET_REGISTRY.register("msmt17")
class MSMT17(DatasetSource):
    """``<ROOT>/MSMT17_V1/`` (or ``MSMT17_V2/``, ``MSMT17/``): ``train/``, ``test/`` and ``list_*.txt``."""

    folders = ("MSMT17_V1", "MSMT17_V2", "MSMT17", "msmt17/MSMT17_V1", "msmt17/MSMT17_V2", "msmt17")
    how_to_get = "MSMT17 is available on request from its PKU page; " + README_HINT

    def structure_problems(self, folder: Path) -> list[str]:
        problems = []
        for names in (TRAIN_DIRS, TEST_DIRS):
            if _first_dir(folder, names) is None:
                problems.append(f"no {' or '.join(n + '/' for n in names)} image folder")
        for name in REQUIRED_LISTS:
            path = folder / name
            if not path.is_file():
                problems.append(f"no {name}")
            elif path.stat().st_size == 0:
                problems.append(f"{name} is empty")
        return problems

    def parse(self, folder: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        train_dir, test_dir = _first_dir(folder, TRAIN_DIRS), _first_dir(folder, TEST_DIRS)
        assert train_dir is not None and test_dir is not None  # guaranteed by locate()
        train_files, test_files = _relative_files(train_dir), _relative_files(test_dir)
        train = self._parse_list(folder / "list_train.txt", train_dir, train_files)
        if (folder / VAL_LIST).is_file():
            train += self._parse_list(folder / VAL_LIST, train_dir, train_files)
        query = self._parse_list(folder / "list_query.txt", test_dir, test_files)
        gallery = self._parse_list(folder / "list_gallery.txt", test_dir, test_files)
        return relabel(train), query, gallery

    def _parse_list(self, list_file: Path, image_dir: Path, existing: set[str]) -> list[ImageRecord]:
        records, missing = [], []
        for lineno, line in enumerate(list_file.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise DatasetError(
                    f"{list_file}, line {lineno}: expected '<relative/path.jpg> <pid>', got {line.strip()!r}."
                )
            rel_path, pid = parts[0], int(parts[1])
            fields = Path(rel_path).name.split("_")
            cam = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else -1
            if not 1 <= cam <= NUM_CAMERAS:
                raise DatasetError(
                    f"{list_file}, line {lineno}: image {rel_path} names no camera 1..{NUM_CAMERAS} in its "
                    "third '_' field (expected names like 0000_000_01_0303morning_0015_0.jpg)."
                )
            if rel_path not in existing:
                missing.append(rel_path)
            records.append(ImageRecord(str(image_dir / rel_path), pid, cam - 1))
        if missing:
            raise DatasetError(
                f"{list_file} lists {len(missing)} image(s) missing from {image_dir}, e.g. "
                f"{', '.join(missing[:5])}. The download may be incomplete; {README_HINT}"
            )
        return records
