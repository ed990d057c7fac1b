"""Train and test data loaders built from the config.

Every batch is a dict: ``images`` (N, 3, H, W) float RGB in [0, 1] (normalised inside the model),
``pids`` and ``camids`` (LongTensor), ``paths`` (list of str) and ``index`` (LongTensor, position in
the loader's record list).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from yacs.config import CfgNode

from reid.data.datasets import ImageRecord, ReIDDataset, build_dataset, dataset_key
from reid.data.io import read_image
from reid.data.samplers import PKSampler
from reid.data.transforms import build_transforms
from reid.utils.errors import ConfigError, DatasetError


class ImageDataset(Dataset):
    """Records read with :func:`read_image` and passed through ``transform``."""

    def __init__(self, records: Sequence[ImageRecord], transform: Callable | None = None) -> None:
        self.records = list(records)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> dict:
        record = self.records[index]
        image = read_image(record.path)
        if self.transform is not None:
            image = self.transform(image)
        return {
            "images": image,
            "pids": record.pid,
            "camids": record.camid,
            "paths": record.path,
            "index": index,
        }


@dataclass
class TrainData:
    """The training loader and what the model and the loop need to know about its data."""

    loader: DataLoader
    sampler: PKSampler | DistributedSampler  # call set_epoch(epoch) before each epoch (or use self.set_epoch)
    num_classes: int  # identities over all DATASETS.TRAIN (pids are offset so they never collide)
    num_cameras: int  # cameras over all DATASETS.TRAIN (camids are offset the same way)
    datasets: dict[str, ReIDDataset]

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    # The trainer iterates the data itself: batches, their number, and the workers' seed generator.
    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self) -> torch.Generator | None:
        return self.loader.generator


@dataclass
class TestData:
    """A loader over query then gallery images of one dataset; the first ``num_query`` items are queries."""

    loader: DataLoader
    num_query: int
    dataset: ReIDDataset


def seed_worker(worker_id: int) -> None:
    """Seed numpy and random in each loader worker from its torch seed (distinct per worker and epoch)."""
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def _loader_kwargs(cfg: CfgNode) -> dict:
    # Workers are never persistent: a test loader is iterated once, and the train loader restarts its
    # workers every epoch so their seeds follow the epoch (exact resume).
    workers = cfg.DATALOADER.NUM_WORKERS
    return {
        "num_workers": workers,
        "pin_memory": torch.cuda.is_available() and not cfg.DEVICE.startswith("cpu"),
        "worker_init_fn": seed_worker if workers > 0 else None,
    }


def _resolved_seed(cfg: CfgNode) -> int:
    # A negative SEED means "random": use the seed the run actually drew (set into torch by the engine).
    return cfg.SEED if cfg.SEED >= 0 else torch.initial_seed()


def build_train_loader(cfg: CfgNode, rank: int = 0, world_size: int = 1) -> TrainData:
    """Merge the train subsets of DATASETS.TRAIN and batch them with the PK or a shuffled random sampler.

    With ``world_size`` > 1 each process gets SOLVER.IMS_PER_BATCH / world_size images per step. Give every
    process the same non-negative SEED so that they agree on the global batch order.
    """
    names = [dataset_key(name) for name in cfg.DATASETS.TRAIN]
    if not names or len(set(names)) != len(names):
        raise ConfigError(
            f"DATASETS.TRAIN must name at least one dataset, each once; got {tuple(cfg.DATASETS.TRAIN)}."
        )
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the number of processes "
            f"({world_size})."
        )
    datasets = {name: build_dataset(name, cfg.DATASETS.ROOT, verbose=rank == 0, needed=("train",),
                                    num_instances=cfg.DATALOADER.NUM_INSTANCE) for name in names}
    records: list[ImageRecord] = []
    pid_offset = cam_offset = 0
    for dataset in datasets.values():
        records += [ImageRecord(r.path, r.pid + pid_offset, r.camid + cam_offset) for r in dataset.train]
        pid_offset += dataset.num_train_pids  # training pids are 0..N-1
        cam_offset += max(r.camid for r in dataset.train) + 1  # camera ids may have gaps
    image_dataset = ImageDataset(records, build_transforms(cfg, is_train=True))

    seed = _resolved_seed(cfg)
    sampler: PKSampler | DistributedSampler
    if cfg.DATALOADER.SAMPLER == "pk":
        sampler = PKSampler(
            [r.pid for r in records],
            cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_INSTANCE,
            seed,
            rank,
            world_size,
        )
        batch_sampler = sampler
    else:
        sampler = DistributedSampler(
            image_dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        batch_sampler = BatchSampler(sampler, cfg.SOLVER.IMS_PER_BATCH // world_size, drop_last=True)
        if len(batch_sampler) == 0:
            raise DatasetError(
                f"The training set has {len(records)} images, too few for one batch of SOLVER.IMS_PER_BATCH "
                f"({cfg.SOLVER.IMS_PER_BATCH}) images."
            )
    # The generator fixes the workers' base seeds (hence the augmentations) per run and rank; the
    # trainer re-seeds it every epoch and workers restart each epoch (not persistent), so an epoch's
    # augmentations depend only on (seed, epoch, rank) and a resumed run replays them exactly.
    generator = torch.Generator().manual_seed((seed + rank) % 2**63)
    loader = DataLoader(
        image_dataset, batch_sampler=batch_sampler, generator=generator, **_loader_kwargs(cfg)
    )
    return TrainData(loader, sampler, pid_offset, cam_offset, datasets)


def build_image_loader(cfg: CfgNode, records: Sequence[ImageRecord]) -> DataLoader:
    """Test-transformed images of ``records`` in order, TEST.IMS_PER_BATCH at a time (``index``: position)."""
    return DataLoader(ImageDataset(records, build_transforms(cfg, is_train=False)),
                      batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, **_loader_kwargs(cfg))


def build_test_loader(cfg: CfgNode, name: str) -> TestData:
    """Query then gallery images of dataset ``name``, in order, TEST.IMS_PER_BATCH at a time."""
    dataset = build_dataset(name, cfg.DATASETS.ROOT, needed=("query", "gallery"))
    return TestData(build_image_loader(cfg, dataset.query + dataset.gallery), len(dataset.query), dataset)
