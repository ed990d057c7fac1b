"""The tensor backend's loaders and the backend choice, on the fake Market tree of tests/test_datasets.py."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from reid.config.loader import load_config
from reid.data import (
    TensorTestLoader,
    TensorTrainLoader,
    augmentation_seed,
    build_test_data,
    build_test_loader,
    build_train_data,
    build_train_loader,
)
from reid.data import tensor_loaders
from reid.data.backend import choose_backend, decoded_bytes
from reid.data.cpu_threads import single_threaded
from reid.evaluation.evaluator import extract_features
from reid.utils.errors import ConfigError
from tests.test_datasets import make_market_tree


def config(root: Path, *overrides: str):
    return load_config(None, [
        "DATASETS.ROOT", str(root), "DATASETS.TRAIN", "market1501", "DATASETS.TEST", "market1501",
        "INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.SIZE_TEST", "(32, 16)", "INPUT.PADDING", "3",
        "SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_INSTANCE", "2", "DATALOADER.NUM_WORKERS", "0",
        "TEST.IMS_PER_BATCH", "5", "DEVICE", "cpu", "DATALOADER.CACHE_DIR", str(root / "cache"),
        "DATALOADER.BACKEND", "tensor", *overrides])


@pytest.fixture
def market(tmp_path: Path) -> Path:
    make_market_tree(tmp_path, images_per_pid=4)
    return tmp_path


@pytest.mark.parametrize("size", ["(32, 16)", "(8, 4)"])  # up- and down-scaling of the 16x8 images
def test_test_tensors_equal_the_workers_test_images(market: Path, size: str) -> None:
    cfg = config(market, "INPUT.SIZE_TEST", size)
    workers = build_test_loader(cfg, "market1501")
    tensor = build_test_data(cfg, "market1501", "cpu", backend="tensor")
    assert isinstance(tensor.loader, TensorTestLoader) and tensor.backend == "tensor"
    assert tensor.num_query == workers.num_query == 3 and len(tensor.loader) == len(workers.loader) == 4
    for a, b in zip(workers.loader, tensor.loader, strict=True):
        assert a["images"].dtype == b["images"].dtype == torch.float32
        assert torch.equal(a["images"], b["images"])  # same resize, same pixels, same conversion
        assert a["paths"] == b["paths"]
        for key in ("pids", "camids", "index"):
            assert torch.equal(a[key], b[key]), key
    assert len(tensor.loader.dataset) == 20 and tensor.loader.dataset.records == workers.loader.dataset.records


def test_feature_extraction_reads_the_test_tensors_without_a_dataloader(market: Path) -> None:
    cfg = config(market)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    workers = extract_features(model, build_test_loader(cfg, "market1501").loader, "cpu")
    tensor = extract_features(model, build_test_data(cfg, "market1501", "cpu").loader, "cpu")
    assert torch.equal(workers[0], tensor[0]) and workers[3] == tensor[3]
    assert torch.equal(workers[1], tensor[1]) and torch.equal(workers[2], tensor[2])


def test_tensor_train_batches(market: Path) -> None:
    data = build_train_data(config(market), device="cpu")
    assert data.backend == "tensor" and "within the budget" in data.backend_reason
    assert isinstance(data.loader, TensorTrainLoader) and data.num_classes == 4 and data.num_cameras == 6
    data.set_epoch(0)
    batches = list(data.loader)
    assert len(batches) == len(data.loader) == 2  # 4 ids x 4 images, P = 4 x K = 2
    batch = batches[0]
    assert set(batch) == {"images", "pids", "camids", "paths", "index"}
    assert batch["images"].shape == (8, 3, 32, 16) and batch["images"].dtype == torch.float32
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    for key in ("pids", "camids", "index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (8,)
    assert sorted(torch.bincount(batch["pids"]).tolist()) == [2, 2, 2, 2]
    records = data.loader.dataset.records
    assert [records[i].path for i in batch["index"]] == batch["paths"]
    assert [records[i].pid for i in batch["index"]] == batch["pids"].tolist()
    seen = torch.cat([b["index"] for b in batches])
    assert len(set(seen.tolist())) == 16  # every image once per epoch


def recorded_params(monkeypatch) -> list:
    """Every AugmentParams the tensor loaders draw, in order."""
    drawn = []
    original = tensor_loaders.draw_params

    def recording(*args, **kwargs):
        drawn.append(original(*args, **kwargs))
        return drawn[-1]

    monkeypatch.setattr(tensor_loaders, "draw_params", recording)
    return drawn


def test_ranks_draw_different_augmentations_of_disjoint_samples(market: Path, monkeypatch) -> None:
    drawn = recorded_params(monkeypatch)
    cfg = config(market)
    ranks = [build_train_data(cfg, rank=r, world_size=2, device="cpu") for r in range(2)]
    for epoch in range(2):
        per_rank = []
        for data in ranks:
            data.set_epoch(epoch)
            per_rank.append(list(data.loader))
        for batch0, batch1 in zip(*per_rank, strict=True):
            assert batch0["images"].shape[0] == batch1["images"].shape[0] == 4
            assert not set(batch0["index"].tolist()) & set(batch1["index"].tolist())  # disjoint samples
            assert not set(batch0["pids"].tolist()) & set(batch1["pids"].tolist())  # whole identities
    # rank 0's and rank 1's draws alternate per epoch: [r0 b0, r0 b1, r1 b0, r1 b1, ...]
    for epoch in range(2):
        r0, r1 = drawn[4 * epoch], drawn[4 * epoch + 2]
        assert not torch.equal(r0.pack(torch.zeros(4, dtype=torch.long)), r1.pack(torch.zeros(4, dtype=torch.long)))
    assert ranks[0].loader.generator.initial_seed() != ranks[1].loader.generator.initial_seed()


def test_epochs_replay_exactly_for_resume(market: Path) -> None:
    cfg = config(market, "INPUT.RE_PROB", "1.0")
    run = build_train_data(cfg, device="cpu")
    for epoch in range(3):  # an uninterrupted run up to epoch 2
        run.set_epoch(epoch)
        epoch_batches = list(run.loader)
    resumed = build_train_data(cfg, device="cpu")  # a new process resuming at epoch 2
    resumed.set_epoch(2)
    for a, b in zip(epoch_batches, resumed.loader, strict=True):
        assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])
    # the trainer's own per-epoch re-seeding of loader.generator (seed, epoch, rank) gives the same batches
    resumed.loader.generator.manual_seed((cfg.SEED * 1_000_003 + 2) * 64 + 0)
    resumed.sampler.set_epoch(2)
    assert all(torch.equal(a["images"], b["images"]) for a, b in zip(epoch_batches, resumed.loader))
    resumed.set_epoch(1)
    assert not torch.equal(next(iter(resumed.loader))["images"], epoch_batches[0]["images"])
    assert augmentation_seed(5, 2, 1) != augmentation_seed(5, 2, 0) != augmentation_seed(5, 3, 0)


def test_random_sampler_with_the_tensor_backend(market: Path) -> None:
    cfg = config(market, "DATALOADER.SAMPLER", "random")
    seen = []
    for rank in range(2):
        data = build_train_data(cfg, rank=rank, world_size=2, device="cpu")
        data.set_epoch(1)
        batches = list(data.loader)
        assert len(batches) == len(data.loader) == 2 and all(b["images"].shape[0] == 4 for b in batches)
        seen += [i for b in batches for i in b["index"].tolist()]
    assert len(set(seen)) == 16


def test_auto_falls_back_to_workers_over_budget_and_says_why(market: Path, caplog) -> None:
    cfg = config(market, "DATALOADER.BACKEND", "auto", "DATALOADER.TENSOR_BUDGET_GB", "0.00001")
    with caplog.at_level(logging.INFO, logger="reid.data"):
        data = build_train_data(cfg, device="cpu")
    assert data.backend == "workers" and isinstance(data.loader, DataLoader)
    assert "falling back to the loader workers" in data.backend_reason
    assert "Data backend: workers (DATALOADER.BACKEND auto" in caplog.text and "over the budget" in caplog.text
    # the train (16 padded) and test (20) images were counted
    assert f"{(decoded_bytes(16, (32, 16), 3) + decoded_bytes(20, (32, 16))) / 2**30:.2f} GiB" in caplog.text
    fits = build_train_data(config(market, "DATALOADER.BACKEND", "auto"), device="cpu")
    assert fits.backend == "tensor"
    workers = build_train_data(config(market, "DATALOADER.BACKEND", "workers"), device="cpu")
    assert workers.backend == "workers" and workers.backend_reason == "DATALOADER.BACKEND is workers"
    assert build_test_data(cfg, "market1501", "cpu").backend == "workers"  # the test set alone is over it too


def test_choose_backend() -> None:
    memory = (8 * 2**30, "test RAM")
    assert choose_backend("auto", 3 * 2**30, "cpu", memory=memory)[0] == "tensor"  # under half of 8 GiB
    backend, reason = choose_backend("auto", 5 * 2**30, "cpu", memory=memory)
    assert backend == "workers" and "5.00 GiB" in reason and "half of the test RAM" in reason
    backend, reason = choose_backend("auto", 5 * 2**30, "cpu", budget_gb=6, memory=memory)
    assert backend == "tensor" and "DATALOADER.TENSOR_BUDGET_GB 6" in reason
    backend, reason = choose_backend("tensor", 5 * 2**30, "cpu", memory=memory)
    assert backend == "tensor" and "over the budget" in reason and "as asked" in reason
    assert choose_backend("workers", 1, "cpu", memory=memory)[0] == "workers"
    assert choose_backend("auto", 1, "cpu", memory=(0, "unknown RAM"))[0] == "workers"
    with pytest.raises(ValueError, match="unknown data backend"):
        choose_backend("gpu", 1, "cpu", memory=memory)
    assert decoded_bytes(10, (256, 128), 10) == 10 * 3 * 276 * 148


@pytest.mark.parametrize("key, value, message", [
    ("INPUT.RE_STYLE", "fastreid", "INPUT.RE_STYLE is 'fastreid'"),
    ("DATALOADER.BACKEND", "gpu", "DATALOADER.BACKEND is 'gpu'"),
    ("DATALOADER.TENSOR_BUDGET_GB", "-1", "DATALOADER.TENSOR_BUDGET_GB must be 0"),
])
def test_config_checks(key: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_config(None, [key, value])


def test_workers_backend_is_unchanged(market: Path) -> None:
    cfg = config(market, "DATALOADER.BACKEND", "workers")
    data, direct = build_train_data(cfg, device="cpu"), build_train_loader(cfg)
    for d in (data, direct):
        d.set_epoch(0)
    torch.manual_seed(0)
    a = next(iter(data.loader))
    torch.manual_seed(0)
    b = next(iter(direct.loader))
    assert torch.equal(a["images"], b["images"]) and torch.equal(a["index"], b["index"])


def test_single_threaded_restores_the_thread_count() -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        with single_threaded("cpu"):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
        with pytest.raises(RuntimeError), single_threaded(torch.device("cpu")):
            raise RuntimeError
        assert torch.get_num_threads() == 2
        with single_threaded("cuda"):  # device work is not affected
            assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
