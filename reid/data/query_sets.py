"""Copies of a dataset whose query images are replaced (e.g. by adversarial ones), readable by every tool.

Only layouts that keep their queries in a folder of their own (the Market-1501 layout:
:class:`~reid.data.datasets.MarketStyleSource`) can be mirrored this way; list-file layouts (MSMT17) cannot.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import torch

from reid.data.datasets import DATASET_REGISTRY, MarketStyleSource, ReIDDataset
from reid.data.io import save_picture
from reid.utils.errors import ReIDError


def can_replace_queries(name: str) -> bool:
    """Whether the registered dataset ``name`` keeps its queries in a folder that a copy can replace."""
    source = DATASET_REGISTRY.get(name)
    return isinstance(source, type) and issubclass(source, MarketStyleSource)


def mirror_with_empty_queries(dataset: ReIDDataset, root: str | Path, out_root: Path) -> Path:
    """Mirror a Market-style dataset under ``out_root`` with an empty ``query/`` folder to fill; returns it.

    The other subset folders are symbolic links to the originals (copies where links are not allowed), so
    ``DATASETS.ROOT out_root`` evaluates the new queries against the clean gallery with any tool. A copy
    from an earlier run is replaced, so old and new images never mix.
    """
    if not can_replace_queries(dataset.name):
        raise ReIDError(f"Dataset {dataset.name!r} lists its queries in files, not a query/ folder: its queries "
                        "cannot be replaced by a folder of images.")
    source = Path(dataset.root)  # built as DATASETS.ROOT / one of the source's candidate folders
    try:
        relative = source.relative_to(root)
    except ValueError:
        relative = Path(source.name)
    target = out_root / relative
    query_name = DATASET_REGISTRY.get(dataset.name).subsets["query"]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    for entry in source.iterdir():
        if entry.name == query_name or entry.name.startswith("."):
            continue
        try:
            os.symlink(entry.resolve(), target / entry.name, target_is_directory=entry.is_dir())
        except OSError:
            (shutil.copytree if entry.is_dir() else shutil.copy2)(entry, target / entry.name)
    (target / query_name).mkdir()
    return target / query_name


def to_uint8_bgr(image: torch.Tensor) -> np.ndarray:
    """A (3, H, W) RGB float image in [0, 1] as an (H, W, 3) BGR uint8 array for OpenCV."""
    rgb = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    return np.ascontiguousarray(rgb[:, :, ::-1])


def write_image(image: torch.Tensor, path: Path) -> Path:
    """Write a (3, H, W) float RGB image in [0, 1] losslessly (the suffix picks the format; use .png: a JPEG
    would partly undo an adversarial perturbation)."""
    return save_picture(path, to_uint8_bgr(image), "image")
