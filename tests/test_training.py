"""End-to-end training on the synthetic domains: loss falls, resume is exact, NaN stops, DDP runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from reid.config import load_config
from reid.engine.trainer import NonFiniteLossError
from reid.engine.run import setup_run
from reid.engine.training import train
from reid.modeling.losses import ReIDLoss
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import CheckpointError
from tests.conftest import tiny_train_opts

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.mark.slow
def test_lfm_training_end_to_end(synthetic_root, tmp_path):
    out = tmp_path / "lfm"
    cfg = load_config("lfm_synthetic.yml", tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "4"))
    results = train(cfg)
    assert set(results) == {"synthetic_market", "synthetic_duke"}  # same- and cross-domain
    for metrics in results.values():
        assert 0.0 <= metrics["mAP"] <= 1.0 and len(metrics["cmc"]) == cfg.TEST.MAX_RANK
    records = read_jsonl(out / "metrics.jsonl")
    train_records = [r for r in records if r["type"] == "train"]
    assert {"loss_ce", "loss_triplet", "acc", "lr", "img_per_s"} <= set(train_records[0])
    first, last = train_records[0]["loss"], train_records[-1]["loss"]
    assert last < first, f"loss did not fall: {first:.3f} -> {last:.3f}"
    assert any(r["type"] == "eval" for r in records)
    for name in ("config.yaml", "log.txt", "last.pth", "best.pth", "results.json"):
        assert (out / name).is_file(), name
    assert load_config(out / "config.yaml") == cfg  # the saved config reproduces the run


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["tensor", "workers"])
def test_resume_reaches_the_same_weights(synthetic_root, tmp_path, backend):
    common = ["MODEL.REGULARIZER.NAME", "lfm", "DATASETS.TEST", "synthetic_market", "DATALOADER.BACKEND", backend]
    full = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "full", *common))
    train(full)
    half = load_config("bot_synthetic.yml",
                       tiny_train_opts(synthetic_root, tmp_path / "half", *common, "SOLVER.MAX_EPOCHS", "1"))
    train(half)
    # A resume with a config that does not fit the checkpoint fails and keeps the run's config.
    saved = (tmp_path / "half" / "config.yaml").read_text()
    wrong = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "half", *common,
                                                             "MODEL.BACKBONE", "resnet34"))
    with pytest.raises(CheckpointError, match="config the run was started with"):
        train(wrong, resume=True)
    assert (tmp_path / "half" / "config.yaml").read_text() == saved
    resumed = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "half", *common))
    results = train(resumed, resume=True)
    a = load_checkpoint(tmp_path / "full" / "last.pth")
    b = load_checkpoint(tmp_path / "half" / "last.pth")
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    # Resuming a finished run trains nothing and keeps its results.
    summary = (tmp_path / "half" / "results.json").read_text()
    assert train(resumed, resume=True) == results and results
    assert (tmp_path / "half" / "results.json").read_text() == summary
    assert load_checkpoint(tmp_path / "half" / "last.pth")["iteration"] == b["iteration"]


def test_negative_seed_draws_one_and_saves_it(tmp_path):
    cfg = load_config(None, ["SEED", "-1", "OUTPUT_DIR", str(tmp_path)])
    setup_run(cfg)
    assert cfg.SEED >= 0 and cfg.is_frozen()
    assert load_config(tmp_path / "config.yaml").SEED == cfg.SEED  # the saved config replays the run


def test_non_finite_loss_stops_with_context(synthetic_root, tmp_path, monkeypatch):
    original = ReIDLoss.forward
    calls = {"n": 0}

    def poisoned(self, outputs, labels):
        calls["n"] += 1
        losses = original(self, outputs, labels)
        if calls["n"] == 2:
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return losses

    monkeypatch.setattr(ReIDLoss, "forward", poisoned)
    cfg = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "nan"))
    with pytest.raises(NonFiniteLossError, match=r"iteration 2: loss_ce=nan, loss_triplet=.*Last checkpoint"):
        train(cfg)


def test_missing_test_dataset_fails_before_training(synthetic_root, tmp_path):
    from reid.utils.errors import DatasetError

    opts = tiny_train_opts(synthetic_root, tmp_path / "x", "DATASETS.TEST", "('synthetic_market', 'dukemtmc')")
    cfg = load_config("bot_synthetic.yml", opts)
    with pytest.raises(DatasetError, match="DukeMTMC-reID"):
        train(cfg)
    assert not (tmp_path / "x" / "last.pth").exists()


@pytest.mark.slow
def test_ddp_two_cpu_processes(synthetic_root, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(REPO / "tools" / "train.py"), "--config", "bot_synthetic.yml",
           *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TEST", "synthetic_market",
                            "MODEL.LOSSES", "('ce', 'triplet', 'center')")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    records = [r for r in read_jsonl(out / "metrics.jsonl") if r["type"] == "train"]
    iters = [r["iter"] for r in records]
    assert iters == sorted(set(iters))  # rank 0 alone logs: no line twice
    single = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "single"))
    from reid.data import build_train_loader

    assert records[-1]["iter"] == len(build_train_loader(single).loader)  # same global batches per epoch
    assert load_checkpoint(out / "last.pth")["epoch"] == 1


def test_each_ddp_rank_draws_its_own_random_stream(monkeypatch):
    """Rank 0 keeps the single-process seed; another rank gets its own, so LFM masks differ across ranks."""
    from reid.engine import trainer as trainer_module

    cfg = load_config(None, ["SOLVER.MAX_EPOCHS", "2", "SEED", "3"])
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    seeds: dict[int, list[int]] = {}
    for rank in (0, 1):
        monkeypatch.setattr(trainer_module.comm, "get_rank", lambda rank=rank: rank)
        monkeypatch.setattr(trainer_module, "seed_everything",
                            lambda seed, rank=rank: seeds.setdefault(rank, []).append(seed))
        trainer_module.Trainer(cfg, model, None, optimizer, None, loader=[], device=torch.device("cpu")).train()
    assert seeds[0] == [3 * 1_000_003, 3 * 1_000_003 + 1]
    assert len(set(seeds[0]) | set(seeds[1])) == 4


class _TinyReID(torch.nn.Module):
    """A linear embedding and classifier with the ReID model's training outputs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Linear(8, 6)
        self.classifier = torch.nn.Linear(6, 4, bias=False)

    def forward(self, x):
        feat = self.embed(x)
        return {"feat": feat, "logits": self.classifier(feat)}


