"""Benchmark the ReID evaluator (and optionally re-ranking) on random Market/MSMT-sized problems.

    .venv/bin/python tools/benchmark_eval.py --device cpu --threads 2
    .venv/bin/python tools/benchmark_eval.py --device cpu --threads 2 --rerank
    .venv/bin/python tools/benchmark_eval.py --device cuda --sizes market,msmt,large

Features are synthetic: one random centre per identity plus noise (mAP around 0.5-0.9, like a
trained model), gallery distractors (pid 0) are pure noise. Times are the median of ``--repeats``
runs after one warm-up. The numpy reference evaluates one query at a time with a full sort; it is
timed on the first ``--reference-queries`` queries and extrapolated linearly to all queries (said
so in the table), and its per-query AP is checked against ours on those queries.

Memory: "peak extra" is what evaluate_features reports (CUDA: measured by torch; CPU: accounted
from block shapes). On CPU the table also gives the resident-memory (RSS) growth seen by a thread
polling /proc/self/statm during the call, as an independent check.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reid.evaluation.rank import compute_distance_matrix, evaluate_features, evaluate_rank  # noqa: E402
from reid.evaluation.reference import evaluate_rank_reference, re_ranking_reference  # noqa: E402
from reid.evaluation.rerank import re_ranking  # noqa: E402


@dataclass(frozen=True)
class Size:
    name: str
    num_query: int
    num_gallery: int
    num_ids: int
    num_distractors: int
    dtype: torch.dtype = torch.float32


SIZES = {
    "market": Size("Market-1501 (3,368 x 15,913)", 3368, 15913, 751, 2793),
    "msmt": Size("MSMT17 (11,659 x 82,161)", 11659, 82161, 3060, 0),
    "large": Size("10,000 x 1,000,000 fp16", 10000, 1_000_000, 50000, 0, torch.float16),
}
NUM_CAMERAS = 6


def make_problem(size: Size, dim: int, device: torch.device, seed: int, noise_scale: float = 3.2):
    """Clustered features (identity centre + noise) and ids/cameras for ``size``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(size.num_ids, dim, generator=gen)
    q_pids = torch.randint(0, size.num_ids, (size.num_query,), generator=gen)
    g_pids = torch.randint(0, size.num_ids, (size.num_gallery,), generator=gen)

    def features(pids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(pids), dim, dtype=size.dtype, device=device)
        for start in range(0, len(pids), 65536):  # bounded temporaries for the 1M gallery
            chunk = pids[start:start + 65536]
            noise = torch.randn(len(chunk), dim, generator=gen) * noise_scale
            out[start:start + len(chunk)] = (centres[chunk] + noise).to(device, size.dtype)
        return out

    qf, gf = features(q_pids), features(g_pids)
    g_pids = g_pids + 1  # identities 1..num_ids; 0 marks distractors
    if size.num_distractors:
        g_pids[-size.num_distractors:] = 0
        gf[-size.num_distractors:] = torch.randn(size.num_distractors, dim, generator=gen).to(device, size.dtype)
    q_camids = torch.randint(0, NUM_CAMERAS, (size.num_query,), generator=gen)
    g_camids = torch.randint(0, NUM_CAMERAS, (size.num_gallery,), generator=gen)
    return qf, gf, q_pids + 1, g_pids, q_camids, g_camids


def median_time(fn, repeats: int, device: torch.device) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls after one warm-up call, and the last result."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class RssPeak:
    """Highest resident-set growth over the baseline while the ``with`` body runs (Linux only)."""

    def __init__(self, interval_s: float = 0.002):
        self.interval_s = interval_s
        self.page = os.sysconf("SC_PAGE_SIZE")

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def __enter__(self):
        self.baseline = self._rss()
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(self.interval_s)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.growth = self.peak - self.baseline


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:,.0f} MiB"


