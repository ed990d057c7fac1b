"""Features of every image in a folder tree, with identities parsed from file names, saved as ``.npz``.

The ``.npz`` holds ``features`` (N, D) float32, ``paths`` (N,) str (relative to the folder),
``pids`` and ``camids`` (N,) int64 (-1 when the name follows no known convention, camid 0-based) and
``root`` (the folder). It loads with ``numpy.load(path)`` (no pickle needed).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from reid.export.extractor import FeatureExtractor
from reid.export.image_files import find_images, parse_identity
from reid.utils.errors import ReIDError

ProgressCallback = Callable[[int, int], None]  # (images done, total)


@dataclass
class FolderFeatures:
    """Features of the images under ``root``, row ``i`` for ``paths[i]``."""

    root: Path
    paths: list[Path]  # found under ``root`` (so they start with it), sorted
    features: np.ndarray  # (N, D) float32
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        relative = [p.relative_to(self.root).as_posix() for p in self.paths]
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name without it
                np.savez(f, features=self.features, paths=np.array(relative, dtype=str), pids=self.pids,
                         camids=self.camids, root=np.array(str(self.root)))
        except OSError as exc:
            raise ReIDError(f"Cannot write features to {path}: {exc.strerror or exc}.") from exc
        return path


def extract_folder(extractor: FeatureExtractor, folder: str | Path,
                   progress: ProgressCallback | None = None) -> FolderFeatures:
    """Features of every image under ``folder`` (recursively), one extractor batch at a time."""
    root = Path(folder)
    paths = find_images(root)
    chunks = []
    for start in range(0, len(paths), extractor.batch_size):
        chunks.append(extractor(paths[start:start + extractor.batch_size]).numpy())
        if progress:
            progress(min(start + extractor.batch_size, len(paths)), len(paths))
    identities = np.array([parse_identity(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    return FolderFeatures(root, paths, np.concatenate(chunks), identities[:, 0], identities[:, 1])


class ProgressPrinter:
    """Prints ``done/total images, images/s, ETA``: in place on a terminal, every ``period`` seconds otherwise."""

    def __init__(self, label: str = "extract", stream: TextIO = sys.stderr, period: float = 10.0) -> None:
        self.label, self.stream, self.period = label, stream, period
        self.start = time.perf_counter()
        self.last_print = -float("inf")

    def __call__(self, done: int, total: int) -> None:
        now = time.perf_counter()
        tty = self.stream.isatty()
        if done < total and not tty and now - self.last_print < self.period:
            return
        self.last_print = now
        rate = done / max(now - self.start, 1e-9)
        eta = (total - done) / rate if rate > 0 else 0.0
        line = (f"{self.label}: {done}/{total} images, {rate:.1f} images/s, "
                f"ETA {int(eta) // 60}:{int(eta) % 60:02d}")
        end = "\n" if done >= total or not tty else ""
        print(("\r" if tty else "") + line, end=end, file=self.stream, flush=True)