def _pk_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """4 identities x 4 images: rank r of 2 takes identities 2r and 2r + 1, as the PK sampler splits."""
    inputs = torch.randn(16, 8, generator=torch.Generator().manual_seed(1))
    return inputs, torch.arange(4).repeat_interleave(4)


def _gradients(model: torch.nn.Module, inputs: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    criterion = ReIDLoss(load_config(None, ["MODEL.LOSSES", "('ce', 'triplet')"]), num_classes=4, feat_dim=6)
    sum(criterion(model(inputs), labels).values()).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def _ddp_gradient_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        inputs, labels = _pk_batch()
        mine = slice(8 * rank, 8 * (rank + 1))
        model = torch.nn.parallel.DistributedDataParallel(_TinyReID())
        grads = _gradients(model, inputs[mine], labels[mine])
        torch.save({name.removeprefix("module."): g for name, g in grads.items()}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_gradients_equal_one_process_on_the_global_batch(tmp_path):
    """CE averaged over ranks and triplets mined over the gathered global batch: DDP's averaged gradient
    is the single-process gradient of the whole batch (this model has no batch norm)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_ddp_gradient_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    expected = _gradients(_TinyReID(), *_pk_batch())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for name, grad in expected.items():
            assert torch.allclose(got[name], grad, atol=1e-6), (rank, name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("amp_dtype", ["bf16", "fp16"])
def test_cuda_mixed_precision_training_and_resume(synthetic_root, tmp_path, amp_dtype):
    """AMP (bf16, or fp16 with its scaler), channels_last, LFM and the center loss on CUDA; a CPU-trained
    checkpoint (empty scaler state) resumes under fp16."""
    opts = ["MODEL.REGULARIZER.NAME", "lfm", "MODEL.LOSSES", "('ce', 'triplet', 'center')",
            "SOLVER.AMP_DTYPE", amp_dtype, "DATASETS.TEST", "synthetic_market"]
    cpu_opts = tiny_train_opts(synthetic_root, tmp_path, *opts, "DEVICE", "cpu", "SOLVER.MAX_EPOCHS", "1")
    cpu = load_config("bot_synthetic.yml", cpu_opts)
    train(cpu)
    cuda = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path, *opts, "DEVICE", "cuda"))
    results = train(cuda, resume=True)
    state = load_checkpoint(tmp_path / "last.pth")
    assert state["epoch"] == 2 and bool(state["scaler"]) == (amp_dtype == "fp16")
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert 0.0 <= results["synthetic_market"]["mAP"] <= 1.0


def _tensor_backend_worker(rank: int, port: int, root: str, out_dir: str) -> None:
    import torch.distributed as dist

    from reid.data import build_train_data

    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        opts = tiny_train_opts(Path(root), Path(out_dir), "DATALOADER.BACKEND", "tensor", "SEED", "5")
        data = build_train_data(cfg := load_config("bot_synthetic.yml", opts), rank, 2)
        assert data.backend == "tensor" and cfg.INPUT.FLIP_PROB > 0
        data.set_epoch(0)
        batch = next(iter(data))
        data.set_epoch(0)
        common = data.loader.make_batch(list(range(8)))["images"]  # the same 8 images, augmented on this rank
        data.set_epoch(0)
        again = data.loader.make_batch(list(range(8)))["images"]
        torch.save({"index": batch["index"], "pids": batch["pids"], "common": common, "again": again},
                   Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_ranks_draw_different_augmentations_of_disjoint_samples(synthetic_root, tmp_path):
    """Two gloo processes with the tensor backend: each rank's half of the global PK batch holds other
    identities, and its augmentations come from its own stream (seed, epoch, rank)."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    mp.spawn(_tensor_backend_worker, args=(port, str(synthetic_root), str(tmp_path)), nprocs=2, join=True)
    first, second = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not set(first["index"].tolist()) & set(second["index"].tolist())  # disjoint samples
    assert not set(first["pids"].tolist()) & set(second["pids"].tolist())  # whole identities per rank
    for rank in (first, second):
        assert torch.equal(rank["common"], rank["again"])  # an epoch's draws are reproducible on a rank
    # The same images on the two ranks' streams are augmented differently (flip, crop offsets, erasing).
    differs = [not torch.equal(a, b) for a, b in zip(first["common"], second["common"])]
    assert sum(differs) >= 6, differs


def test_evaluations_of_a_tensor_run_decode_each_test_set_once(synthetic_root, tmp_path, monkeypatch):
    # The tensor backend keeps each decoded test set on the device for the next evaluation; the workers
    # backend reads the images again every time.
    from reid.data import loaders
    from reid.data.tensor_loaders import TensorTestLoader
    from reid.engine.training import RunEvaluation

    cfg = load_config("bot_synthetic.yml", tiny_train_opts(synthetic_root, tmp_path / "run",
                                                           "DATALOADER.CACHE_DIR", "none"))
    built = []
    original = loaders.build_test_data
    monkeypatch.setattr("reid.engine.training.build_test_data",
                        lambda *args, **kwargs: built.append(kwargs["backend"]) or original(*args, **kwargs))
    tensor = RunEvaluation(cfg, torch.device("cpu"), record=None, backend="tensor")
    first = tensor.test_data("synthetic_market")
    assert tensor.test_data("synthetic_market") is first and isinstance(first.loader, TensorTestLoader)
    assert built == ["tensor"]
    workers = RunEvaluation(cfg, torch.device("cpu"), record=None, backend="workers")
    assert workers.test_data("synthetic_market") is not workers.test_data("synthetic_market")
    assert built == ["tensor", "workers", "workers"]


def test_resuming_a_run_older_than_a_key_whose_default_changed_says_so(synthetic_root, tmp_path):
    # A checkpoint written before INPUT.RE_STYLE existed was trained with torchvision's erasing; resumed with
    # today's default (BoT's) the recipe changes mid-run, which the log must say, with the key that keeps it.
    from reid.utils.checkpoint import atomic_save

    opts = tiny_train_opts(synthetic_root, tmp_path / "run", "DATASETS.TEST", "synthetic_market", "SOLVER.MAX_EPOCHS",
                           "1", "INPUT.SIZE_TRAIN", "(32, 16)", "INPUT.SIZE_TEST", "(32, 16)")
    train(load_config("bot_synthetic.yml", opts))
    last = tmp_path / "run" / "last.pth"
    state = load_checkpoint(last)
    del state["config"]["INPUT"]["RE_STYLE"]  # as an older version wrote it
    atomic_save(state, last)
    kept = tmp_path / "kept"
    shutil.copytree(tmp_path / "run", kept)
    train(load_config("bot_synthetic.yml", [*opts, "SOLVER.MAX_EPOCHS", "2"]), resume=True)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert (f"--resume: {last} was written before INPUT.RE_STYLE existed; the run used 'torchvision' and goes on "
            "with 'bot', this version's default. To keep its recipe, resume with INPUT.RE_STYLE torchvision.") in log
    train(load_config("bot_synthetic.yml", [*opts, "OUTPUT_DIR", str(kept), "SOLVER.MAX_EPOCHS", "2",
                                            "INPUT.RE_STYLE", "torchvision"]), resume=True)
    assert "was written before INPUT.RE_STYLE existed" not in (kept / "log.txt").read_text()
