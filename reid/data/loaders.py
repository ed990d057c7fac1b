"""Train and test data loaders built from the config, for either data backend (DATALOADER.BACKEND).

Every batch is a dict: ``images`` (N, 3, H, W) float RGB in [0, 1] (normalised inside the model),
``pids`` and ``camids`` (LongTensor), ``paths`` (list of str) and ``index`` (LongTensor, position in
the loader's record list).

- ``workers``: :func:`build_train_loader` / :func:`build_test_loader`, torch DataLoaders whose worker
  processes read, resize and augment every image again in every epoch.
- ``tensor``: images decoded once (:mod:`reid.data.tensor_cache`), kept as uint8 tensors on the device and
  augmented a batch at a time there (:mod:`reid.data.tensor_loaders`).

:func:`build_train_data` and :func:`build_test_data` pick the backend (:func:`plan_backend`) and return the
same :class:`TrainData` / :class:`TestData` for both.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler
from yacs.config import CfgNode

from reid.data.backend import choose_backend, decoded_bytes
from reid.data.batch_augment import augment_settings
from reid.data.datasets import ImageRecord, ReIDDataset, build_dataset, dataset_key
from reid.data.io import read_image
from reid.data.samplers import PKSampler
from reid.data.tensor_cache import decode_images, resolve_cache_dir
from reid.data.tensor_loaders import TensorTestLoader, TensorTrainLoader
from reid.data.transforms import build_transforms
from reid.utils.errors import ConfigError, DatasetError

logger = logging.getLogger("reid.data")

TEST_SUBSETS = ("query", "gallery")  # what an evaluation reads of a dataset


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

    loader: DataLoader | TensorTrainLoader
    sampler: PKSampler | DistributedSampler  # call set_epoch(epoch) before each epoch (or use self.set_epoch)
    num_classes: int  # identities over all DATASETS.TRAIN (pids are offset so they never collide)
    num_cameras: int  # cameras over all DATASETS.TRAIN (camids are offset the same way)
    datasets: dict[str, ReIDDataset]
    backend: str = "workers"  # "workers" or "tensor"
    backend_reason: str = ""  # why (for the log)

    def set_epoch(self, epoch: int) -> None:
        """The sampler's epoch and, with the tensor backend, the augmentations' seed (seed, epoch, rank)."""
        if isinstance(self.loader, TensorTrainLoader):
            self.loader.set_epoch(epoch)
        else:
            self.sampler.set_epoch(epoch)

    # The trainer iterates the data itself: batches, their number, and the workers' seed generator.
    def __iter__(self):
        return iter(self.loader)

    def __len__(self) -> int:
        return len(self.loader)

    @property
    def generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)


@dataclass
class TestData:
    """A loader over query then gallery images of one dataset; the first ``num_query`` items are queries."""

    loader: DataLoader | TensorTestLoader
    num_query: int
    dataset: ReIDDataset
    backend: str = "workers"


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
    """The workers backend: merge the train subsets of DATASETS.TRAIN and batch them with the PK or a shuffled
    random sampler in a DataLoader.

    With ``world_size`` > 1 each process gets SOLVER.IMS_PER_BATCH / world_size images per step. Give every
    process the same non-negative SEED so that they agree on the global batch order.
    """
    return _workers_train_data(cfg, *_train_records(cfg, rank), rank, world_size)


def _workers_train_data(cfg: CfgNode, records: list[ImageRecord], datasets: dict[str, ReIDDataset], num_classes: int,
                        num_cameras: int, rank: int, world_size: int) -> TrainData:
    image_dataset = ImageDataset(records, build_transforms(cfg, is_train=True))
    seed = _resolved_seed(cfg)
    sampler, batch_sampler = _train_sampler(cfg, records, seed, rank, world_size)
    # The generator fixes the workers' base seeds (hence the augmentations) per run and rank; the
    # trainer re-seeds it every epoch and workers restart each epoch (not persistent), so an epoch's
    # augmentations depend only on (seed, epoch, rank) and a resumed run replays them exactly.
    generator = torch.Generator().manual_seed((seed + rank) % 2**63)
    loader = DataLoader(
        image_dataset, batch_sampler=batch_sampler, generator=generator, **_loader_kwargs(cfg)
    )
    return TrainData(loader, sampler, num_classes, num_cameras, datasets)


def _train_records(cfg: CfgNode, rank: int) -> tuple[list[ImageRecord], dict[str, ReIDDataset], int, int]:
    """The merged train records (pids and camids offset per dataset), the datasets, #identities, #cameras."""
    names = [dataset_key(name) for name in cfg.DATASETS.TRAIN]
    if not names or len(set(names)) != len(names):
        raise ConfigError(
            f"DATASETS.TRAIN must name at least one dataset, each once; got {tuple(cfg.DATASETS.TRAIN)}."
        )
    datasets = {name: build_dataset(name, cfg.DATASETS.ROOT, verbose=rank == 0, needed=("train",),
                                    num_instances=cfg.DATALOADER.NUM_INSTANCE) for name in names}
    records: list[ImageRecord] = []
    pid_offset = cam_offset = 0
    for dataset in datasets.values():
        records += [ImageRecord(r.path, r.pid + pid_offset, r.camid + cam_offset) for r in dataset.train]
        pid_offset += dataset.num_train_pids  # training pids are 0..N-1
        cam_offset += max(r.camid for r in dataset.train) + 1  # camera ids may have gaps
    return records, datasets, pid_offset, cam_offset


