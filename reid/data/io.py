"""Image reading with OpenCV into RGB uint8 arrays; an unreadable file raises a DatasetError naming it.

Before anything is decoded, the image's size is read from its header and checked against a pixel cap
(:data:`DEFAULT_MAX_IMAGE_PIXELS`, INPUT.MAX_IMAGE_PIXELS): a 1 MB PNG can declare 20000x20000 pixels and
take gigabytes once decoded, and a camera feed or a dataset folder can hold such a file.
"""

from __future__ import annotations

import io
import logging
import os
import struct
import tempfile
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from reid.utils.errors import DatasetError, ReIDError
from reid.utils.fsio import atomic_write_bytes, format_bytes
from reid.utils.paths import describe_path_problem

# Loader workers already decode in parallel; OpenCV's own thread pool on top would oversubscribe the cores.
cv2.setNumThreads(0)
logger = logging.getLogger("reid.data")

DEFAULT_MAX_IMAGE_PIXELS = 50_000_000  # 50 megapixels: 7 times a 4K frame, 150 MB decoded
MAX_IMAGE_PIXELS_ENV = "REID_MAX_IMAGE_PIXELS"  # carries the cap into loader workers, however they start
# A file larger than this per allowed pixel, plus room for metadata, is refused before it is read.
BYTES_PER_ALLOWED_PIXEL = 4
METADATA_BYTES = 16 << 20
_HEADER_BYTES = 1 << 16  # JPEG headers (EXIF, ICC profiles) sit in the first segments, each under 64 KiB


def _cap_from_env() -> int:
    value = os.environ.get(MAX_IMAGE_PIXELS_ENV, "")
    return int(value) if value.isdigit() and int(value) > 0 else DEFAULT_MAX_IMAGE_PIXELS


_max_image_pixels = _cap_from_env()


def set_max_image_pixels(limit: int) -> None:
    """Set the pixel cap of :func:`read_image` for this process and the processes it starts (INPUT.MAX_IMAGE_PIXELS).

    The cap is also exported as ``REID_MAX_IMAGE_PIXELS``, so DataLoader workers started with ``spawn`` or
    ``forkserver`` (which do not inherit module state) apply the same cap.
    """
    global _max_image_pixels
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise ValueError(f"The image pixel cap must be a positive integer, got {limit!r}.")
    _max_image_pixels = limit
    os.environ[MAX_IMAGE_PIXELS_ENV] = str(limit)


def get_max_image_pixels() -> int:
    """The pixel cap :func:`read_image` applies when it is not given one."""
    return _max_image_pixels


