"""Limits on what the toolkit reads: image pixels (from the header), image folders, config files."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from reid.config import load_config
from reid.data import io as image_io
from reid.data.io import get_max_image_pixels, image_size, read_image, set_max_image_pixels
from reid.export.image_files import scan_images
from reid.utils.errors import ConfigError, DatasetError

ROOT = Path(__file__).resolve().parents[1]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def write_uniform_png(path: Path, width: int, height: int) -> Path:
    """A one-colour 8-bit grayscale PNG, compressed row by row (never held decoded in memory)."""
    compressor, row = zlib.compressobj(1), b"\x00" * (width + 1)  # filter byte + one byte per pixel
    pixels = b"".join([compressor.compress(row) for _ in range(height)] + [compressor.flush()])
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", pixels)
                     + _png_chunk(b"IEND", b""))
    return path


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> Path:
    """20000x20000 pixels (1.2 GB once decoded to BGR) in under 2 MB on disk."""
    return write_uniform_png(tmp_path_factory.mktemp("bomb") / "0001_c1s1_000001_00.png", 20000, 20000)


MEASURE_RSS = """
import sys
from reid.data.io import read_image
from reid.utils.errors import DatasetError

def peak_kib():  # VmHWM: the process's peak resident memory
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

before = peak_kib()
try:
    read_image(sys.argv[1])
    print("decoded")
except DatasetError as exc:
    print("refused:", exc)
