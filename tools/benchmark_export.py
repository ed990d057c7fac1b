#!/usr/bin/env python
"""Images/s of the exported ONNX model (ONNX Runtime, CPU) vs PyTorch (CPU, eval, no grad); prints a Markdown table.

    python tools/benchmark_export.py                       # ResNet-50 at 256x128, batches 1 and 32, 2 threads
    python tools/benchmark_export.py --batch-sizes 1 8 64 --threads 4 --seconds 10

The model is randomly initialised (speed does not depend on the weights); it is the deployed module
(ExportableReID: BNNeck feature, L2-normalised) exported exactly as tools/export.py does, dynamic batch,
float32. Each cell runs warm-up batches, then as many batches as fit in --seconds, and reports the median
batch time. Other processes on the machine make the figures noisy: run twice and compare.
"""

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import onnxruntime  # noqa: E402
import torch  # noqa: E402

from reid.config import load_config  # noqa: E402
from reid.export.exportable import ExportableReID  # noqa: E402
from reid.export.onnx_export import export_onnx, onnx_session, run_onnx  # noqa: E402
from reid.modeling import build_model  # noqa: E402
from reid.utils.cli import parser_from_docstring, run_cli  # noqa: E402

WARMUP_BATCHES = 3


def median_batch_seconds(run: Callable[[], object], seconds: float) -> float:
    for _ in range(WARMUP_BATCHES):
        run()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while time.perf_counter() < end or len(times) < 3:
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = parser_from_docstring(__doc__)
    parser.add_argument("--backbone", default="resnet50")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 128), metavar=("H", "W"))
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=(1, 32))
    parser.add_argument("--threads", type=int, default=2, help="intra-op threads of both runtimes")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed duration per cell")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    cfg = load_config(None, ["MODEL.BACKBONE", args.backbone, "MODEL.PRETRAINED", "False",
                             "INPUT.SIZE_TEST", str(tuple(args.size))])
    torch.manual_seed(0)
    module = ExportableReID.from_config(build_model(cfg, num_classes=0), cfg)
    batches = {batch: torch.rand(batch, 3, *args.size) for batch in args.batch_sizes}
    # PyTorch first, before any ONNX Runtime session exists: its worker threads would compete for the cores.
    torch_seconds, torch_outputs = {}, {}
    with torch.inference_mode():
        for batch, images in batches.items():
            torch_outputs[batch] = module(images)
            torch_seconds[batch] = median_batch_seconds(partial(module, images), args.seconds)
    with tempfile.TemporaryDirectory() as tmp:
        path = export_onnx(module, Path(tmp) / "model.onnx", tuple(args.size))
        session = onnx_session(path, threads=args.threads, spinning=True)  # ONNX Runtime's default
    rows = []
    for batch, images in batches.items():
        diff = (torch.from_numpy(run_onnx(session, images)) - torch_outputs[batch]).abs().max().item()
        onnx_s = median_batch_seconds(partial(run_onnx, session, images), args.seconds)
        rows.append((batch, torch_seconds[batch], onnx_s, diff))

    h, w = args.size
    print(f"\n{args.backbone} (random init) at {h}x{w}, float32, {args.threads} threads, CPU: "
          f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}\n")
    print("| batch | PyTorch images/s | ONNX Runtime images/s | speed-up | max abs diff |")
    print("|---:|---:|---:|---:|---:|")
    for batch, torch_s, onnx_s, diff in rows:
        print(f"| {batch} | {batch / torch_s:.1f} | {batch / onnx_s:.1f} | {torch_s / onnx_s:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    run_cli(main)
