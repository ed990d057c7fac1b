"""Your own data without code: a dataset listed in a CSV file, ``path,pid,camid,split`` per image.

::

    path,pid,camid,split
    train/alice_cam1_01.jpg,1,1,train
    train/alice_cam2_01.jpg,1,2,train
    query/bob_cam1.jpg,2,1,query
    gallery/bob_cam3.jpg,2,3,gallery

- ``path``: the image, relative to the CSV file's folder (or absolute).
- ``pid``: the person's identity, an integer >= 0. Training identities are relabelled 0..N-1 as for every
  dataset; query and gallery identities are kept, so a gallery identity no query has is a distractor.
- ``camid``: the camera, an integer >= 1, numbered as in Market-1501 file names (``c1`` is camera 1); the
  toolkit stores it 0-based (camera 1 is camera id 0) and pictures write it back as ``c1``.
- ``split``: ``train``, ``query`` or ``gallery``.

The header must name the four columns (any order; other columns are ignored). The whole file is checked
before anything runs, and every problem is reported with the file and line: missing columns, bad numbers,
unknown splits, missing images, queries whose identity has no gallery image from another camera (they could
never be matched), and a training set where most identities have fewer images than a PK batch takes
(DATALOADER.NUM_INSTANCE).

:func:`write_market_csv` writes such a file for a Market-style folder (``bounding_box_train/``, ``query/``,
``bounding_box_test/``), e.g. the synthetic data.
"""

from __future__ import annotations

import csv
import os
import statistics
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from reid.data.datasets.base import (
    DATASET_REGISTRY,
    DISTRACTOR_PID,
    JUNK_PID,
    DatasetSource,
    ImageRecord,
    MarketStyleSource,
    ReIDDataset,
    list_images,
    relabel,
)
from reid.utils.errors import DatasetError

#: ``DATASETS.TRAIN`` / ``DATASETS.TEST`` entries of the form ``csv:PATH`` name a CSV list.
CSV_PREFIX = "csv:"
CSV_COLUMNS = ("path", "pid", "camid", "split")
SPLITS = ("train", "query", "gallery")
#: Problems listed in one message; the rest are counted.
MAX_LISTED = 8
#: Lines a list may hold: 40 times MSMT17's 126,441 images. A longer file is the wrong file (a log, a dump),
#: refused at that line rather than read into memory whole.
MAX_CSV_LINES = 5_000_000
CSV_HINT = ("Each line is path,pid,camid,split: the image relative to the CSV's folder, an integer identity >= 0, "
            "a camera numbered from 1 and train, query or gallery; README.md, section 'Your own data', has an "
            "example.")


def is_csv_name(name: str) -> bool:
    """True for a dataset name of the form ``csv:PATH``."""
    return name.lower().startswith(CSV_PREFIX)


def csv_path_of(name: str) -> Path:
    """The CSV file named by ``csv:PATH`` (absolute, or relative to the current folder)."""
    if not is_csv_name(name):
        raise DatasetError(f"Dataset name {name!r} does not start with {CSV_PREFIX!r}.")
    path = name[len(CSV_PREFIX):].strip()
    if not path:
        raise DatasetError(f"Dataset name {name!r} names no file: write it as {CSV_PREFIX}/path/to/list.csv.")
    return Path(path).expanduser()


