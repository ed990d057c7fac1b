"""``FeatureExtractor``: features of any images from a trained model, in three lines.

    from reid import FeatureExtractor
    extractor = FeatureExtractor("output/lfm_market/best.pth")   # or a release file from tools/export.py
    features = extractor(["a.jpg", "b.jpg"])                      # (2, D) float32 CPU tensor

The feature is the evaluator's: same resizing (INPUT.SIZE_TEST), post-BNNeck, mirrored-image averaging
with TEST.FLIP, L2-normalised with TEST.FEAT_NORM (so ``features @ features.T`` is the cosine similarity).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from yacs.config import CfgNode

from reid.export.exportable import load_exportable
from reid.export.preprocess import Preprocessor, split_inputs
from reid.utils.errors import DatasetError, ReIDError
from reid.utils.progress import Progress

DECODE_THREADS = min(8, os.cpu_count() or 1)  # OpenCV decodes without holding the GIL


@dataclass
class PathFeatures:
    """Features of the readable files among some paths, and why the others could not be read."""

    features: torch.Tensor  # (len(paths), D), row i for paths[i]
    paths: list[Path]  # the files that were read, in the order given
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, the reader's message)


class FeatureExtractor:
    """Features of images from a training checkpoint or a release file.

    Args:
        weights: a checkpoint written by tools/train.py or a release file from ``tools/export.py --format
            release``. Loading never runs code from the file (``torch.load(weights_only=True)``).
        config: None (the config stored with the weights), a config file or name in configs/, or a CfgNode.
        device: None picks CUDA when available, else the CPU. Inference runs in float32, under bf16
            autocast on CUDA when the config's TEST.AMP is on (as evaluation does).
        batch_size: images per forward pass.
        opts: ``KEY VALUE`` config overrides, e.g. ``["TEST.FLIP", "True"]``.

    Calling the extractor with image paths, OpenCV/numpy images (uint8 **BGR** like ``cv2.imread``, or
    grayscale; any size), tensors (**RGB** float in [0, 1] or uint8, (3, H, W) or (N, 3, H, W); any size)
    or a list mixing them returns an (N, D) float32 tensor **on the CPU**, always (``.numpy()`` is free).
    Bad inputs raise a ReIDError naming the file or describing the array. :meth:`extract_paths` instead
    skips image files that cannot be read and lists them, for long extractions.
    """

    def __init__(self, weights: str | Path, config: str | Path | CfgNode | None = None,
                 device: str | torch.device | None = None, batch_size: int = 64, opts: Sequence[str] = ()) -> None:
        if batch_size < 1:
            raise ReIDError(f"batch_size must be at least 1, got {batch_size}.")
        self.device = _resolve_device(device)
        self.model, self.cfg = load_exportable(weights, config, opts, self.device)
        self.batch_size = batch_size
        self.preprocess = Preprocessor(self.cfg)
        self.use_amp = self.device.type == "cuda" and self.cfg.TEST.AMP

    @property
    def feat_dim(self) -> int:
        return self.model.feat_dim

    def __call__(self, inputs: Any) -> torch.Tensor:
        return self._extract(split_inputs(inputs), skip_unreadable=False).features

    def extract_paths(self, paths: Sequence[str | os.PathLike], skip_unreadable: bool = True,
                      progress: Progress | None = None) -> PathFeatures:
        """Features of image files; with ``skip_unreadable`` a file that cannot be read or decoded (missing,
        corrupt, not an image) is left out and listed with the reason instead of stopping the batch, which
        is what a long extraction over many crops needs. Without it, the first such file raises.
        ``progress`` is told of every batch (count, rate, ETA)."""
        return self._extract([Path(p) for p in paths], skip_unreadable, progress)

    @torch.inference_mode()
    def _extract(self, items: list[Any], skip_unreadable: bool, progress: Progress | None = None) -> PathFeatures:
        features = [torch.empty(0, self.feat_dim)]
        kept, unreadable = [], []
        decode = self._decode_or_reason if skip_unreadable else self.preprocess.decode
        with ThreadPoolExecutor(DECODE_THREADS) as pool:
            for start in range(0, len(items), self.batch_size):
                chunk = items[start:start + self.batch_size]
                images = []
                for item, decoded in zip(chunk, pool.map(decode, chunk)):
                    if isinstance(decoded, str):  # the reason it could not be read
                        unreadable.append((item, decoded))
                    else:
                        kept.append(item)
                        images.append(decoded)
                if progress is not None:
                    progress.update(len(chunk))
                if not images:
                    continue
                batch = torch.stack([self.preprocess.to_model_input(image).to(self.device) for image in images])
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=self.use_amp):
                    features.append(self.model(batch).float().cpu())
        return PathFeatures(torch.cat(features), kept, unreadable)

    def _decode_or_reason(self, item: Any) -> Any:
        """The decoded image, or the message of the DatasetError that a missing or undecodable file raises."""
        try:
            return self.preprocess.decode(item)
        except DatasetError as exc:
            return str(exc)


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ReIDError(f"Unknown device {device!r}: use cpu, cuda or cuda:N.") from exc
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ReIDError(f"Device {device!r} was requested but CUDA is not available here; use cpu.")
    return resolved