def _train_sampler(cfg: CfgNode, records: Sequence[ImageRecord], seed: int, rank: int,
                   world_size: int) -> tuple[PKSampler | DistributedSampler, PKSampler | BatchSampler]:
    """(the sampler with set_epoch, the batch sampler yielding index lists) of DATALOADER.SAMPLER."""
    if cfg.SOLVER.IMS_PER_BATCH % world_size:
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH ({cfg.SOLVER.IMS_PER_BATCH}) must be divisible by the number of processes "
            f"({world_size})."
        )
    if cfg.DATALOADER.SAMPLER == "pk":
        sampler = PKSampler(
            [r.pid for r in records],
            cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_INSTANCE,
            seed,
            rank,
            world_size,
        )
        return sampler, sampler
    random_sampler = DistributedSampler(
        range(len(records)), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
    )
    batch_sampler = BatchSampler(random_sampler, cfg.SOLVER.IMS_PER_BATCH // world_size, drop_last=True)
    if len(batch_sampler) == 0:
        raise DatasetError(
            f"The training set has {len(records)} images, too few for one batch of SOLVER.IMS_PER_BATCH "
            f"({cfg.SOLVER.IMS_PER_BATCH}) images."
        )
    return random_sampler, batch_sampler


def build_image_loader(cfg: CfgNode, records: Sequence[ImageRecord]) -> DataLoader:
    """Test-transformed images of ``records`` in order, TEST.IMS_PER_BATCH at a time (``index``: position)."""
    return DataLoader(ImageDataset(records, build_transforms(cfg, is_train=False)),
                      batch_size=cfg.TEST.IMS_PER_BATCH, shuffle=False, **_loader_kwargs(cfg))


def build_test_loader(cfg: CfgNode, name: str) -> TestData:
    """Query then gallery images of dataset ``name``, in order, TEST.IMS_PER_BATCH at a time."""
    return _workers_test_data(cfg, build_dataset(name, cfg.DATASETS.ROOT, needed=TEST_SUBSETS))


def _workers_test_data(cfg: CfgNode, dataset: ReIDDataset) -> TestData:
    return TestData(build_image_loader(cfg, dataset.query + dataset.gallery), len(dataset.query), dataset)


def plan_backend(cfg: CfgNode, device: torch.device | str, num_train: int = 0,
                 num_test: Sequence[int] = ()) -> tuple[str, str]:
    """(backend, reason) for ``num_train`` training and ``num_test`` test images (one count per test set).

    The tensor backend holds the training set zero-padded by INPUT.PADDING at INPUT.SIZE_TRAIN and every
    test set at INPUT.SIZE_TEST, all on ``device``.
    """
    needed = decoded_bytes(num_train, cfg.INPUT.SIZE_TRAIN, cfg.INPUT.PADDING) if num_train else 0
    needed += sum(decoded_bytes(n, cfg.INPUT.SIZE_TEST) for n in num_test)
    return choose_backend(cfg.DATALOADER.BACKEND, needed, device, cfg.DATALOADER.TENSOR_BUDGET_GB)


def build_train_data(cfg: CfgNode, rank: int = 0, world_size: int = 1,
                     device: torch.device | str = "cpu") -> TrainData:
    """The training data of DATALOADER.BACKEND for ``device`` (``auto`` decides and logs why).

    Either backend returns the same :class:`TrainData`; its ``loader`` yields the same batches' keys. With
    the tensor backend, the images of the training batches are already on ``device``, in channels_last
    when SOLVER.CHANNELS_LAST on CUDA. The budget counts the test sets of DATASETS.TEST too, so that
    :func:`build_test_data` with ``backend=data.backend`` can keep them beside the training set.
    """
    device = torch.device(device)
    records, datasets, num_classes, num_cameras = _train_records(cfg, rank)
    test_counts = [_num_test_images(cfg, name, datasets) for name in cfg.DATASETS.TEST]
    backend, reason = plan_backend(cfg, device, len(records), test_counts)
    if rank == 0:
        logger.info(f"Data backend: {backend} ({reason}).")
    if backend == "workers":
        data = _workers_train_data(cfg, records, datasets, num_classes, num_cameras, rank, world_size)
        data.backend_reason = reason
        return data
    seed = _resolved_seed(cfg)
    sampler, batch_sampler = _train_sampler(cfg, records, seed, rank, world_size)
    images = decode_images([r.path for r in records], cfg.INPUT.SIZE_TRAIN, name="+".join(datasets) + "-train",
                           cache_dir=resolve_cache_dir(cfg.DATALOADER.CACHE_DIR))
    loader = TensorTrainLoader(images, records, batch_sampler, sampler, augment_settings(cfg), seed, rank, device,
                               channels_last=device.type == "cuda" and cfg.SOLVER.CHANNELS_LAST)
    return TrainData(loader, sampler, num_classes, num_cameras, datasets, backend, reason)


def build_test_data(cfg: CfgNode, name: str, device: torch.device | str = "cpu",
                    backend: str | None = None) -> TestData:
    """Query then gallery images of dataset ``name`` for ``backend`` (None: DATALOADER.BACKEND for this set).

    With the tensor backend the images are decoded (or loaded from the cache) once and kept on ``device``:
    keep the returned TestData to evaluate again without decoding.
    """
    device = torch.device(device)
    if backend not in (None, "workers", "tensor"):
        raise ValueError(f"backend must be None, 'workers' or 'tensor', got {backend!r}")
    dataset = build_dataset(name, cfg.DATASETS.ROOT, needed=TEST_SUBSETS)
    if backend is None:
        backend, reason = plan_backend(cfg, device, num_test=[dataset.num_query + dataset.num_gallery])
        logger.info(f"Data backend for {name}: {backend} ({reason}).")
    if backend == "workers":
        return _workers_test_data(cfg, dataset)
    records = dataset.query + dataset.gallery
    images = decode_images([r.path for r in records], cfg.INPUT.SIZE_TEST, name=f"{name}-test",
                           cache_dir=resolve_cache_dir(cfg.DATALOADER.CACHE_DIR))
    loader = TensorTestLoader(images.to(device), records, cfg.TEST.IMS_PER_BATCH)
    return TestData(loader, dataset.num_query, dataset, "tensor")


def _num_test_images(cfg: CfgNode, name: str, parsed: dict[str, ReIDDataset]) -> int:
    dataset = parsed.get(dataset_key(name))
    if dataset is None:
        dataset = build_dataset(name, cfg.DATASETS.ROOT, verbose=False, needed=TEST_SUBSETS)
    return dataset.num_query + dataset.num_gallery