@DATASET_REGISTRY.register("csv", family=True)
class CsvListSource(DatasetSource):
    """A dataset listed in a CSV file (see the module's documentation for the format).

    Args:
        name: the dataset's name as written in the config, e.g. ``csv:/data/mine.csv``.
        root: DATASETS.ROOT (unused: the CSV says where the images are; kept for the common constructor).
        csv_path: the CSV file; default: the path in ``name``.
        num_instances: DATALOADER.NUM_INSTANCE, to check that most training identities have that many images
            (``None``: not checked).
        needed: the splits that must have rows: all three by default; ``("train",)`` for a training set,
            ``("query", "gallery")`` for a test set.
    """

    folders = ()
    how_to_get = CSV_HINT

    def __init__(self, name: str, root: str | os.PathLike, csv_path: str | os.PathLike | None = None, *,
                 num_instances: int | None = None, needed: Sequence[str] = SPLITS) -> None:
        super().__init__(name, root, needed=needed, num_instances=num_instances)
        self.csv_path = Path(csv_path) if csv_path is not None else csv_path_of(name)
        unknown = [s for s in needed if s not in SPLITS]
        if unknown:
            raise ValueError(f"unknown splits {unknown}; use some of {SPLITS}")

    # -------------------------------------------------------------------------- DatasetSource API
    def structure_problems(self, folder: Path) -> list[str]:
        """Quick checks without reading the rows: the file exists and its header names the columns."""
        try:
            self._header()
        except DatasetError as exc:
            return [str(exc)]
        return []

    def locate(self) -> Path:
        """The CSV's folder (image paths are relative to it), after checking the file and its header."""
        self._header()
        return self.csv_path.resolve().parent

    def parse(self, folder: Path) -> tuple[list[ImageRecord], list[ImageRecord], list[ImageRecord]]:
        rows = self._rows(folder)
        self._check_coverage(rows)
        split = {s: [r for r in rows if r.split == s] for s in SPLITS}
        if "query" in self.needed or "gallery" in self.needed:
            self._check_queries_have_matches(split["query"], split["gallery"])
        if "train" in self.needed and self.num_instances is not None:
            self._check_instances(split["train"])
        train = relabel(ImageRecord(r.path, r.pid, r.camid) for r in split["train"])
        query = [ImageRecord(r.path, r.pid, r.camid) for r in split["query"]]
        gallery = [ImageRecord(r.path, r.pid, r.camid) for r in split["gallery"]]
        return train, query, gallery

    def load(self) -> ReIDDataset:
        folder = self.locate()
        train, query, gallery = self.parse(folder)
        return ReIDDataset(self.name, str(self.csv_path), train, query, gallery)

    # ----------------------------------------------------------------------------------- reading
    def _open(self):
        if not self.csv_path.is_file():
            where = "is a folder" if self.csv_path.is_dir() else "does not exist"
            raise DatasetError(f"The dataset list {self.csv_path} {where}: give the path of a CSV file "
                               f"(csv:/path/to/list.csv, relative paths from the current folder). {CSV_HINT}")
        try:
            return open(self.csv_path, newline="", encoding="utf-8-sig")  # a BOM from Excel is skipped
        except OSError as exc:
            raise DatasetError(f"Cannot read the dataset list {self.csv_path}: {exc.strerror or exc}.") from exc

    def _header(self) -> list[str]:
        with self._open() as handle:
            try:
                header = next(csv.reader(handle), None)
            except (csv.Error, UnicodeDecodeError) as exc:
                raise DatasetError(f"{self.csv_path} line 1 is not readable CSV text ({exc}). {CSV_HINT}") from exc
        if not header:
            raise DatasetError(f"{self.csv_path} is empty: its first line must be the header "
                               f"{','.join(CSV_COLUMNS)}. {CSV_HINT}")
        columns = [c.strip().lower() for c in header]
        missing = [c for c in CSV_COLUMNS if c not in columns]
        if missing:
            raise DatasetError(f"{self.csv_path} line 1: the header must name the columns {','.join(CSV_COLUMNS)} "
                               f"(in any order); missing: {', '.join(missing)}; found: {','.join(header)}. "
                               f"{CSV_HINT}")
        return columns

    def _rows(self, folder: Path) -> list[_Row]:
        columns = self._header()
        index = {c: columns.index(c) for c in CSV_COLUMNS}
        problems = _Problems(self.csv_path)
        missing_files = _Problems(self.csv_path)
        rows: list[_Row] = []
        seen: dict[tuple[str, str], int] = {}
        with self._open() as handle:
            reader = csv.reader(handle)
            next(reader)
            try:
                for fields in reader:
                    line = reader.line_num
                    if line > MAX_CSV_LINES:
                        raise DatasetError(f"{self.csv_path} has more than {MAX_CSV_LINES:,} lines: that is not a "
                                           "dataset list of images (MSMT17, the largest ReID set, has 126,441 "
                                           "images). Give the right file, or split the list.")
                    if not any(f.strip() for f in fields):
                        continue  # blank lines are allowed
                    row = _parse_row(fields, index, len(columns), line, folder, problems)
                    if row is None:
                        continue
                    key = (row.path, row.split)
                    if key in seen:
                        problems.add(line, f"lists {row.written} in {row.split} again (as line {seen[key]})")
                        continue
                    seen[key] = line
                    if not os.path.isfile(row.path):
                        missing_files.add(line, row.written)
                        continue
                    rows.append(row)
            except (csv.Error, UnicodeDecodeError) as exc:
                problems.add(reader.line_num, f"is not readable CSV text ({exc})")
        problems.raise_if_any("has rows that cannot be used", CSV_HINT)
        missing_files.raise_if_any(
            "lists images that do not exist", f"Paths are relative to the CSV's folder {folder}; fix them or "
            "remove these lines.")
        return rows

    # ---------------------------------------------------------------------------------- checking
    def _check_coverage(self, rows: list[_Row]) -> None:
        present = Counter(r.split for r in rows)
        empty = [s for s in self.needed if not present[s]]
        if empty:
            use = {"train": "a training set needs train rows", "query": "a test set needs query and gallery rows",
                   "gallery": "a test set needs query and gallery rows"}
            reasons = "; ".join(dict.fromkeys(use[s] for s in empty))
            raise DatasetError(f"{self.csv_path} has no rows with split {' or '.join(empty)} ({reasons}); it has "
                               f"{', '.join(f'{n} {s}' for s, n in present.items()) or 'no rows'}. {CSV_HINT}")

    def _check_queries_have_matches(self, query: list[_Row], gallery: list[_Row]) -> None:
        cameras_of: dict[int, set[int]] = defaultdict(set)
        for row in gallery:
            cameras_of[row.pid].add(row.camid)
        problems = _Problems(self.csv_path)
        for row in query:
            if not cameras_of[row.pid] - {row.camid}:
                problems.add(row.line, f"pid {row.pid}, camera {row.camid + 1}")
        problems.raise_if_any(
            "has queries whose identity has no gallery image from another camera",
            "The evaluation protocol ignores same-camera gallery images of the query's identity, so these queries "
            "could never be matched: add gallery images of them from other cameras, or remove these lines.")

    def _check_instances(self, train: list[_Row]) -> None:
        counts = Counter(r.pid for r in train)
        short = sorted(pid for pid, n in counts.items() if n < self.num_instances)
        if 2 * len(short) <= len(counts):
            return
        first_line = {}
        for row in train:
            first_line.setdefault(row.pid, row.line)
        examples = ", ".join(f"pid {pid} ({counts[pid]} image{'s' if counts[pid] > 1 else ''}, line "
                             f"{first_line[pid]})" for pid in short[:MAX_LISTED])
        median = int(statistics.median(counts.values()))
        raise DatasetError(
            f"{self.csv_path}: {len(short)} of the {len(counts)} training identities have fewer than "
            f"DATALOADER.NUM_INSTANCE = {self.num_instances} images (median {median}), e.g. {examples}. A PK batch "
            f"takes {self.num_instances} images of each identity and would repeat the same images; lower "
            f"DATALOADER.NUM_INSTANCE (to {max(median, 1)} or less, keeping SOLVER.IMS_PER_BATCH a multiple of it) "
            "or add images.")


