"""Decoding once and the disk cache: equal to the workers path's resize, reused when valid, rebuilt otherwise."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.data import read_image
from reid.data import tensor_cache
from reid.data.tensor_cache import MAGIC, cache_path, decode_images, default_cache_dir, resolve_cache_dir
from reid.data.transforms import build_resize
from reid.utils.errors import DatasetError

SIZE = (24, 12)


def write_images(folder: Path, count: int, shape: tuple[int, int] = (40, 20), seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"{i:04d}.jpg"
        assert cv2.imwrite(str(path), rng.integers(0, 256, (*shape, 3), dtype=np.uint8))
        paths.append(str(path))
    return paths


@pytest.fixture
def counted_reads(monkeypatch) -> list[str]:
    """Every path the cache module reads an image from."""
    reads: list[str] = []

    def counting_read(path):
        reads.append(str(path))
        return read_image(path)

    monkeypatch.setattr(tensor_cache, "read_image", counting_read)
    return reads


def decode(paths, cache_dir, size=SIZE) -> torch.Tensor:
    return decode_images(paths, size, name="unit-train", cache_dir=cache_dir, threads=2)


def test_decoded_images_equal_the_loaders_resize(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "up", 3, (10, 6)) + write_images(tmp_path / "down", 3, (50, 30), seed=1)
    for size in ((24, 12), (8, 4)):  # upscaling and downscaling (antialiased)
        images = decode_images(paths, size, threads=3)
        assert images.dtype == torch.uint8 and images.shape == (6, 3, *size)
        resize = build_resize(size)
        assert torch.equal(images, torch.stack([resize(read_image(p)) for p in paths]))


def test_cache_is_reused_when_valid(tmp_path: Path, counted_reads: list[str], caplog) -> None:
    paths = write_images(tmp_path / "images", 5)
    first = decode(paths, tmp_path / "cache")
    assert len(counted_reads) == 5
    files = list((tmp_path / "cache").iterdir())
    assert len(files) == 1 and files[0].read_bytes()[:8] == MAGIC  # no temporary file left behind
    with caplog.at_level(logging.INFO, logger="reid.data"):
        again = decode(paths, tmp_path / "cache")
    assert len(counted_reads) == 5 and torch.equal(first, again)  # nothing decoded the second time
    assert "Loaded 5 decoded images from the cache" in caplog.text


def rebuilt(paths, cache_dir, reads: list[str], caplog) -> tuple[torch.Tensor, str]:
    """Decode through the cache; assert that every image was read again; return the images and the log."""
    before = len(reads)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reid.data"):
        images = decode(paths, cache_dir)
    assert len(reads) - before == len(paths), "the cache was used although it does not match"
    return images, caplog.text


def test_cache_is_rebuilt_when_the_file_list_changes(tmp_path: Path, counted_reads: list[str], caplog) -> None:
    paths = write_images(tmp_path / "images", 5)
    cache = tmp_path / "cache"
    decode(paths, cache)

    stat = os.stat(paths[2])
    os.utime(paths[2], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))  # touched
    _, log = rebuilt(paths, cache, counted_reads, caplog)
    assert "1 changed: size or mtime" in log and paths[2] in log

    extra = write_images(tmp_path / "images", 6)[5:]  # added
    _, log = rebuilt(paths + extra, cache, counted_reads, caplog)
    assert "1 added" in log

    os.remove(paths[0])  # deleted (the dataset's list no longer names it)
    images, log = rebuilt(paths[1:] + extra, cache, counted_reads, caplog)
    assert "1 removed" in log and images.shape[0] == 5

    # same mtime, other content and size: rewritten, then its old mtime restored
    stat = os.stat(paths[1])
    assert cv2.imwrite(paths[1], np.zeros((40, 20, 3), np.uint8))
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(paths[1]).st_size != stat.st_size
    images, log = rebuilt(paths[1:] + extra, cache, counted_reads, caplog)
    assert "changed: size or mtime" in log and images[0].max() <= 8  # the new, black image


def test_cache_of_another_target_size_is_not_used(tmp_path: Path, counted_reads: list[str]) -> None:
    paths = write_images(tmp_path / "images", 4)
    small = decode(paths, tmp_path / "cache", size=(8, 4))
    large = decode(paths, tmp_path / "cache", size=(16, 8))
    assert len(counted_reads) == 8 and small.shape[2:] == (8, 4) and large.shape[2:] == (16, 8)
    # a file under the other size's name is refused by its header, not trusted by its name
    os.replace(cache_path(tmp_path / "cache", "unit-train", paths, (8, 4)),
               cache_path(tmp_path / "cache", "unit-train", paths, (16, 8)))
    assert torch.equal(decode(paths, tmp_path / "cache", size=(16, 8)), large) and len(counted_reads) == 12


@pytest.mark.parametrize("damage, message", [
    ("truncate", "truncated"),
    ("append", "trailing bytes"),
    ("flip_pixel", "corrupt (CRC-32 mismatch)"),
    ("garbage_header", "cannot be read"),
    ("magic", "wrong magic bytes"),
    ("empty", "wrong magic bytes"),
])
def test_damaged_cache_is_rebuilt_never_used(tmp_path: Path, counted_reads: list[str], caplog, damage: str,
                                             message: str) -> None:
    paths = write_images(tmp_path / "images", 4)
    cache = tmp_path / "cache"
    original = decode(paths, cache)
    file = cache_path(cache, "unit-train", paths, SIZE)
    data = bytearray(file.read_bytes())
    if damage == "truncate":
        data = data[:-100]
    elif damage == "append":
        data += b"\0"
    elif damage == "flip_pixel":
        data[-7] ^= 0xFF
    elif damage == "garbage_header":
        data[20:40] = b"\xff" * 20
    elif damage == "magic":
        data[:8] = b"PICKLE!!"
    else:
        data = bytearray()
    file.write_bytes(bytes(data))
    images, log = rebuilt(paths, cache, counted_reads, caplog)
    assert torch.equal(images, original) and message in log and str(file) in log
    assert counted_reads[-4:] == paths
    # the rebuilt file is valid again
    decode(paths, cache)
    assert len(counted_reads) == 8


def test_unreadable_image_names_the_file(tmp_path: Path) -> None:
    paths = write_images(tmp_path / "images", 3)
    Path(paths[1]).write_bytes(b"not a jpeg")
    with pytest.raises(DatasetError, match=f"Image {paths[1]} cannot be decoded"):
        decode_images(paths, SIZE, threads=2)
    os.remove(paths[2])
    with pytest.raises(DatasetError, match=f"Image {paths[2]} does not exist"):
        decode_images(paths, SIZE, threads=2)


def test_unwritable_cache_folder_only_warns(tmp_path: Path, caplog) -> None:
    paths = write_images(tmp_path / "images", 2)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with caplog.at_level(logging.WARNING, logger="reid.data"):
        images = decode(paths, blocker / "cache")
    assert images.shape == (2, 3, *SIZE) and "Could not write the decoded-image cache" in caplog.text


def test_cache_folder_setting(monkeypatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "lfm-reid" / "decoded"
    assert resolve_cache_dir("") == default_cache_dir()
    assert resolve_cache_dir("none") is None and resolve_cache_dir("None") is None
    assert resolve_cache_dir(str(tmp_path / "mine")) == tmp_path / "mine"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path(os.path.expanduser("~")) / ".cache" / "lfm-reid" / "decoded"


def test_progress_is_logged_with_rate_and_eta(tmp_path: Path, monkeypatch, caplog) -> None:
    paths = write_images(tmp_path / "images", 3)
    monkeypatch.setattr(tensor_cache, "PROGRESS_SECONDS", 0.0)  # a line per image
    with caplog.at_level(logging.INFO, logger="reid.data"):
        decode_images(paths, SIZE, name="progress-test", threads=1)
    assert "Decoding progress-test: 2/3 images" in caplog.text and "img/s, ETA" in caplog.text
