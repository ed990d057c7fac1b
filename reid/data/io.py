"""Image reading with OpenCV into RGB uint8 arrays; an unreadable file raises a DatasetError naming it."""

from __future__ import annotations

import logging
import os

import cv2
import numpy as np

from reid.utils.errors import DatasetError

# Loader workers already decode in parallel; OpenCV's own thread pool on top would oversubscribe the cores.
cv2.setNumThreads(0)
logger = logging.getLogger("reid.data")


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as an RGB uint8 (H, W, 3) array; grayscale images get 3 equal channels.

    A truncated JPEG decodes to the part that is present (libjpeg fills the rest): it is kept, as
    decoders do, but logged once by path so that a damaged dataset does not go unnoticed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):  # checked first: OpenCV would only print a warning and return None
        # Said for both callers: a user's own image (a wrong path) and a dataset record (a damaged tree).
        raise DatasetError(f"Image {path} does not exist: check the path (for an image of a dataset: the dataset "
                           "folder may be incomplete, or may have been moved since it was listed).")
    # imread (not imdecode, which refuses them) decodes truncated JPEGs; 3-channel BGR, alpha dropped
    image = cv2.imread(path, cv2.IMREAD_COLOR)
    if image is None:
        raise DatasetError(
            f"Image {path} cannot be decoded (corrupt, truncated or not an image). Replace or delete it."
        )
    if path not in _reported_truncated and _is_truncated_jpeg(path):
        _reported_truncated.add(path)
        logger.warning(f"Image {path} is a truncated JPEG (no end marker); using the part that decodes.")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


_reported_truncated: set[str] = set()


def _is_truncated_jpeg(path: str) -> bool:
    """A JPEG whose end-of-image marker is missing from its tail (entropy data cannot contain FF D9)."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return False
        f.seek(max(0, os.fstat(f.fileno()).st_size - 1024))
        return b"\xff\xd9" not in f.read()
