"""Training throughput of both data backends: the data path alone, a full training step, test feature extraction.

For each row (a config, a batch size, a precision) and each backend (``tensor``: decoded once, augmented
in batches on the device; ``workers``: DataLoader worker processes), in images per second:

(a) data path: augmented batches on the device (the workers' batches are moved there, as the trainer does);
(b) training step: data + forward, losses, backward and optimiser step (BoT's losses of the row's config);
(c) test extraction: query + gallery features in eval mode (the workers decode every image again).

Backends alternate within each round (A B, then B A) so that load drift on a shared machine hits both
alike; the median over rounds is reported with the ratio tensor / workers. The time to decode the
data set once and to load it back from the decoded-image cache is reported too.

Without ``--root`` a synthetic Market-style data set is generated once under the user's cache folder.
On a shared machine, OpenMP threads that spin while waiting burn the cores the other processes need (a
2-thread ResNet-18 step ran 4x slower than 1 thread on 2 cores at load 7): the tool sets
OMP_WAIT_POLICY=PASSIVE unless it is set already (``OMP_WAIT_POLICY=ACTIVE`` measures torch's default).

    python tools/benchmark_train.py --device cpu --threads 2                    # CPU rows (minutes)
    python tools/benchmark_train.py --device cuda                               # CUDA rows
    python tools/benchmark_train.py --rows synthetic --rounds 1 --steps 1 --data-batches 4   # smoke test
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP; see the docstring

import argparse  # noqa: E402
import itertools  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import nullcontext  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.config import load_config  # noqa: E402
from reid.data import build_test_data, build_train_data  # noqa: E402
from reid.experiments.synthetic import generate_synthetic  # noqa: E402
from reid.data.tensor_cache import default_cache_dir  # noqa: E402
from reid.modeling import ReIDLoss, build_model  # noqa: E402
from reid.solver import build_optimizer  # noqa: E402
from reid.utils.cli import run_cli  # noqa: E402
from reid.utils.env import describe_machine, resolve_device  # noqa: E402

BACKENDS = ("tensor", "workers")


@dataclass(frozen=True)
class Row:
    name: str
    config: str
    overrides: tuple[str, ...]
    batch: int
    compile: bool = False


CPU_ROWS = {
    "synthetic": Row("bot_synthetic (ResNet-18, 64x32)", "bot_synthetic.yml", (), 64),
    "r50": Row("BoT ResNet-50, 256x128", "bot_market.yml", (), 64),
}
CUDA_ROWS = {
    f"lfm-r50-b{batch}{'-compile' if compiled else ''}": Row(
        f"BoT+LFM ResNet-50, 256x128, batch {batch}, bf16, channels_last, compile {'on' if compiled else 'off'}",
        "lfm_market.yml", (), batch, compiled)
    for batch in (64, 256) for compiled in (False, True)
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the main process (CPU)")
    parser.add_argument("--workers", type=int, default=None,
                        help="loader processes of the workers backend (default: cpu 2, cuda min(8, cores))")
    parser.add_argument("--rows", default=None, help=f"comma-separated rows; cpu: {','.join(CPU_ROWS)}; "
                        f"cuda: {','.join(CUDA_ROWS)} (default: all rows of the device)")
    parser.add_argument("--root", default=None, help="DATASETS.ROOT holding synthetic_market (default: generate)")
    parser.add_argument("--parts", default="data,step,extract",
                        help="which of (a) data, (b) step, (c) extract to measure (comma-separated)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds (median reported)")
    parser.add_argument("--data-batches", type=int, default=None, help="timed batches of (a) (cpu 12, cuda 100)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps of (b) (cpu 3, cuda 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed batches/steps first (cpu 1, cuda 10)")
    parser.add_argument("--extract-batches", type=int, default=None,
                        help="timed test batches of (c) (default: cpu 4, cuda the whole test set)")
    return parser.parse_args()


def benchmark_data_root(root: str | None) -> str:
    """``root``, or a synthetic Market-style set generated once (about 1,500 train and 400 test images)."""
    if root:
        return root
    folder = default_cache_dir().parent / "benchmark-data"
    generate_synthetic("market", folder, num_train_ids=250, num_test_ids=40, images_per_camera=2, seed=0)
    return str(folder)


def make_config(row: Row, backend: str, root: str, device: torch.device, workers: int, cache_dir: str):
    return load_config(row.config, [
        *row.overrides, "MODEL.PRETRAINED", "False", "DATASETS.ROOT", root,
        "DATASETS.TRAIN", "synthetic_market", "DATASETS.TEST", "synthetic_market",
        "SOLVER.IMS_PER_BATCH", str(row.batch), "TEST.IMS_PER_BATCH", str(row.batch),
        "DATALOADER.BACKEND", backend, "DATALOADER.NUM_WORKERS", str(workers),
        "DATALOADER.CACHE_DIR", cache_dir, "DEVICE", device.type, "OUTPUT_DIR", cache_dir])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def endless_batches(data) -> Iterator[dict]:
    """The loader's batches epoch after epoch (the workers restart each epoch, as in training)."""
    for epoch in itertools.count():
        data.set_epoch(epoch)
        yield from data.loader


