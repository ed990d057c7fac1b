"""What every dataset shares: the image record, the dataset container, the registry and the checks.

A dataset is added in one file: subclass :class:`DatasetSource` (or :class:`MarketStyleSource` for the
``bounding_box_train`` / ``query`` / ``bounding_box_test`` layout), say which folders it may live in
under ``DATASETS.ROOT`` and how to parse them, and decorate it with ``@DATASET_REGISTRY.register("name")``.
"""

from __future__ import annotations

import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

from reid.utils.errors import DatasetError
from reid.utils.registry import Registry

logger = logging.getLogger("reid.data")

DATASET_REGISTRY = Registry("dataset")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
README_HINT = "datasets/README.md says where to get each dataset and how to lay it out."
JUNK_PID = -1  # Market-style "junk" detections: ignored everywhere
DISTRACTOR_PID = 0  # Market-style distractors: gallery only


class ImageRecord(NamedTuple):
    """One image: its path, identity and 0-based camera index."""

    path: str
    pid: int
    camid: int


def subset_stats(records: Sequence[ImageRecord]) -> tuple[int, int, int]:
    """(identities, images, cameras) of a list of records."""
    return len({r.pid for r in records}), len(records), len({r.camid for r in records})


@dataclass
class ReIDDataset:
    """A parsed dataset: train records (pids relabelled 0..N-1), query/gallery records (original pids)."""

    name: str
    root: str
    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @property
    def num_train_pids(self) -> int:
        return subset_stats(self.train)[0]

    @property
    def num_query(self) -> int:
        return len(self.query)

    @property
    def num_gallery(self) -> int:
        return len(self.gallery)

    def summary(self) -> str:
        """A printable table: subset | identities | images | cameras."""
        header = ("subset", "identities", "images", "cameras")
        rows = [(subset, *subset_stats(getattr(self, subset))) for subset in ("train", "query", "gallery")]
        widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: Sequence[object]) -> str:
            first = str(cells[0]).ljust(widths[0])
            rest = (str(c).rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
            return " | ".join([first, *rest])

        rule = "-+-".join("-" * w for w in widths)
        return "\n".join([f"Dataset {self.name} ({self.root})", line(header), rule, *map(line, rows)])


def describe_folder(path: Path, limit: int = 10) -> str:
    """What a folder holds, for error messages: up to ``limit`` visible entries, folders marked with '/'."""
    if not path.exists():
        return f"{path} does not exist"
    if not path.is_dir():
        return f"{path} is a file, not a folder"
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    if not entries:
        return f"{path} is empty"
    shown = [p.name + ("/" if p.is_dir() else "") for p in entries[:limit]]
    more = f" (and {len(entries) - limit} more)" if len(entries) > limit else ""
    return f"{path} holds: {', '.join(shown)}{more}"


def list_images(directory: Path) -> list[Path]:
    """Image files directly inside ``directory``, sorted; others (e.g. Market's Thumbs.db) are skipped."""
    with os.scandir(directory) as entries:
        paths = [Path(e.path) for e in entries if e.is_file() and e.name.lower().endswith(IMAGE_SUFFIXES)]
    return sorted(paths)


def has_image(directory: Path) -> bool:
    """True as soon as one image is found (no full listing: used by the fast checks)."""
    with os.scandir(directory) as entries:
        return any(e.name.lower().endswith(IMAGE_SUFFIXES) for e in entries)


def relabel(records: Iterable[ImageRecord]) -> list[ImageRecord]:
    """Training identities mapped to 0..N-1 in sorted order of their original ids."""
    records = list(records)
    label = {pid: i for i, pid in enumerate(sorted({r.pid for r in records}))}
    return [r._replace(pid=label[r.pid]) for r in records]


class DatasetSource(ABC):
    """How one dataset is found under ``DATASETS.ROOT`` and parsed; subclasses are registered by name."""

    folders: ClassVar[tuple[str, ...]]  # candidate folders relative to DATASETS.ROOT, in order of preference
    how_to_get: ClassVar[str] = (
        README_HINT  # where the data comes from; "{root}" is replaced by DATASETS.ROOT
    )

    def __init__(self, name: str, root: str | os.PathLike) -> None:
        self.name = name
        self.root = Path(root)

    @abstractmethod
    def structure_problems(self, folder: Path) -> list[str]:
        """What is missing or empty in ``folder`` (quick checks, no parsing); empty when it looks complete."""

    @abstractmethod
    def parse(self, folder: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        """(train, query, gallery) records; training pids already relabelled to 0..N-1."""

    def locate(self) -> Path:
        """The first candidate folder that looks complete, or a DatasetError: what was expected and found."""
        candidates = [self.root / folder for folder in self.folders]
        first_problems: tuple[Path, list[str]] | None = None
        for candidate in candidates:
            if candidate.is_dir():
                problems = self.structure_problems(candidate)
                if not problems:
                    return candidate
                first_problems = first_problems or (candidate, problems)
        hint = self.how_to_get.format(root=self.root)
        if first_problems:
            folder, problems = first_problems
            raise DatasetError(
                f"Dataset {self.name!r} at {folder} is incomplete: {'; '.join(problems)}. "
                f"{describe_folder(folder)}. {hint}"
            )
        expected = ", ".join(f"{folder}/" for folder in self.folders)
        if len(self.folders) > 1:
            expected = f"one of {expected}"
        raise DatasetError(
            f"Dataset {self.name!r} not found: expected {expected} under DATASETS.ROOT "
            f"({self.root.resolve()}), but {describe_folder(self.root)}. {hint}"
        )

    def load(self) -> ReIDDataset:
        folder = self.locate()
        train, query, gallery = self.parse(folder)
        for subset, records in (("train", train), ("query", query), ("gallery", gallery)):
            if not records:
                raise DatasetError(
                    f"Dataset {self.name!r} at {folder} has no usable {subset} images (junk is ignored). "
                    f"{self.how_to_get.format(root=self.root)}"
                )
        return ReIDDataset(self.name, str(folder), train, query, gallery)


class MarketStyleSource(DatasetSource):
    """Market-1501 layout: ``bounding_box_train/``, ``query/`` and ``bounding_box_test/`` folders of images
    named ``<pid>_c<camera>...``. pid -1 marks junk (dropped everywhere) and pid 0 distractors (gallery only).
    """

    subsets: ClassVar[dict[str, str]] = {
        "train": "bounding_box_train",
        "query": "query",
        "gallery": "bounding_box_test",
    }
    name_pattern: ClassVar[re.Pattern] = re.compile(r"^(-?\d+)_c(\d+)")
    num_cameras: ClassVar[int]
    example_name: ClassVar[str]

    def structure_problems(self, folder: Path) -> list[str]:
        problems = []
        for sub in self.subsets.values():
            if not (folder / sub).is_dir():
                problems.append(f"no {sub}/ folder")
            elif not has_image(folder / sub):
                problems.append(f"{sub}/ holds no images")
        return problems

    def parse(self, folder: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        train = relabel(self._parse_dir(folder / self.subsets["train"], keep_distractors=False))
        query = self._parse_dir(folder / self.subsets["query"], keep_distractors=False)
        gallery = self._parse_dir(folder / self.subsets["gallery"], keep_distractors=True)
        return train, query, gallery

    def _parse_dir(self, directory: Path, keep_distractors: bool) -> list[ImageRecord]:
        records = []
        for path in list_images(directory):
            match = self.name_pattern.match(path.name)
            if match is None:
                raise DatasetError(
                    f"Image {path} does not follow the {self.name} naming convention "
                    f"<pid>_c<camera>_... (e.g. {self.example_name}). Remove or rename it."
                )
            pid, cam = int(match[1]), int(match[2])
            if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
                continue
            if pid < 0:
                raise DatasetError(f"Image {path} has identity {pid}; only -1 (junk) may be negative.")
            if not 1 <= cam <= self.num_cameras:
                raise DatasetError(
                    f"Image {path} is from camera c{cam}; {self.name} has cameras c1..c{self.num_cameras}."
                )
            records.append(ImageRecord(str(path), pid, cam - 1))
        return records


def build_dataset(name: str, root: str | os.PathLike, verbose: bool = True) -> ReIDDataset:
    """Parse the registered dataset ``name`` under ``root`` (DATASETS.ROOT); logs its summary when verbose."""
    source_cls = DATASET_REGISTRY.get(name)
    dataset = source_cls(name.lower(), root).load()  # type: ignore[operator]
    if verbose:
        logger.info("%s", dataset.summary())
    return dataset


def check_datasets(names: Iterable[str], root: str | os.PathLike) -> None:
    """Fail fast (folder structure only, no parsing) if a named dataset is unknown, missing or incomplete."""
    problems = []
    for name in dict.fromkeys(names):  # a dataset both trained and tested on is reported once
        source_cls = DATASET_REGISTRY.get(name)  # an unknown name fails here, listing the registered ones
        try:
            source_cls(name.lower(), root).locate()  # type: ignore[operator]
        except DatasetError as exc:
            problems.append(str(exc))
    if problems:
        raise DatasetError("\n".join(problems))
