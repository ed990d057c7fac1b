"""Image reading with OpenCV into RGB uint8 arrays; an unreadable file raises a DatasetError naming it."""

from __future__ import annotations

import os

import cv2
import numpy as np

from reid.utils.errors import DatasetError

# Loader workers already decode in parallel; OpenCV's own thread pool on top would oversubscribe the cores.
cv2.setNumThreads(0)


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at ``path`` as an RGB uint8 (H, W, 3) array; grayscale images get 3 equal channels."""
    path = os.fspath(path)
    if not os.path.isfile(path):  # checked first: OpenCV would only print a warning and return None
        raise DatasetError(f"Image {path} does not exist; the dataset folder may be incomplete or was moved.")
    image = cv2.imread(path, cv2.IMREAD_COLOR)  # always 3-channel BGR (grayscale expanded, alpha dropped)
    if image is None:
        raise DatasetError(
            f"Image {path} cannot be decoded (corrupt, truncated or not an image). Replace or delete it."
        )
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
