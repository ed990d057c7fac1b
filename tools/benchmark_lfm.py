"""How much of a ResNet-50 training step Local Feature Masking costs.

Times a forward + backward step (cross-entropy on random labels) of a randomly initialised torchvision
ResNet-50 without a regulariser and with LFM on conv1's output (the paper's placement) at the default
prob=0.15 and the worst case prob=1, plus LFM's forward alone on a conv1-sized feature map. Configurations
are interleaved iteration by iteration so that load drift on a shared machine hits all of them alike.
Prints Markdown tables.

    python tools/benchmark_lfm.py --device cpu --threads 2 --iters 3
    python tools/benchmark_lfm.py --device cuda          # bf16 autocast + channels_last
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.modeling import LocalFeatureMasking  # noqa: E402
from reid.modeling.regularizers import attach_at_stage  # noqa: E402
from reid.utils.cli import run_cli  # noqa: E402
from reid.utils.env import describe_machine, resolve_device  # noqa: E402


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (torch.set_num_threads)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--iters", type=int, default=None, help="timed iterations (default: cpu 3, cuda 30)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: cpu 1, cuda 10)")
    return parser.parse_args()


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Wall time of one call in milliseconds, waiting for queued device work before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) * 1e3


def main() -> None:
    args = parse_args()
    device = torch.device(resolve_device(args.device, option="--device"))
    torch.set_num_threads(args.threads)
    iters = args.iters or (30 if device.type == "cuda" else 3)
    warmup = args.warmup if args.warmup is not None else (10 if device.type == "cuda" else 1)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    autocast = (
        torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    )

    torch.manual_seed(0)
    model = torchvision.models.resnet50(weights=None).to(device, memory_format=memory_format).train()
    images = torch.randn(args.batch, 3, args.height, args.width, device=device)
    images = images.to(memory_format=memory_format)
    labels = torch.randint(0, 1000, (args.batch,), device=device)
    lfm = LocalFeatureMasking(prob=0.0)
    attach_at_stage(model, "conv1", lfm)  # prob=0 returns its input at once: the plain network

    def train_step(prob: float) -> Callable[[], None]:
        def step() -> None:
            lfm.prob = prob
            model.zero_grad(set_to_none=True)
            with autocast:
                loss = F.cross_entropy(model(images), labels)
            loss.backward()

        return step

    feature_dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    features = torch.randn(args.batch, 64, args.height // 2, args.width // 2, device=device)
    features = features.to(feature_dtype).to(memory_format=memory_format).requires_grad_()
    upstream_grad = torch.ones_like(features)
    alone = LocalFeatureMasking().train()

    def lfm_alone(prob: float, backward: bool) -> Callable[[], None]:
        """LFM on a conv1-sized map; with its backward, this is all the step has to do extra."""

        def run() -> None:
            alone.prob = prob
            if backward:
                alone(features).backward(upstream_grad)
                features.grad = None
            else:
                with torch.no_grad():
                    alone(features)

        return run

    cases = {
        "no regularizer": train_step(0.0),
        "LFM at conv1, prob=0.15 (default)": train_step(0.15),
        "LFM at conv1, prob=1 (worst case)": train_step(1.0),
        "LFM alone, forward, prob=0.15": lfm_alone(0.15, backward=False),
        "LFM alone, forward, prob=1": lfm_alone(1.0, backward=False),
        "LFM alone, forward+backward, prob=0.15": lfm_alone(0.15, backward=True),
        "LFM alone, forward+backward, prob=1": lfm_alone(1.0, backward=True),
    }
    for _ in range(warmup):
        for fn in cases.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(iters):
        for name, fn in cases.items():
            times[name].append(timed(fn, device))
    median = {name: statistics.median(values) for name, values in times.items()}
    base = median["no regularizer"]

    precision = "bf16 autocast, channels_last" if device.type == "cuda" else "fp32"
    print(
        f"ResNet-50 (torchvision, random init) forward+backward, batch {args.batch} at "
        f"{args.height}x{args.width}, {precision}; {describe_machine(device)}; torch {torch.__version__}; "
        f"median of {iters} iterations after {warmup} warm-up.\n"
    )
    print("| step | median ms | min ms | vs. no regularizer |")
    print("|---|---:|---:|---:|")
    for name in list(cases)[:3]:
        overhead = f"{100 * (median[name] / base - 1):+.1f}%" if name != "no regularizer" else "-"
        print(f"| {name} | {median[name]:.1f} | {min(times[name]):.1f} | {overhead} |")
    shape = tuple(features.shape)
    print(f"\n| LFM alone on {shape} {str(feature_dtype).replace('torch.', '')} | median ms "
          f"| min ms | share of the plain step |")
    print("|---|---:|---:|---:|")
    for name in list(cases)[3:]:
        print(f"| {name.split(', ', 1)[1]} | {median[name]:.2f} | {min(times[name]):.2f} | "
              f"{100 * median[name] / base:.2f}% |")


if __name__ == "__main__":
    run_cli(main)