def read_image(path: str | os.PathLike, max_pixels: int | None = None) -> np.ndarray:
    """The image at ``path`` as an RGB uint8 (H, W, 3) array; grayscale images get 3 equal channels.

    An image of more than ``max_pixels`` (default: :func:`get_max_image_pixels`) is refused from its
    header, before decoding, like any unreadable image. A truncated JPEG decodes to the part that is
    present (libjpeg fills the rest): it is kept, as decoders do, but logged once by path so that a
    damaged dataset does not go unnoticed.
    """
    path = os.fspath(path)
    limit = _max_image_pixels if max_pixels is None else max_pixels
    try:
        with open(path, "rb") as f:
            file_size = os.fstat(f.fileno()).st_size
            if file_size > BYTES_PER_ALLOWED_PIXEL * limit + METADATA_BYTES:
                raise DatasetError(
                    f"Image {path} is {format_bytes(file_size)} on disk, more than an image of at most "
                    f"{limit / 1e6:g} megapixels (INPUT.MAX_IMAGE_PIXELS) needs: refused before reading. Replace "
                    "or delete it, or raise the cap if such files are expected.")
            head = f.read(_HEADER_BYTES)
            size = image_size(head)
            if size is None:
                head += f.read()  # an image format without a quick parser here: Pillow identifies it
                size = _pillow_size(path, head)
            _check_pixels(path, size, limit)
            data = head if len(head) == file_size else head + f.read()
    except DatasetError:
        raise
    except OSError as exc:
        raise DatasetError(_unreadable_message(path, exc)) from None
    truncated = data[:2] == b"\xff\xd8" and b"\xff\xd9" not in data[-1024:]
    if truncated:
        # imdecode refuses a truncated JPEG; imread decodes the part that is present, as before
        image = _imread_without_libjpeg_eof_notice(path)
    else:
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)  # 3-channel BGR, alpha dropped
    if image is None:
        raise DatasetError(
            f"Image {path} cannot be decoded (corrupt, truncated or not an image). Replace or delete it."
        )
    if truncated and path not in _reported_truncated:
        _reported_truncated.add(path)
        logger.warning(f"Image {path} is a truncated JPEG (no end marker); using the part that decodes.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_reported_truncated: set[str] = set()


def _unreadable_message(path: str, exc: OSError) -> str:
    problem = describe_path_problem(path, expect="file")
    if problem is None:
        return f"Image {path} cannot be read: {exc.strerror or exc}. Check the file and its permissions."
    if problem.kind == "missing":
        # Said for both callers: a user's own image (a wrong path) and a dataset record (a damaged tree).
        return (f"Image {problem.text}: check the path (for an image of a dataset: the dataset folder may be "
                "incomplete, or may have been moved since it was listed).")
    if problem.kind in ("broken_link", "link_loop"):
        return f"Image {problem.text}. Fix the link or remove it."
    return f"Image {problem.text}."


def _check_pixels(path: str, size: tuple[int, int] | None, limit: int) -> None:
    if size is None:
        raise DatasetError(
            f"Image {path} cannot be decoded: its header is not that of an image format this toolkit reads "
            "(JPEG, PNG, BMP, TIFF, WebP, GIF, PPM/PGM, JPEG 2000...), or it is corrupt. Replace or delete it, "
            "or convert it to PNG or JPEG.")
    width, height = size
    if width * height > limit:
        raise DatasetError(
            f"Image {path} is {width}x{height} pixels ({width * height / 1e6:.1f} megapixels), more than the "
            f"{limit / 1e6:g} megapixels allowed (INPUT.MAX_IMAGE_PIXELS): refused before decoding, which would "
            f"take about {3 * width * height / 1e9:.1f} GB of memory. Replace or delete it, or raise the cap if "
            "such images are expected.")


def image_size(header: bytes) -> tuple[int, int] | None:
    """(width, height) from the first bytes of a JPEG, PNG or BMP file, or None (other format, or corrupt).

    No decoding and no Pillow: a few struct reads, so the check costs next to nothing per image.
    """
    if header[:8] == b"\x89PNG\r\n\x1a\n" and header[12:16] == b"IHDR" and len(header) >= 24:
        return struct.unpack(">II", header[16:24])
    if header[:2] == b"BM" and len(header) >= 26:
        dib_size = struct.unpack("<I", header[14:18])[0]
        if dib_size == 12:  # OS/2 BITMAPCOREHEADER: 16-bit unsigned sizes
            return struct.unpack("<HH", header[18:22])
        width, height = struct.unpack("<ii", header[18:26])
        return abs(width), abs(height)  # a negative height means rows stored top-down
    if header[:2] == b"\xff\xd8":
        return _jpeg_size(header)
    return None


# Start-of-frame markers carry the frame size; C4 (DHT), C8 (JPG) and CC (DAC) share the range but do not.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    position = 2
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None  # not at a marker: corrupt
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte
            position += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            position += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, or start of scan before any frame header: corrupt
            return None
        if marker in _JPEG_SOF:
            if position + 9 > len(data):
                return None
            height, width = struct.unpack(">HH", data[position + 5:position + 9])
            return width, height
        position += 2 + struct.unpack(">H", data[position + 2:position + 4])[0]
    return None


def _pillow_size(path: str, data: bytes) -> tuple[int, int] | None:
    """(width, height) of any format Pillow identifies (TIFF, WebP, GIF, PPM...) from its header, or None."""
    from PIL import Image, UnidentifiedImageError  # Pillow comes with torchvision; only rare formats get here

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own cap decides
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError:  # Pillow refuses to even report sizes above twice its own cap
        raise DatasetError(
            f"Image {path} is more than {2 * (Image.MAX_IMAGE_PIXELS or 0) / 1e6:.0f} megapixels (Pillow's limit for "
            "reading the header of this format): refused before decoding. Replace or delete it, or convert it to "
            "PNG or JPEG.") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


# File descriptor 2 is one per process: images decoded in threads (the decoding cache, the extractor) take
# turns, or one thread could save another's redirection as "the console" and leave stderr pointing at a
# deleted file.
_stderr_redirect = threading.Lock()


def _imread_without_libjpeg_eof_notice(path: str) -> np.ndarray | None:
    """cv2.imread with libjpeg's "Premature end of JPEG file" kept off the console (it is logged by path).

    libjpeg prints it from C straight to file descriptor 2, so it is caught there; anything else printed
    meanwhile (a real error) is passed on to stderr unchanged.
    """
    with _stderr_redirect:
        return _imread_capturing_stderr(path)


def _imread_capturing_stderr(path: str) -> np.ndarray | None:
    try:
        saved = os.dup(2)
    except OSError:
        return cv2.imread(path, cv2.IMREAD_COLOR)
    with tempfile.TemporaryFile() as capture:
        try:
            os.dup2(capture.fileno(), 2)
            image = cv2.imread(path, cv2.IMREAD_COLOR)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        printed = capture.read().decode("utf-8", "replace")
    others = [line for line in printed.splitlines(keepends=True)
              if line.strip() and line.strip() != "Premature end of JPEG file"]
    if others:
        os.write(2, "".join(others).encode())
    return image


def save_picture(path: str | os.PathLike, picture: np.ndarray, what: str = "picture",
                 params: Sequence[int] = ()) -> Path:
    """Encode a BGR uint8 ``picture`` in the format of ``path``'s suffix and write it atomically.

    Encoding happens in memory first, so an unknown suffix is refused before anything is written, and a full
    disk or an unwritable folder is one :class:`~reid.utils.fsio.WriteError` naming the file (cv2.imwrite
    only returns False); an existing file is replaced whole or not at all. ``what`` names the picture in
    messages, ``params`` are OpenCV's encoder flags (e.g. JPEG quality).
    """
    path = Path(path)
    try:
        encoded, data = cv2.imencode(path.suffix, picture, list(params))
    except cv2.error:
        encoded = False
    if not encoded:
        raise ReIDError(f"Cannot write the {what} {path}: OpenCV cannot encode a {path.suffix or 'suffix-less'!r} "
                        "file; use a .png or .jpg name.")
    return atomic_write_bytes(path, data.tobytes())