def benchmark_size(key: str, args, device: torch.device, rows: list[list[str]]) -> None:
    size = SIZES[key]
    qf, gf, q_pids, g_pids, q_camids, g_camids = make_problem(size, args.dim, device, args.seed)
    ids = (q_pids, g_pids, q_camids, g_camids)

    t_feat, result = median_time(lambda: evaluate_features(qf, gf, *ids, metric="cosine"), args.repeats, device)
    rss = ""
    if device.type == "cpu":
        with RssPeak() as peak:
            evaluate_features(qf, gf, *ids, metric="cosine")
        rss = f"; RSS growth {mib(peak.growth)}"
    scores = result.as_dict()
    rows.append([size.name, "evaluate_features (cosine, end to end)", f"{t_feat:.2f} s",
                 f"{mib(result.peak_memory_bytes)}{rss}",
                 f"R1 {scores['R1']:.3f}, mAP {scores['mAP']:.3f}, mINP {scores['mINP']:.3f}"])

    if key == "large" or (key == "msmt" and not args.msmt_distmat):
        return
    distmat = compute_distance_matrix(qf, gf, "cosine")
    t_rank, ranked = median_time(lambda: evaluate_rank(distmat, *ids), args.repeats, device)
    rows.append([size.name, "evaluate_rank (from distance matrix)", f"{t_rank:.2f} s", "",
                 f"same metrics: {ranked.as_dict() == scores}"])

    n_ref = min(args.reference_queries, size.num_query)
    dist_np = distmat[:n_ref].cpu().numpy()
    q_pids_np, g_pids_np, q_camids_np, g_camids_np = (a.cpu().numpy() for a in ids)
    start = time.perf_counter()
    reference = evaluate_rank_reference(dist_np, q_pids_np[:n_ref], g_pids_np, q_camids_np[:n_ref], g_camids_np)
    t_ref = (time.perf_counter() - start) * size.num_query / n_ref
    ours = ranked.AP[: len(reference["AP"])]
    max_diff = float(np.abs(ours - reference["AP"]).max())
    rows.append([size.name, "numpy per-query reference", f"{t_ref:.1f} s (extrapolated from {n_ref} queries)", "",
                 f"speed-up of evaluate_rank: {t_ref / t_rank:.0f}x; max AP difference {max_diff:.1e}"])


def benchmark_rerank(args, device: torch.device, rows: list[list[str]]) -> None:
    small = Size("re-ranking 500 x 2,000", 500, 2000, 200, 0)
    qf, gf, *_ = make_problem(small, args.dim, device, args.seed)
    start = time.perf_counter()
    expected = re_ranking_reference(qf.cpu().numpy(), gf.cpu().numpy())
    t_ref = time.perf_counter() - start
    t_small, actual = median_time(lambda: re_ranking(qf, gf), args.repeats, device)
    diff = float(np.abs(actual.cpu().numpy() - expected).max())
    rows.append([small.name, "re_ranking (k1=20, k2=6, lambda=0.3)", f"{t_small:.2f} s", "",
                 f"numpy reference {t_ref:.1f} s; max difference {diff:.1e}"])

    market = SIZES["market"]
    qf, gf, *_ = make_problem(market, args.dim, device, args.seed)
    start = time.perf_counter()
    if device.type == "cpu":
        with RssPeak() as peak:
            re_ranking(qf, gf)
        memory = f"RSS growth {mib(peak.growth)} (incl. the {mib(4 * market.num_query * market.num_gallery)} result)"
    else:
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        re_ranking(qf, gf)
        torch.cuda.synchronize(device)
        memory = mib(torch.cuda.max_memory_allocated(device) - base)
    rows.append([market.name, "re_ranking (k1=20, k2=6, lambda=0.3)", f"{time.perf_counter() - start:.1f} s (1 run)",
                 memory, "numpy reference not run: dense (q+g)^2 matrices, several GB"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--sizes", default="market,msmt", help="comma list of: " + ", ".join(SIZES))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--reference-queries", type=int, default=300)
    parser.add_argument("--msmt-distmat", action="store_true",
                        help="also time evaluate_rank on MSMT (materialises a 3.8 GB distance matrix)")
    parser.add_argument("--rerank", action="store_true", help="also time k-reciprocal re-ranking")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda given but no CUDA device is available")
    device = torch.device(args.device)
    rows: list[list[str]] = []
    for key in args.sizes.split(","):
        if SIZES[key.strip()].dtype == torch.float16 and device.type != "cuda":
            rows.append([SIZES[key].name, "evaluate_features", "not measured (CUDA only)", "", ""])
            continue
        benchmark_size(key.strip(), args, device, rows)
    if args.rerank:
        benchmark_rerank(args, device, rows)

    machine = (torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"{args.threads} CPU threads ({os.cpu_count()} cores visible)")
    print(f"torch {torch.__version__}, {machine}, dim {args.dim}, median of {args.repeats} runs after a warm-up\n")
    print("| Problem | Function | Time | Peak extra memory | Notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    main()