class _Row:
    __slots__ = ("path", "written", "pid", "camid", "split", "line")

    def __init__(self, path: str, written: str, pid: int, camid: int, split: str, line: int) -> None:
        self.path, self.written, self.pid, self.camid, self.split, self.line = path, written, pid, camid, split, line


def _parse_row(fields: list[str], index: dict[str, int], width: int, line: int, folder: Path,
               problems: _Problems) -> _Row | None:
    if len(fields) != width:
        problems.add(line, f"has {len(fields)} fields, the header {width}")
        return None
    written = fields[index["path"]].strip()
    pid_text, cam_text = fields[index["pid"]].strip(), fields[index["camid"]].strip()
    split = fields[index["split"]].strip().lower()
    bad = []
    if not written:
        bad.append("no path")
    pid = _integer(pid_text)
    if pid is None or pid < 0:
        bad.append(f"pid {pid_text!r} is not an integer >= 0")
    camid = _integer(cam_text)
    if camid is None or camid < 1:
        bad.append(f"camid {cam_text!r} is not an integer >= 1 (cameras are numbered from 1, as c1 in Market names)")
    if split not in SPLITS:
        bad.append(f"split {fields[index['split']].strip()!r} is not one of {', '.join(SPLITS)}")
    if bad:
        problems.add(line, "; ".join(bad))
        return None
    path = written if os.path.isabs(written) else os.path.normpath(os.path.join(folder, written))
    return _Row(path, written, pid, camid - 1, split, line)


