"""Train/test loaders on fake Market and Duke trees with the real config; num_workers=0 (one test uses 1)."""

from __future__ import annotations

from pathlib import Path

import torch

from reid.config.loader import load_config
from reid.data import build_test_loader, build_train_loader
from tests.test_datasets import make_duke_tree, make_market_tree


def config(root: Path, *overrides: str):
    return load_config(
        None,
        [
            "DATASETS.ROOT",
            str(root),
            "DATASETS.TRAIN",
            "market1501",
            "DATASETS.TEST",
            "market1501",
            "INPUT.SIZE_TRAIN",
            "(32, 16)",
            "INPUT.SIZE_TEST",
            "(32, 16)",
            "SOLVER.IMS_PER_BATCH",
            "8",
            "DATALOADER.NUM_INSTANCE",
            "2",
            "DATALOADER.NUM_WORKERS",
            "0",
            "TEST.IMS_PER_BATCH",
            "5",
            "DEVICE",
            "cpu",
            *overrides,
        ],
    )


def test_pk_train_loader_batch(tmp_path: Path) -> None:
    make_market_tree(tmp_path)
    data = build_train_loader(config(tmp_path))
    assert data.num_classes == 4 and data.num_cameras == 6 and list(data.datasets) == ["market1501"]
    data.set_epoch(0)
    batch = next(iter(data.loader))
    assert batch["images"].shape == (8, 3, 32, 16) and batch["images"].dtype == torch.float32
    assert 0 <= batch["images"].min() and batch["images"].max() <= 1
    for key in ("pids", "camids", "index"):
        assert batch[key].dtype == torch.int64 and batch[key].shape == (8,)
    assert len(batch["paths"]) == 8 and all(Path(p).is_file() for p in batch["paths"])
    assert sorted(torch.bincount(batch["pids"]).tolist()) == [2, 2, 2, 2]  # P = 4 ids x K = 2
    records = data.loader.dataset.records
    assert [records[i].path for i in batch["index"]] == batch["paths"]


def test_merged_train_sets_get_offset_ids_and_cameras(tmp_path: Path) -> None:
    make_market_tree(tmp_path)
    make_duke_tree(tmp_path)
    data = build_train_loader(config(tmp_path, "DATASETS.TRAIN", "('market1501', 'dukemtmc')"))
    assert data.num_classes == 4 + 3 and data.num_cameras == 6 + 8
    records = data.loader.dataset.records
    duke = [r for r in records if "DukeMTMC-reID" in r.path]
    assert {r.pid for r in duke} == {4, 5, 6} and {r.camid for r in duke} == {6, 13}
    assert {r.pid for r in records if r not in duke} == {0, 1, 2, 3}


def test_random_sampler_splits_batch_over_ranks(tmp_path: Path) -> None:
    make_market_tree(tmp_path)
    cfg = config(tmp_path, "DATALOADER.SAMPLER", "random")
    ranks = [build_train_loader(cfg, rank=r, world_size=2) for r in range(2)]
    seen = []
    for data in ranks:
        data.set_epoch(1)
        batches = list(data.loader)
        assert len(batches) == len(data.loader) == 1 and batches[0]["images"].shape[0] == 4
        seen += batches[0]["index"].tolist()
    assert len(set(seen)) == 8  # the ranks draw disjoint images


def test_test_loader_is_query_then_gallery(tmp_path: Path) -> None:
    make_market_tree(tmp_path)
    test = build_test_loader(config(tmp_path), "market1501")
    assert test.num_query == 3 and test.dataset.num_gallery == 17
    batches = list(test.loader)
    assert [len(b["paths"]) for b in batches] == [5, 5, 5, 5]
    paths = [p for b in batches for p in b["paths"]]
    assert paths == [r.path for r in test.dataset.query + test.dataset.gallery]
    again = torch.cat([b["images"] for b in test.loader])
    assert torch.equal(torch.cat([b["images"] for b in batches]), again)  # no augmentation at test time


def test_train_loader_with_a_worker_process(tmp_path: Path) -> None:
    make_market_tree(tmp_path)
    data = build_train_loader(config(tmp_path, "DATALOADER.NUM_WORKERS", "1"))
    assert not data.loader.persistent_workers  # workers restart each epoch so their seeds follow it
    for epoch in range(2):
        data.set_epoch(epoch)
        assert sum(b["images"].shape[0] for b in data.loader) == 8 * len(data.loader)
