"""Loaders over decoded uint8 tensors: batches gathered and augmented on the device, no worker processes.

They yield the same batch dicts as the DataLoaders of :mod:`reid.data.loaders` (``images`` float32 in
[0, 1] on the loader's device; ``pids``, ``camids``, ``index`` int64 on the CPU; ``paths``), so the trainer
and the feature extraction consume either backend unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

import torch
from torchvision.transforms.v2 import functional as TF

from reid.data.batch_augment import AugmentParams, AugmentSettings, apply_params, draw_params, pad_images
from reid.data.cpu_threads import single_threaded
from reid.data.datasets import ImageRecord


def augmentation_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's augmentations on one rank; the same formula the trainer re-seeds loaders with.

    Depending only on (seed, epoch, rank) makes a resumed run draw what an uninterrupted one draws, and
    gives every DDP rank its own stream.
    """
    return ((seed * 1_000_003 + epoch) * 64 + rank) % 2**63


class RecordTable:
    """A tensor loader's records with their labels as tensors (``len`` = number of images)."""

    def __init__(self, records: Sequence[ImageRecord]) -> None:
        self.records = list(records)
        self.pids = torch.tensor([r.pid for r in self.records], dtype=torch.long)
        self.camids = torch.tensor([r.camid for r in self.records], dtype=torch.long)
        self.paths = [r.path for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def labels(self, index: torch.Tensor) -> dict:
        """``pids``, ``camids``, ``paths`` and ``index`` of the records at ``index`` (a CPU int64 tensor)."""
        return {"pids": self.pids[index], "camids": self.camids[index],
                "paths": [self.paths[i] for i in index.tolist()], "index": index}


def _check_images(images: torch.Tensor, records: Sequence[ImageRecord]) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or tuple(images.shape[:2]) != (len(records), 3):
        raise ValueError(f"expected uint8 images of shape ({len(records)}, 3, H, W), got {images.dtype} "
                         f"{tuple(images.shape)}")


class TensorTrainLoader:
    """Training batches from a uint8 (N, 3, H, W) tensor, indexed by a batch sampler, augmented on the device.

    ``batch_sampler`` yields lists of indices (the PK sampler, or a BatchSampler over a DistributedSampler);
    ``sampler`` is whichever of them has ``set_epoch``. Augmentations come from ``generator``, a CPU
    ``torch.Generator`` that :meth:`set_epoch` seeds from (seed, epoch, rank). The trainer's per-epoch
    ``loader.generator.manual_seed(...)`` uses the same formula, so either way an epoch's batches depend only
    on (seed, epoch, rank).
    """

    def __init__(self, images: torch.Tensor, records: Sequence[ImageRecord], batch_sampler: Iterable[list[int]],
                 sampler, settings: AugmentSettings, seed: int, rank: int = 0,
                 device: torch.device | str = "cpu", channels_last: bool = False) -> None:
        if tuple(images.shape[2:]) != settings.size:
            raise ValueError(f"images of size {tuple(images.shape[2:])} do not match the training size "
                             f"{settings.size}")
        _check_images(images, records)
        self.device = torch.device(device)
        self.dataset = RecordTable(records)
        # Padded where the images are (the host, from the cache), then moved: the device holds one copy.
        self.padded = pad_images(images, settings.padding).to(self.device)
        self.batch_sampler = batch_sampler
        self.sampler = sampler
        self.settings = settings
        self.fill = torch.tensor(settings.erase.fill, dtype=torch.float32, device=self.device)
        self.seed, self.rank = int(seed), int(rank)
        self.channels_last = channels_last
        self.generator = torch.Generator()
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch: the sampler's order and the augmentations' seed."""
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(epoch)
        self.generator.manual_seed(augmentation_seed(self.seed, epoch, self.rank))

    def __len__(self) -> int:
        return len(self.batch_sampler)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[dict]:
        for indices in self.batch_sampler:
            yield self.make_batch(indices)

    def make_batch(self, indices: Sequence[int]) -> dict:
        """The augmented batch of the records at ``indices``; draws from :attr:`generator`."""
        index = torch.as_tensor(indices, dtype=torch.long)
        with single_threaded(self.device):
            params = draw_params(self.generator, len(index), self.settings)
            # One host-to-device copy carries the indices and every parameter.
            packed = params.pack(index).to(self.device, non_blocking=True)
            device_index, device_params = AugmentParams.unpack(packed)
            images = apply_params(self.padded, device_index, device_params, self.settings, self.fill,
                                  self.channels_last)
        return {"images": images, **self.dataset.labels(index)}


class TensorTestLoader:
    """Query then gallery (or any records) from a uint8 tensor, in order, ``batch_size`` at a time.

    A batch's ``images`` are float32 in [0, 1] on the device of ``images`` (uint8 (N, 3, H, W), already at
    INPUT.SIZE_TEST), converted exactly as the workers path converts.
    """

    def __init__(self, images: torch.Tensor, records: Sequence[ImageRecord], batch_size: int,
                 channels_last: bool = False) -> None:
        _check_images(images, records)
        self.images = images
        self.dataset = RecordTable(records)
        self.batch_size = int(batch_size)
        self.channels_last = channels_last

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self) -> Iterator[dict]:
        images = self.images
        for start in range(0, len(self.dataset), self.batch_size):
            index = torch.arange(start, min(start + self.batch_size, len(self.dataset)))
            batch = images[start:start + len(index)]
            with single_threaded(images.device):
                if self.channels_last:
                    batch = batch.contiguous(memory_format=torch.channels_last)
                batch = TF.to_dtype(batch, torch.float32, scale=True)
            yield {"images": batch, **self.dataset.labels(index)}
