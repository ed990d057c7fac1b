"""Features of every image in a folder tree, with identities parsed from file names, saved as ``.npz``.

The ``.npz`` holds ``features`` (N, D) float32, ``paths`` (N,) str (relative to the folder),
``pids`` and ``camids`` (N,) int64 (-1 when the name follows no known convention, camid 0-based),
``root`` (the folder) and ``unreadable`` (str, relative paths of image files that could not be read and
have no row). It loads with ``numpy.load(path)`` (no pickle needed).

An image file that cannot be decoded (corrupt, truncated beyond repair, not an image despite its name)
is skipped and listed by default: one bad crop among 100k should not stop an extraction, but it must not
go unnoticed either. ``strict=True`` stops at the first one instead. Files that are not named like images
are not read at all; their number is reported (``FolderFeatures.others``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reid.export.extractor import FeatureExtractor
from reid.export.image_files import check_writable_file, describe_others, parse_identity, scan_images
from reid.utils.errors import DatasetError, ReIDError
from reid.utils.fsio import atomic_write

ProgressCallback = Callable[[int, int], None]  # (images done, total), e.g. a reid.utils.progress.Progress.set


@dataclass
class FolderFeatures:
    """Features of the images under ``root``, row ``i`` for ``paths[i]``."""

    root: Path
    paths: list[Path]  # found under ``root`` (so they start with it), sorted
    features: np.ndarray  # (N, D) float32
    pids: np.ndarray  # (N,) int64
    camids: np.ndarray  # (N,) int64
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # image files skipped, with the reason
    others: list[Path] = field(default_factory=list)  # files not named like images, not read

    def save(self, path: str | Path) -> Path:
        path = Path(path)

        def relative(paths: list[Path]) -> np.ndarray:
            return np.array([p.relative_to(self.root).as_posix() for p in paths], dtype=str)

        # To a file object (np.savez would append ".npz" to a name without it), atomically: a full disk is
        # one message naming the file, and an earlier file is replaced whole or not at all.
        return atomic_write(path, lambda f: np.savez(f, features=self.features, paths=relative(self.paths),
                                                     pids=self.pids, camids=self.camids, root=np.array(str(self.root)),
                                                     unreadable=relative([p for p, _ in self.unreadable])),
                            bytes_needed=self.features.nbytes)

    def report(self, shown: int = 20) -> list[str]:
        """Warning lines about what was not extracted: unreadable images (the first ``shown``) and other files."""
        lines = []
        if self.unreadable:
            total = len(self.paths) + len(self.unreadable)
            lines.append(f"{len(self.unreadable)} of {total} images could not be read and have no features:")
            lines += [f"  {reason}" for _, reason in self.unreadable[:shown]]
            if len(self.unreadable) > shown:
                lines.append(f"  ... and {len(self.unreadable) - shown} more (all are listed under 'unreadable' in "
                             "the .npz)")
        if self.others:
            lines.append(describe_others(self.others) + ".")
        return lines


def extract_folder(extractor: FeatureExtractor, folder: str | Path, progress: ProgressCallback | None = None,
                   strict: bool = False) -> FolderFeatures:
    """Features of every image under ``folder`` (recursively), one extractor batch at a time.

    An image that cannot be read is skipped and listed in ``unreadable`` or, with ``strict``, raises a
    DatasetError naming it. When no image at all can be read, that is a DatasetError either way.
    """
    root = Path(folder)
    scan = scan_images(root)
    chunks, paths, unreadable = [np.empty((0, extractor.feat_dim), np.float32)], [], []
    for start in range(0, len(scan.images), extractor.batch_size):
        part = extractor.extract_paths(scan.images[start:start + extractor.batch_size], skip_unreadable=not strict)
        chunks.append(part.features.numpy())
        paths += part.paths
        unreadable += part.unreadable
        if progress:
            progress(min(start + extractor.batch_size, len(scan.images)), len(scan.images))
    if not paths:
        raise DatasetError(f"None of the {len(scan.images)} images under {root} could be read; the first: "
                           f"{unreadable[0][1]}")
    identities = np.array([parse_identity(p) for p in paths], dtype=np.int64).reshape(-1, 2)
    return FolderFeatures(root, paths, np.concatenate(chunks), identities[:, 0], identities[:, 1], unreadable,
                          scan.others)


def check_output_path(path: str | Path) -> Path:
    """``path`` if an .npz can be written there (not a folder; its folder exists or can be made, writable)."""
    path = Path(path)
    if path.is_dir():
        raise ReIDError(f"Output {path} is a folder; give a file name such as {path / 'features.npz'}.")
    return check_writable_file(path)