def to_device(batch: dict, device: torch.device, channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    images = batch["images"].to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, batch["pids"].to(device, non_blocking=True)


def rate(batches: Iterator[dict], count: int, warmup: int, work: Callable[[dict], None],
         device: torch.device) -> float:
    """Images per second of ``work`` over ``count`` batches after ``warmup`` untimed ones."""
    for batch in itertools.islice(batches, warmup):
        work(batch)
    sync(device)
    images, start = 0, time.perf_counter()
    for batch in itertools.islice(batches, count):
        work(batch)
        images += batch["images"].shape[0]
    sync(device)
    return images / (time.perf_counter() - start)


def compiled_or_eager(model: torch.nn.Module, enabled: bool, first_call: Callable[[torch.nn.Module], None],
                      notes: list[str]) -> torch.nn.Module:
    """``torch.compile(model)`` if asked and its first call succeeds; else the eager model, with a note why."""
    if not enabled:
        return model
    try:
        compiled = torch.compile(model, dynamic=False)
        first_call(compiled)
        return compiled
    except Exception as exc:  # noqa: BLE001 - any compiler failure falls back, reported in the table
        notes.append(f"torch.compile failed ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
                     "measured without it")
        return model


def run_row(row: Row, args: argparse.Namespace, root: str, device: torch.device, notes: list[str]) -> dict:
    on_cuda = device.type == "cuda"
    workers = args.workers if args.workers is not None else (min(8, os.cpu_count() or 1) if on_cuda else 2)
    warmup = args.warmup if args.warmup is not None else (10 if on_cuda else 1)
    cache_dir = tempfile.mkdtemp(prefix="benchmark-train-cache-")
    cfgs = {b: make_config(row, b, root, device, workers, cache_dir) for b in BACKENDS}
    cfg = cfgs["tensor"]

    start = time.perf_counter()
    data = {"tensor": build_train_data(cfg, device=device)}
    decode_s = time.perf_counter() - start
    start = time.perf_counter()
    data["tensor"] = build_train_data(cfg, device=device)  # from the cache this time
    cached_s = time.perf_counter() - start
    data["workers"] = build_train_data(cfgs["workers"], device=device)
    test = {b: build_test_data(cfgs[b], "synthetic_market", device, backend=b) for b in BACKENDS}
    assert data["tensor"].backend == "tensor" and data["workers"].backend == "workers"
    batches = {b: endless_batches(data[b]) for b in BACKENDS}

    amp = on_cuda and cfg.SOLVER.AMP
    channels_last = on_cuda and cfg.SOLVER.CHANNELS_LAST
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if amp else nullcontext
    torch.manual_seed(0)
    model = build_model(cfg, data["tensor"].num_classes, load_imagenet=False).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    criterion = ReIDLoss(cfg, data["tensor"].num_classes, model.feat_dim).to(device)
    optimizer = build_optimizer(cfg, model)

    def data_only(batch: dict) -> None:
        to_device(batch, device, channels_last)

    def train_step(net: torch.nn.Module) -> Callable[[dict], None]:
        def step(batch: dict) -> None:
            images, pids = to_device(batch, device, channels_last)
            net.train()
            with autocast():
                outputs = net(images)
            losses = criterion(outputs, pids)
            optimizer.zero_grad(set_to_none=True)
            sum(losses.values()).backward()
            optimizer.step()
        return step

    def extract(net: torch.nn.Module) -> Callable[[dict], None]:
        @torch.no_grad()
        def run(batch: dict) -> None:
            images, _ = to_device(batch, device, channels_last)
            net.eval()
            with autocast():
                net(images)
        return run

    parts = args.parts.split(",")
    first_batch = next(batches["tensor"])
    train_net = eval_net = model
    if "step" in parts:
        train_net = compiled_or_eager(model, row.compile, lambda net: train_step(net)(first_batch), notes)
    if "extract" in parts:
        eval_net = compiled_or_eager(model, row.compile and (train_net is not model or "step" not in parts),
                                     lambda net: extract(net)(first_batch), notes)

    data_batches = args.data_batches or (100 if on_cuda else 12)
    steps = args.steps or (30 if on_cuda else 3)
    results: dict[str, dict[str, list[float]]] = {b: {"data": [], "step": [], "extract": []} for b in BACKENDS}
    for round_index in range(args.rounds):
        order = BACKENDS if round_index % 2 == 0 else BACKENDS[::-1]
        for backend in order if "data" in parts else ():
            results[backend]["data"].append(rate(batches[backend], data_batches, warmup, data_only, device))
        for backend in order if "step" in parts else ():
            results[backend]["step"].append(rate(batches[backend], steps, warmup, train_step(train_net), device))
        for backend in order if "extract" in parts else ():
            loader = test[backend].loader
            count = args.extract_batches or (len(loader) if on_cuda else 4)
            warm = min(warmup, max(len(loader) - count, 0))
            results[backend]["extract"].append(rate(iter(loader), count, warm, extract(eval_net), device))
    medians = {b: {k: statistics.median(v) if v else float("nan") for k, v in results[b].items()} for b in BACKENDS}
    return {"row": row, "medians": medians, "decode_s": decode_s, "cached_s": cached_s,
            "train_images": len(data["tensor"].loader.dataset), "workers": workers}


def main() -> None:
    args = parse_args()
    device = torch.device(resolve_device(args.device, option="--device"))
    torch.set_num_threads(args.threads)
    catalogue = CUDA_ROWS if device.type == "cuda" else CPU_ROWS
    names = args.rows.split(",") if args.rows else list(catalogue)
    unknown = [n for n in names if n not in catalogue]
    if unknown:
        raise SystemExit(f"Unknown row(s) {unknown} for {device.type}; choose from {', '.join(catalogue)}.")
    root = benchmark_data_root(args.root)
    notes: list[str] = []
    reports = [run_row(catalogue[name], args, root, device, notes) for name in names]

    print(f"\n{describe_machine(device)}; torch {torch.__version__}; OMP_WAIT_POLICY "
          f"{os.environ['OMP_WAIT_POLICY']}; data {root}; median of {args.rounds} interleaved round(s); images/s.\n")
    print("| row | backend | (a) data path | (b) training step | (c) test extraction |")
    print("|---|---|---:|---:|---:|")
    for report in reports:
        m = report["medians"]
        name = report["row"].name
        for backend in BACKENDS:
            label = backend if backend == "tensor" else f"workers ({report['workers']} processes)"
            print(f"| {name} | {label} | {m[backend]['data']:.0f} | {m[backend]['step']:.1f} | "
                  f"{m[backend]['extract']:.1f} |")
        ratio = {k: m["tensor"][k] / m["workers"][k] for k in m["tensor"]}
        print(f"| {name} | tensor / workers | {ratio['data']:.1f}x | {ratio['step']:.2f}x | "
              f"{ratio['extract']:.2f}x |")
    print("\n| row | train images | decode once (s) | load from the cache (s) |")
    print("|---|---:|---:|---:|")
    for report in reports:
        print(f"| {report['row'].name} | {report['train_images']} | {report['decode_s']:.2f} | "
              f"{report['cached_s']:.2f} |")
    for note in notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    run_cli(main)