def _integer(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


class _Problems:
    """Problems of numbered lines, reported together: the first few listed, the rest counted."""

    def __init__(self, csv_path: Path) -> None:
        self.csv_path = csv_path
        self.items: list[tuple[int, str]] = []

    def add(self, line: int, what: str) -> None:
        self.items.append((line, what))

    def raise_if_any(self, summary: str, advice: str) -> None:
        if not self.items:
            return
        listed = "; ".join(f"line {line}: {what}" for line, what in self.items[:MAX_LISTED])
        more = f"; and {len(self.items) - MAX_LISTED} more" if len(self.items) > MAX_LISTED else ""
        count = f"{len(self.items)} line{'s' if len(self.items) > 1 else ''}"
        raise DatasetError(f"{self.csv_path} {summary} ({count}): {listed}{more}. {advice}")


# -------------------------------------------------------------------------------------- writing
MARKET_SUBSETS = dict(MarketStyleSource.subsets)  # split -> folder


def write_market_csv(dataset_folder: str | os.PathLike, csv_path: str | os.PathLike | None = None) -> Path:
    """Write the CSV list of a Market-style folder (``bounding_box_train/``, ``query/``, ``bounding_box_test/``
    with images named ``<pid>_c<camera>...``); returns its path (default ``<folder>/dataset.csv``).

    Paths are written relative to the CSV's folder, identities and cameras as in the file names (cameras
    1-based). As when the folder itself is read: junk (pid -1) is left out, distractors (pid 0) are kept in
    the gallery only. So ``csv:<that file>`` gives the same dataset as the folder.
    """
    folder = Path(dataset_folder)
    csv_path = Path(csv_path) if csv_path is not None else folder / "dataset.csv"
    missing = [sub for sub in MARKET_SUBSETS.values() if not (folder / sub).is_dir()]
    if missing:
        raise DatasetError(f"{folder} is not a Market-style dataset folder: it has no {', '.join(missing)} "
                           "folder(s).")
    base = csv_path.resolve().parent
    rows = []
    for split, sub in MARKET_SUBSETS.items():
        for image in list_images(folder / sub):
            match = MarketStyleSource.name_pattern.match(image.name)
            if match is None:
                raise DatasetError(f"Image {image} does not follow the naming convention <pid>_c<camera>_... "
                                   "(e.g. 0002_c1s1_000451_03.jpg); rename or remove it.")
            pid, cam = int(match[1]), int(match[2])
            if pid == JUNK_PID or (pid == DISTRACTOR_PID and split != "gallery"):
                continue
            rows.append((Path(os.path.relpath(image.resolve(), base)).as_posix(), pid, cam, split))
    try:
        csv_path.parent.mkdir(parents=True, exist_ok=True)
        partial = csv_path.with_name(csv_path.name + ".partial")
        with open(partial, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(CSV_COLUMNS)
            writer.writerows(rows)
        os.replace(partial, csv_path)
    except OSError as exc:
        raise DatasetError(f"Cannot write the dataset list {csv_path}: {exc.strerror or exc}.") from exc
    return csv_path
