"""Decode a list of images once into one uint8 (N, 3, H, W) tensor, with a disk cache that is never trusted blindly.

Images are read in parallel threads (OpenCV releases the GIL) and resized in the calling thread with the
loaders' own resize (:func:`reid.data.transforms.build_resize`, one intra-op thread: torch kernels
started from many threads would each bring an OpenMP team and oversubscribe the cores), so a cached
image equals, pixel for pixel, what the workers path feeds the model.

The cache file is raw bytes behind a JSON header (no pickle: loading it runs no code)::

    MAGIC (8 bytes) | header length (8 bytes, little-endian) | header (UTF-8 JSON) | N*3*H*W uint8 pixels

The header records every source file's path, size and mtime, the target size, the resize and a CRC-32 of
the pixels. A file whose header does not match the current file list, or that is truncated or corrupt, is
rebuilt with a logged message, never used. Files are written to a temporary name and renamed, so an
interrupted write never leaves a half file under the real name.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import logging
import os
import re
import struct
import time
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torchvision

from reid.data.cpu_threads import single_threaded
from reid.data.io import read_image
from reid.data.transforms import build_resize

logger = logging.getLogger("reid.data")

MAGIC = b"LFMRIMG1"
FORMAT_VERSION = 1
CACHE_SUFFIX = ".u8img"
# The resize that made the pixels: a torchvision upgrade may change its rounding, so it is part of the key.
RESIZE_ID = f"torchvision {torchvision.__version__.split('+')[0]} v2.Resize bilinear antialias"
PROGRESS_SECONDS = 5.0


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/lfm-reid/decoded`` (``~/.cache/lfm-reid/decoded`` without it)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "lfm-reid" / "decoded"


def resolve_cache_dir(setting: str) -> Path | None:
    """DATALOADER.CACHE_DIR: "" -> :func:`default_cache_dir`, "none" -> no disk cache, else the folder given."""
    if setting.strip().lower() == "none":
        return None
    return Path(setting).expanduser() if setting.strip() else default_cache_dir()


def file_list(paths: Sequence[str]) -> list[list]:
    """``[path, size in bytes, mtime in ns]`` of every file: what a cache is keyed by."""
    entries = []
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            read_image(path)  # raises the DatasetError that names the missing file
            raise
        entries.append([path, stat.st_size, stat.st_mtime_ns])
    return entries


def cache_path(cache_dir: Path, name: str, paths: Sequence[str], size: Sequence[int]) -> Path:
    """One file per (name, dataset folder, size): a changed dataset overwrites its own cache, not a new one."""
    folder = os.path.commonpath([os.path.abspath(p) for p in paths]) if paths else ""
    digest = hashlib.sha256(folder.encode()).hexdigest()[:12]
    safe_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "images"
    return cache_dir / f"{safe_name}-{size[0]}x{size[1]}-{digest}{CACHE_SUFFIX}"


def decode_images(paths: Sequence[str], size: Sequence[int], *, name: str = "images",
                  cache_dir: str | Path | None = None, threads: int | None = None) -> torch.Tensor:
    """Every image of ``paths`` resized to ``size`` (height, width), as one uint8 (N, 3, H, W) CPU tensor.

    With ``cache_dir``, a valid cache file is loaded instead of decoding, and a fresh decode is saved there.
    ``name`` (e.g. "market1501-train") names the cache file and the progress lines. An unreadable image
    raises :func:`read_image`'s DatasetError naming the file.
    """
    size = (int(size[0]), int(size[1]))
    paths = [os.fspath(p) for p in paths]
    files = file_list(paths)
    path = cache_path(Path(cache_dir), name, paths, size) if cache_dir is not None else None
    if path is not None:
        images = load_cache(path, files, size)
        if images is not None:
            return images
    images = _decode(paths, size, name, threads)
    if path is not None:
        save_cache(path, images, files, size)
    return images


def _decode(paths: list[str], size: tuple[int, int], name: str, threads: int | None) -> torch.Tensor:
    threads = threads or min(32, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                             else os.cpu_count() or 1)
    resize = build_resize(size)
    images = torch.empty((len(paths), 3, *size), dtype=torch.uint8)
    start = last_log = time.perf_counter()
    logger.info(f"Decoding {len(paths)} images of {name} at {size[0]}x{size[1]} with {threads} threads.")
    # A bounded window of reads in flight keeps memory flat when resizing falls behind the readers.
    window = 8 * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="decode") as pool, single_threaded():
        pending: collections.deque[Future] = collections.deque()
        submitted = 0
        try:
            for index in range(len(paths)):
                while submitted < len(paths) and len(pending) < window:
                    pending.append(pool.submit(read_image, paths[submitted]))
                    submitted += 1
                images[index] = resize(pending.popleft().result())
                now = time.perf_counter()
                if now - last_log >= PROGRESS_SECONDS:
                    last_log = now
                    done = index + 1
                    rate = done / (now - start)
                    logger.info(f"Decoding {name}: {done}/{len(paths)} images, {rate:.0f} img/s, "
                                f"ETA {(len(paths) - done) / rate:.0f} s")
        except BaseException:
            for future in pending:
                future.cancel()
            raise
    elapsed = time.perf_counter() - start
    logger.info(f"Decoded {len(paths)} images of {name} in {elapsed:.1f} s "
                f"({len(paths) / max(elapsed, 1e-9):.0f} img/s).")
    return images


def _header(images: torch.Tensor, files: list[list], size: tuple[int, int], crc: int) -> dict:
    return {"format": "lfm-reid decoded images", "version": FORMAT_VERSION, "size": list(size),
            "shape": list(images.shape), "dtype": "uint8", "resize": RESIZE_ID, "crc32": crc, "files": files}


def save_cache(path: Path, images: torch.Tensor, files: list[list], size: tuple[int, int]) -> bool:
    """Write ``images`` atomically; a failure (read-only folder, full disk) is logged, not raised."""
    pixels = images.contiguous().numpy()
    header = json.dumps(_header(images, files, size, zlib.crc32(memoryview(pixels).cast("B")))).encode()
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<Q", len(header)) + header)
            f.write(memoryview(pixels).cast("B"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        logger.warning(f"Could not write the decoded-image cache {path} ({exc}); the next run decodes again. "
                       "Set DATALOADER.CACHE_DIR to a writable folder (or none to skip the cache).")
        return False
    logger.info(f"Saved the decoded images to {path} ({path.stat().st_size / 2**20:.0f} MiB).")
    return True


def load_cache(path: Path, files: list[list], size: tuple[int, int]) -> torch.Tensor | None:
    """The cached images if ``path`` holds exactly these files at this size, intact; else None (logged why)."""
    if not path.is_file():
        return None
    try:
        images, reason = _read_cache(path, files, size)
    except (OSError, ValueError, UnicodeDecodeError, struct.error) as exc:  # json errors are ValueErrors
        images, reason = None, f"it cannot be read ({exc})"
    if images is None:
        logger.info(f"The decoded-image cache {path} is not used: {reason}. Decoding again.")
        return None
    logger.info(f"Loaded {images.shape[0]} decoded images from the cache {path}.")
    return images


def _read_cache(path: Path, files: list[list], size: tuple[int, int]) -> tuple[torch.Tensor | None, str]:
    file_size = path.stat().st_size
    with open(path, "rb") as f:
        if f.read(len(MAGIC)) != MAGIC:
            return None, "it is not a decoded-image cache of this toolkit (wrong magic bytes)"
        (header_len,) = struct.unpack("<Q", f.read(8))
        if header_len > file_size:
            return None, "its header is truncated or corrupt"
        header = json.loads(f.read(header_len).decode())
        if not isinstance(header, dict) or header.get("version") != FORMAT_VERSION:
            return None, "it was written by another version of the cache format"
        if header.get("size") != list(size) or header.get("resize") != RESIZE_ID:
            return None, (f"it holds images at {header.get('size')} made by {header.get('resize')!r}, not at "
                          f"{list(size)} by {RESIZE_ID!r}")
        if header.get("files") != files:
            return None, _describe_change(header.get("files") or [], files)
        shape = [len(files), 3, *size]
        if header.get("shape") != shape or header.get("dtype") != "uint8":
            return None, "its header is inconsistent"
        expected = len(MAGIC) + 8 + header_len + int(np.prod(shape))
        if file_size != expected:
            return None, f"it is truncated or has trailing bytes ({file_size} bytes, expected {expected})"
        images = torch.empty(shape, dtype=torch.uint8)
        buffer = memoryview(images.numpy()).cast("B")
        if f.readinto(buffer) != len(buffer):
            return None, "it is truncated"
    if zlib.crc32(buffer) != header.get("crc32"):
        return None, "its pixels are corrupt (CRC-32 mismatch)"
    return images, ""


def _describe_change(old: list, new: list[list]) -> str:
    old_by_path = {entry[0]: entry for entry in old if isinstance(entry, list) and entry}
    new_by_path = {entry[0]: entry for entry in new}
    added = [p for p in new_by_path if p not in old_by_path]
    removed = [p for p in old_by_path if p not in new_by_path]
    changed = [p for p in new_by_path if p in old_by_path and old_by_path[p] != new_by_path[p]]
    parts = [f"{len(items)} {what} (e.g. {items[0]})" for items, what in
             ((added, "added"), (removed, "removed"), (changed, "changed: size or mtime")) if items]
    return ("the image files changed since it was written: " + ", ".join(parts)) if parts else \
        "the image list is in another order than when it was written"