print("peak growth KiB:", peak_kib() - before)
"""


def test_huge_png_is_refused_from_its_header_with_low_memory(huge_png: Path, tmp_path: Path) -> None:
    assert huge_png.stat().st_size < 2_000_000
    script = tmp_path / "measure.py"
    script.write_text(MEASURE_RSS)
    result = subprocess.run([sys.executable, str(script), str(huge_png)], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    refusal, growth = result.stdout.strip().splitlines()
    assert refusal.startswith(f"refused: Image {huge_png} is 20000x20000 pixels (400.0 megapixels), more than the "
                              "50 megapixels allowed (INPUT.MAX_IMAGE_PIXELS)")
    assert int(growth.split()[-1]) < 50 * 1024  # decoding would have taken 1.2 GB


def test_pixel_cap_setter_parameter_and_config_key(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv(image_io.MAX_IMAGE_PIXELS_ENV, str(get_max_image_pixels()))  # undone after the test
    monkeypatch.setattr(image_io, "_max_image_pixels", get_max_image_pixels())
    path = tmp_path / "small.png"
    cv2.imwrite(str(path), np.zeros((20, 10, 3), np.uint8))
    assert read_image(path, max_pixels=200).shape == (20, 10, 3)
    with pytest.raises(DatasetError, match=r"small.png is 10x20 pixels \(0.0 megapixels\), more than the 0.000199 "):
        read_image(path, max_pixels=199)
    set_max_image_pixels(199)
    assert os.environ[image_io.MAX_IMAGE_PIXELS_ENV] == "199"  # loader workers started with spawn see it
    with pytest.raises(DatasetError, match="refused before decoding"):
        read_image(path)
    with pytest.raises(ValueError):
        set_max_image_pixels(0)
    assert load_config(None, ["INPUT.MAX_IMAGE_PIXELS", "1000"], freeze=False).INPUT.MAX_IMAGE_PIXELS == 1000
    with pytest.raises(ConfigError, match="INPUT.MAX_IMAGE_PIXELS must be 1 or more"):
        load_config(None, ["INPUT.MAX_IMAGE_PIXELS", "0"])


def test_new_processes_read_the_cap_from_the_environment(monkeypatch) -> None:
    """Loader workers started with spawn/forkserver do not inherit module state, only the environment,
    which set_max_image_pixels writes and the module reads at import."""
    monkeypatch.setenv(image_io.MAX_IMAGE_PIXELS_ENV, "12345")
    assert image_io._cap_from_env() == 12345
    for bad in ("0", "-3", "lots", ""):
        monkeypatch.setenv(image_io.MAX_IMAGE_PIXELS_ENV, bad)
        assert image_io._cap_from_env() == image_io.DEFAULT_MAX_IMAGE_PIXELS


def _write_with_pillow(path: Path, array: np.ndarray, **kwargs) -> None:
    Image.fromarray(array).save(path, **kwargs)


@pytest.mark.parametrize("suffix, writer", [
    (".jpg", "cv2"), (".png", "cv2"), (".bmp", "cv2"), (".tiff", "cv2"), (".webp", "cv2"),
    (".gif", "pil"), (".ppm", "pil"), ("_progressive.jpg", "pil"), ("_big_header.jpg", "pil"),
])
def test_every_format_is_measured_before_decoding(tmp_path: Path, suffix: str, writer: str) -> None:
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (30, 17, 3), dtype=np.uint8)
    path = tmp_path / f"image{suffix}"
    if writer == "cv2":
        assert cv2.imwrite(str(path), array)
    elif suffix == "_progressive.jpg":
        _write_with_pillow(path, array, progressive=True)
    elif suffix == "_big_header.jpg":  # 100 KB of metadata before the frame header: beyond the first read
        _write_with_pillow(path, array, icc_profile=os.urandom(100_000))
    else:
        _write_with_pillow(path, array)
    assert read_image(path, max_pixels=17 * 30).shape == (30, 17, 3)
    with pytest.raises(DatasetError, match=rf"{path.name} is 17x30 pixels"):
        read_image(path, max_pixels=17 * 30 - 1)


def test_header_parser_sizes() -> None:
    top_down_bmp = b"BM" + bytes(12) + struct.pack("<Iii", 40, 7, -5) + bytes(20)
    assert image_size(top_down_bmp) == (7, 5)
    os2_bmp = b"BM" + bytes(12) + struct.pack("<IHH", 12, 9, 4) + bytes(20)
    assert image_size(os2_bmp) == (9, 4)
    assert image_size(b"\xff\xd8\xff\xd9") is None  # no frame header
    assert image_size(b"GIF89a") is None  # left to Pillow


def test_unknown_format_is_refused_not_decoded(tmp_path: Path) -> None:
    path = tmp_path / "frame.pfm"  # OpenCV would decode it, but its size cannot be checked first
    assert cv2.imwrite(str(path), np.zeros((4, 4, 3), np.float32))
    with pytest.raises(DatasetError, match="frame.pfm cannot be decoded: its header is not that of an image format"):
        read_image(path)


def test_oversized_file_is_refused_before_reading(tmp_path: Path) -> None:
    path = tmp_path / "huge.jpg"
    with open(path, "wb") as f:
        f.truncate(4 * 1000 + image_io.METADATA_BYTES + 1)  # sparse: more than any 1000-pixel image needs
    with pytest.raises(DatasetError, match=r"huge.jpg is 16.0 MiB on disk, more than an image of at most 0.001 megap"):
        read_image(path, max_pixels=1000)


def test_truncated_jpeg_notice_is_kept_off_the_console(tmp_path: Path, capfd, monkeypatch) -> None:
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert read_image(cut).shape == (64, 32, 3)
    assert "Premature end of JPEG file" not in capfd.readouterr().err
    real_imread = cv2.imread

    def noisy_imread(*args):  # a real problem printed by the C library meanwhile must still be seen
        os.write(2, b"Premature end of JPEG file\nlibpng error: something real\n")
        return real_imread(*args)

    monkeypatch.setattr(cv2, "imread", noisy_imread)
    read_image(cut)
    err = capfd.readouterr().err
    assert "libpng error: something real" in err and "Premature end" not in err


def test_truncated_jpegs_read_in_threads_leave_stderr_where_it_was(tmp_path: Path, monkeypatch) -> None:
    # The decoding cache and the extractor read images in threads; each truncated JPEG redirects fd 2 for a
    # moment. Overlapping redirections would leave stderr pointing at a deleted temporary file.
    from concurrent.futures import ThreadPoolExecutor

    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), np.random.default_rng(0).integers(0, 256, (64, 32, 3), dtype=np.uint8))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    real_imread = cv2.imread

    def slow_imread(*args):  # widen the window in which fd 2 is redirected
        time.sleep(0.01)
        return real_imread(*args)

    monkeypatch.setattr(cv2, "imread", slow_imread)
    before = os.fstat(2)
    with ThreadPoolExecutor(8) as pool:
        shapes = list(pool.map(lambda _: read_image(cut).shape, range(64)))
    after = os.fstat(2)
    assert shapes == [(64, 32, 3)] * 64
    assert (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino)


def test_enormous_image_folder_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    for i in range(6):
        (tmp_path / ("sub" if i % 2 else ".") / f"{i}.jpg").write_bytes(b"")
    assert len(scan_images(tmp_path, max_files=6).images) == 6
    with pytest.raises(DatasetError, match=r"holds more than 5 files \(stopped counting at .*\): is it the right"):
        scan_images(tmp_path, max_files=5)


def test_oversized_config_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    path.write_text("SEED: 1\n" + "# padding\n" * 120_000)  # 1.2 MB
    with pytest.raises(ConfigError, match=r"Config file .*huge.yml is 1.1 MiB, more than the 1.0 MiB"):
        load_config(str(path))
    path.write_text("SEED: 1\n")
    assert load_config(str(path)).SEED == 1
