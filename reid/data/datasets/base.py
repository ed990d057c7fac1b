"""What every dataset shares: the image record, the dataset container, the registry and the checks.

A dataset is added in one file: subclass :class:`DatasetSource` (or :class:`MarketStyleSource` for the
``bounding_box_train`` / ``query`` / ``bounding_box_test`` layout), say which folders it may live in
under ``DATASETS.ROOT`` and how to parse them, and decorate it with ``@DATASET_REGISTRY.register("name")``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, NamedTuple

from reid.config import ComponentRegistry
from reid.utils.errors import DatasetError
from reid.utils.paths import describe_path_problem

logger = logging.getLogger("reid.data")

#: Datasets by name (``DATASETS.TRAIN`` / ``DATASETS.TEST``); a family such as ``csv:<path>`` keeps its
#: argument. Names are not checked when a config loads (a stored config may name data this machine lacks):
#: :func:`check_datasets` checks them, with the folders, when a run starts.
DATASET_REGISTRY = ComponentRegistry("dataset")

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
    """What a folder holds, for error messages: up to ``limit`` visible entries, folders marked with '/'.

    A path that is not a usable folder is described instead ("... does not exist", "... is a broken symbolic
    link to ...", "... is a symbolic link loop (a -> b -> a)"); broken or looping links among the entries
    are marked as such.
    """
    problem = describe_path_problem(path, expect="folder")
    if problem is not None:
        return problem.text
    entries = sorted((p for p in path.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)
    if not entries:
        return f"{path} is empty"
    shown = [_entry_label(p) for p in entries[:limit]]
    more = f" (and {len(entries) - limit} more)" if len(entries) > limit else ""
    return f"{path} holds: {', '.join(shown)}{more}"


def _entry_label(path: Path) -> str:
    if path.is_symlink():
        problem = describe_path_problem(path)
        if problem is not None and problem.kind == "broken_link":
            return f"{path.name} (a broken link to {os.readlink(path)})"
        if problem is not None and problem.kind == "link_loop":
            return f"{path.name} (a symbolic link loop)"
    return path.name + ("/" if path.is_dir() else "")


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

    def __init__(self, name: str, root: str | os.PathLike, *, needed: Sequence[str] = ("train", "query", "gallery"),
                 num_instances: int | None = None) -> None:
        self.name = name
        self.root = Path(root)
        # What the caller will read (a training run: train; an evaluation: query and gallery) and the PK
        # sampler's images per identity: sources whose layout may lack a subset (a CSV list) check against them.
        self.needed = tuple(needed)
        self.num_instances = num_instances

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


def dataset_key(name: str) -> str:
    """How a dataset name is compared and shown: registered names are case-insensitive (``Market1501``);
    a family member's argument keeps its case (``csv:/data/Mine.csv`` names a file)."""
    return name if DATASET_REGISTRY.lookup(name).argument is not None else name.lower()


def dataset_source(name: str, root: str | os.PathLike, **requirements: object) -> DatasetSource:
    """The source of the registered dataset ``name`` (an unknown name fails here, listing the registered ones);
    ``requirements``: ``needed`` subsets and ``num_instances``, see :class:`DatasetSource`."""
    return DATASET_REGISTRY.lookup(name).obj(dataset_key(name), root, **requirements)  # type: ignore[operator]


def build_dataset(name: str, root: str | os.PathLike, verbose: bool = True, **requirements: object) -> ReIDDataset:
    """Parse the registered dataset ``name`` under ``root`` (DATASETS.ROOT); logs its summary when verbose."""
    dataset = dataset_source(name, root, **requirements).load()
    if verbose:
        logger.info("%s", dataset.summary())
    return dataset


def check_datasets(names: Iterable[str], root: str | os.PathLike) -> None:
    """Fail fast (folder structure only, no parsing) if a named dataset is unknown, missing or incomplete."""
    problems = []
    for name in dict.fromkeys(names):  # a dataset both trained and tested on is reported once
        source = dataset_source(name, root)
        try:
            source.locate()
        except DatasetError as exc:
            problems.append(str(exc))
    if problems:
        raise DatasetError("\n".join(problems))


# --------------------------------------------------------------------------------------------------
# Fingerprints: has a subset changed since a run recorded it?

FINGERPRINT_VERSION = 1  # raise when the hashing changes; older records are then compared by counts only
SUBSETS = ("train", "query", "gallery")


@dataclass(frozen=True)
class SubsetFingerprint:
    """Counts and three hashes of a subset's listing, in sorted order of the images' paths (relative to the
    dataset's folder, so a dataset moved elsewhere keeps its fingerprint): which images with which labels,
    their sizes, and their modification times. One ``stat`` per image, no reading."""

    images: int
    identities: int
    cameras: int
    listing: str  # relative paths, pids and camera ids
    sizes: str  # file sizes in bytes
    mtimes: str  # modification times in ns
    version: int = FINGERPRINT_VERSION

    def to_dict(self) -> dict:
        return {"images": self.images, "identities": self.identities, "cameras": self.cameras,
                "listing": self.listing, "sizes": self.sizes, "mtimes": self.mtimes, "version": self.version}

    @classmethod
    def from_dict(cls, data: object, where: str = "the run's record") -> SubsetFingerprint:
        """Read back :meth:`to_dict`'s mapping (e.g. from results.json); a DatasetError when it is malformed."""
        names = ("images", "identities", "cameras", "listing", "sizes", "mtimes", "version")
        if not isinstance(data, dict) or any(name not in data for name in names):
            raise DatasetError(f"The dataset fingerprint in {where} is malformed (expected the keys "
                               f"{', '.join(names)}, got {data!r:.200}). Was the file edited?")
        return cls(**{name: data[name] for name in names})


def fingerprint_records(records: Sequence[ImageRecord], root: str | os.PathLike) -> SubsetFingerprint:
    """The :class:`SubsetFingerprint` of ``records`` (paths made relative to ``root``)."""
    root = os.fspath(root)
    rows = sorted((os.path.relpath(r.path, root), r.pid, r.camid, r.path) for r in records)
    listing, sizes, mtimes = hashlib.sha256(), hashlib.sha256(), hashlib.sha256()
    for rel_path, pid, camid, path in rows:
        try:
            info = os.stat(path)
        except OSError:
            problem = describe_path_problem(path, expect="file")
            raise DatasetError(f"Image {problem.text if problem else path} although it was just listed: is the "
                               f"dataset at {root} being changed while it is read?") from None
        listing.update(f"{rel_path}\0{pid}\0{camid}\n".encode("utf-8", "surrogateescape"))
        sizes.update(f"{info.st_size}\n".encode())
        mtimes.update(f"{info.st_mtime_ns}\n".encode())
    identities, images, cameras = subset_stats(records)
    return SubsetFingerprint(images, identities, cameras, listing.hexdigest()[:16], sizes.hexdigest()[:16],
                             mtimes.hexdigest()[:16])


def fingerprint_dataset(dataset: ReIDDataset, subsets: Iterable[str] = SUBSETS) -> dict[str, dict]:
    """``{subset: fingerprint mapping}`` of a parsed dataset: what a run records (e.g. in results.json)."""
    return {subset: fingerprint_records(getattr(dataset, subset), dataset.root).to_dict() for subset in subsets}


def describe_fingerprint_change(subset: str, before: SubsetFingerprint, now: SubsetFingerprint) -> str | None:
    """'gallery: 15913 -> 7956 images, 751 -> 700 identities' or similar; None when nothing changed."""
    counts = [f"{getattr(before, key)} -> {getattr(now, key)} {key}" for key in ("images", "identities", "cameras")
              if getattr(before, key) != getattr(now, key)]
    if counts:
        return f"{subset}: {', '.join(counts)}"
    if before.version != now.version:
        return None  # hashed differently: only the counts can be compared, and they agree
    if before.listing != now.listing:
        return (f"{subset}: the same {now.images} images by count, but other files or labels (files renamed, or "
                "some removed and as many added)")
    if before.sizes != now.sizes:
        return f"{subset}: the same {now.images} files, but some have another size (replaced or rewritten)"
    if before.mtimes != now.mtimes:
        return (f"{subset}: the same {now.images} files and sizes, but other modification times (rewritten in "
                "place, or the dataset was copied without keeping times; cp -p and rsync -a keep them)")
    return None


def check_fingerprints(dataset: ReIDDataset, recorded: dict, allow_changes: bool = False,
                       recorded_in: str = "the run started", override: str = "DATASETS.ALLOW_CHANGES True"
                       ) -> list[str]:
    """Compare the subsets of ``dataset`` with ``recorded`` (:func:`fingerprint_dataset`'s mapping).

    Only the subsets present in ``recorded`` are checked. A change raises a DatasetError naming the dataset,
    each changed subset and how (counts before -> after, or which part of the listing differs); with
    ``allow_changes`` it is logged as a warning instead. Returns the changes found (empty when none).
    """
    changes = []
    for subset, data in recorded.items():
        if subset not in SUBSETS:
            continue
        before = SubsetFingerprint.from_dict(data, where=f"the record of {dataset.name} {subset}")
        now = fingerprint_records(getattr(dataset, subset), dataset.root)
        change = describe_fingerprint_change(subset, before, now)
        if change:
            changes.append(change)
    if not changes:
        return changes
    message = (f"Dataset {dataset.name} at {dataset.root} changed since {recorded_in}: {'; '.join(changes)}. "
               "Metrics of a different set of images cannot be compared with the recorded ones.")
    if allow_changes:
        logger.warning(f"{message} Going on, as {override} allows.")
        return changes
    raise DatasetError(f"{message} Restore the dataset, or accept the change explicitly with {override}.")
