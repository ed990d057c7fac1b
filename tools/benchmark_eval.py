"""Benchmark the ReID evaluator (and optionally re-ranking) on random Market/MSMT-sized problems.

    .venv/bin/python tools/benchmark_eval.py --sizes tiny --dim 64 --rerank      # smoke test, seconds
    .venv/bin/python tools/benchmark_eval.py --device cpu --threads 2
    .venv/bin/python tools/benchmark_eval.py --device cpu --threads 2 --sizes market --rerank
    .venv/bin/python tools/benchmark_eval.py --device cuda --sizes market,msmt,large --rerank

Features are synthetic: one random centre per identity plus Gaussian noise, scaled so the metrics
look like a trained model's (Market: mAP about 0.78, mINP about 0.2); gallery distractors (pid 0) are
pure noise. The "untrained-model features" rows use almost pure noise (mAP near 0): true matches are
spread over the whole ranking, the evaluator's worst case. Market and tiny rows are the median of
``--repeats`` runs after a warm-up; larger problems the median of ``--large-repeats`` runs without.

Exactness: the numpy reference evaluates one query at a time with a full stable sort. It runs on a
sample of ``--reference-queries`` queries (the first ones; for ``large``, ``--large-reference-queries``
spread over the query set)
using their exact distance rows (:class:`FeatureDistances`, bit-identical to what evaluate_features
ranks), so it is cheap even for 10,000 x 1,000,000; its time is extrapolated linearly to all queries
(said so in the table) and its per-query AP is compared with ours, matched by query index.

Re-ranking (``--rerank``, every selected size but ``large``), on L2-normalised features as the
evaluator does for the cosine metric: parity of the dense ``re_ranking`` with the dense numpy reference
on a 500 x 2,000 problem (or the tiny size), and the time and peak memory of the bounded
``evaluate_reranked`` on each selected size. It costs (q+g)^2 x dim x 2 multiply-adds:
about 1.5 TFLOP for Market, 36 TFLOP for MSMT (minutes on a CPU).

Memory: "peak extra" is what evaluate_features / evaluate_reranked report (CUDA: measured by torch;
CPU: accounted from block shapes). On CPU the table also gives the resident-memory (RSS) growth seen
by a thread polling /proc/self/statm during one call, as an independent check.
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.evaluation import (  # noqa: E402
    FeatureDistances,
    RankResult,
    compute_distance_matrix,
    evaluate_features,
    evaluate_rank,
    evaluate_reranked,
    re_ranking,
)
from reid.evaluation.reference import evaluate_rank_reference, re_ranking_reference  # noqa: E402
from reid.utils.cli import run_cli  # noqa: E402
from reid.utils.env import describe_machine, resolve_device  # noqa: E402

NUM_CAMERAS = 6
TRAINED_NOISE = 3.2  # noise / centre scale giving Market mAP about 0.78
UNTRAINED_NOISE = 1000.0


@dataclass(frozen=True)
class Size:
    name: str
    num_query: int
    num_gallery: int
    num_ids: int
    num_distractors: int
    dtype: torch.dtype = torch.float32


SIZES = {
    "tiny": Size("tiny (200 x 1,000)", 200, 1000, 60, 100),
    "market": Size("Market-1501 (3,368 x 15,913)", 3368, 15913, 751, 2793),
    "msmt": Size("MSMT17 (11,659 x 82,161)", 11659, 82161, 3060, 0),
    "large": Size("10,000 x 1,000,000, fp16 features", 10000, 1_000_000, 50000, 0, torch.float16),
}


def make_problem(size: Size, dim: int, device: torch.device, seed: int, noise: float = TRAINED_NOISE):
    """Features (identity centre + noise) and pids/camera ids for ``size``."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    centres = torch.randn(size.num_ids, dim, generator=gen)
    q_pids = torch.randint(0, size.num_ids, (size.num_query,), generator=gen)
    g_pids = torch.randint(0, size.num_ids, (size.num_gallery,), generator=gen)

    def features(pids: torch.Tensor) -> torch.Tensor:
        out = torch.empty(len(pids), dim, dtype=size.dtype, device=device)
        for start in range(0, len(pids), 65536):  # bounded temporaries for the 1M gallery
            chunk = pids[start:start + 65536]
            values = centres[chunk] + noise * torch.randn(len(chunk), dim, generator=gen)
            out[start:start + len(chunk)] = values.to(device, size.dtype)
        return out

    qf, gf = features(q_pids), features(g_pids)
    g_pids = g_pids + 1  # identities 1..num_ids; 0 marks distractors
    if size.num_distractors:
        g_pids[-size.num_distractors:] = 0
        distractors = torch.randn(size.num_distractors, dim, generator=gen)
        gf[-size.num_distractors:] = distractors.to(device, size.dtype)
    q_camids = torch.randint(0, NUM_CAMERAS, (size.num_query,), generator=gen)
    g_camids = torch.randint(0, NUM_CAMERAS, (size.num_gallery,), generator=gen)
    return qf, gf, q_pids + 1, g_pids, q_camids, g_camids


def median_time(fn, repeats: int, device: torch.device, warm_up: bool = True) -> tuple[float, object]:
    """Median wall time of ``repeats`` calls (after one warm-up call), and the last result."""
    result = fn() if warm_up else None
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


def repeats_of(key: str, args) -> tuple[int, bool]:
    """(timed runs, warm-up first?) for a problem size: a warm-up before a 20 s run buys nothing."""
    small = key in ("tiny", "market")
    return (args.repeats if small else args.large_repeats), small


def reference_check(result: RankResult, distances: FeatureDistances, sample: np.ndarray, ids) -> tuple[float, float]:
    """(seconds, max |AP difference|) of the numpy reference on the ``sample`` queries, matched by index.

    The reference ranks the exact distance rows ``evaluate_features`` ranked (same bits), so any
    difference is the ranking's, not the float rounding of the distances.
    """
    q_pids, g_pids, q_camids, g_camids = (a.cpu().numpy() for a in ids)
    rows = distances.rows(sample).cpu().numpy()
    start = time.perf_counter()
    reference = evaluate_rank_reference(rows, q_pids[sample], g_pids, q_camids[sample], g_camids)
    seconds = time.perf_counter() - start
    ours = dict(zip(result.query_indices.tolist(), result.AP.tolist()))
    counted = sample[reference["query_indices"]]  # reference indices are positions within the sample
    if set(counted.tolist()) - set(ours):
        raise SystemExit("exactness check failed: the reference counts queries the evaluator skipped")
    return seconds, float(np.abs(np.array([ours[q] for q in counted.tolist()]) - reference["AP"]).max())


def benchmark_size(key: str, args, device: torch.device, rows: list[list[str]],
                   untrained: bool = False) -> None:
    """Rows for evaluate_features, evaluate_rank and the numpy reference on one problem size."""
    size = SIZES[key]
    name = size.name + (", untrained-model features" if untrained else "")
    noise = UNTRAINED_NOISE if untrained else TRAINED_NOISE
    qf, gf, *ids = make_problem(size, args.dim, device, args.seed, noise)
    repeats, warm_up = repeats_of(key, args)

    budget = int(args.budget_mib * 2**20) if args.budget_mib else None
    t_feat, result = median_time(lambda: evaluate_features(qf, gf, *ids, memory_budget_bytes=budget), repeats,
                                 device, warm_up)
    memory = mib(result.peak_memory_bytes)
    if device.type == "cpu":
        with RssPeak() as peak:
            evaluate_features(qf, gf, *ids, memory_budget_bytes=budget)
        memory += f" (RSS growth {mib(peak.growth)})"
    scores = result.as_dict()
    label = "evaluate_features (cosine, end to end" + (f", budget {args.budget_mib:g} MiB)" if budget else ")")
    rows.append([name, label, f"{t_feat:.2f} s", memory,
                 f"R1 {scores['R1']:.3f}, mAP {scores['mAP']:.3f}, mINP {scores['mINP']:.3f}"])

    n_ref = min(args.large_reference_queries if key == "large" else args.reference_queries, size.num_query)
    if key == "large":  # queries spread over the whole set: every block of the run is sampled
        sample = np.unique(np.linspace(0, size.num_query - 1, n_ref).round().astype(np.int64))
    else:
        sample = np.arange(n_ref)
    distances = FeatureDistances(qf, gf, "cosine")
    if key == "large" or (key == "msmt" and not args.msmt_distmat):
        t_ref, max_diff = reference_check(result, distances, sample, ids)
        rows.append([name, "numpy per-query reference (stable argsort per row)",
                     f"{t_ref * size.num_query / len(sample):.1f} s (extrapolated from {len(sample)} queries)", "",
                     f"evaluate_features is {t_ref * size.num_query / len(sample) / t_feat:.0f}x faster; max AP "
                     f"difference {max_diff:.1e} on those queries"])
        return

    distmat = compute_distance_matrix(qf, gf, "cosine")
    t_rank, ranked = median_time(lambda: evaluate_rank(distmat, *ids), repeats, device, warm_up)
    same = (np.array_equal(ranked.AP, result.AP) and np.array_equal(ranked.cmc, result.cmc)
            and np.array_equal(ranked.INP, result.INP))
    rows.append([name, "evaluate_rank (from the distance matrix)", f"{t_rank:.2f} s", "",
                 f"identical per-query AP/INP and CMC to evaluate_features: {same}"])
    if untrained:
        return
    t_ref, max_diff = reference_check(result, distances, sample, ids)
    t_ref *= size.num_query / len(sample)
    rows.append([name, "numpy per-query reference (stable argsort per row)",
                 f"{t_ref:.1f} s (extrapolated from {len(sample)} queries)", "",
                 f"evaluate_rank is {t_ref / t_rank:.0f}x faster; max AP difference {max_diff:.1e}"])


def unit_features(qf: torch.Tensor, gf: torch.Tensor, *ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """L2-normalised features, as the evaluator re-ranks them for the cosine metric (TEST.FEAT_NORM)."""
    unit = torch.nn.functional.normalize
    return (unit(qf.float(), dim=1).to(qf.dtype), unit(gf.float(), dim=1).to(gf.dtype), *ids)


def rerank_parity(args, device: torch.device, rows: list[list[str]], sizes: list[str]) -> None:
    """Dense re_ranking against the dense numpy reference, and against the bounded evaluate_reranked."""
    small = SIZES["tiny"] if sizes == ["tiny"] else Size("500 x 2,000", 500, 2000, 200, 0)
    qf, gf, *ids = unit_features(*make_problem(small, args.dim, device, args.seed))
    start = time.perf_counter()
    expected = re_ranking_reference(qf.cpu().numpy(), gf.cpu().numpy())
    t_ref = time.perf_counter() - start
    t_small, actual = median_time(lambda: re_ranking(qf, gf), args.repeats, device)
    difference = np.abs(actual.cpu().numpy() - expected)
    diff = float(difference.max())
    # Two float32 implementations round the distance products differently: a near-tie (about 1e-7
    # apart) in one image's neighbour list can flip its order and move the Jaccard term of the
    # entries that share that image; the count of such entries says whether that is all it is.
    moved = int((difference > 1e-4).sum())
    dense = evaluate_rank(actual, *ids)
    bounded = evaluate_reranked(qf, gf, *ids)
    same = np.array_equal(dense.AP, bounded.AP) and np.array_equal(dense.cmc, bounded.cmc)
    rows.append([small.name, "re_ranking (dense result, k1=20, k2=6, lambda=0.3)", f"{t_small:.2f} s", "",
                 f"numpy reference (dense) {t_ref:.1f} s; max difference {diff:.1e}, entries differing by more than "
                 f"1e-4: {moved} of {difference.size:,}; evaluate_reranked gives "
                 f"identical per-query AP and CMC to evaluate_rank(re_ranking(...)): {same}"])


def benchmark_rerank(key: str, args, device: torch.device, rows: list[list[str]]) -> None:
    """Time and peak memory of the bounded re-ranking evaluation on one problem size."""
    size = SIZES[key]
    qf, gf, *ids = unit_features(*make_problem(size, args.dim, device, args.seed))
    repeats, warm_up = repeats_of(key, args)
    t_rerank, result = median_time(lambda: evaluate_reranked(qf, gf, *ids), repeats, device, warm_up)
    memory = mib(result.peak_memory_bytes)
    if device.type == "cpu":
        with RssPeak() as peak:
            evaluate_reranked(qf, gf, *ids)
        memory += f" (RSS growth {mib(peak.growth)})"
    scores = result.as_dict()
    dense_bytes = 4 * size.num_query * size.num_gallery
    rows.append([size.name, "evaluate_reranked (k1=20, k2=6, lambda=0.3; bounded, end to end)",
                 f"{t_rerank:.2f} s" + ("" if repeats > 1 else " (1 run)"), memory,
                 f"R1 {scores['R1']:.3f}, mAP {scores['mAP']:.3f}; the dense q x g result alone would take "
                 f"{mib(dense_bytes)}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--sizes", default="market,msmt", help="comma list of: " + ", ".join(SIZES))
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs for tiny and Market-sized problems")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed runs for larger problems")
    parser.add_argument("--reference-queries", type=int, default=300,
                        help="queries checked against the numpy reference (default 300)")
    parser.add_argument("--large-reference-queries", type=int, default=100,
                        help="the same for the large size, whose rows are a million long (default 100)")
    parser.add_argument("--msmt-distmat", action="store_true",
                        help="also time evaluate_rank on MSMT (materialises a 3.8 GB distance matrix)")
    parser.add_argument("--rerank", action="store_true",
                        help="also time k-reciprocal re-ranking (every selected size but large)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-mib", type=float, default=None,
                        help="memory budget of evaluate_features (default: its own); a budget below 16 whole "
                             "gallery rows selects the gallery-chunked path")
    args = parser.parse_args()

    sizes = [k.strip() for k in args.sizes.split(",") if k.strip()]
    unknown = [k for k in sizes if k not in SIZES]
    if unknown:
        parser.error(f"unknown size(s) {', '.join(unknown)}; choose from {', '.join(SIZES)}")
    torch.set_num_threads(args.threads)
    device = torch.device(resolve_device(args.device, option="--device"))
    rows: list[list[str]] = []
    for key in sizes:
        if SIZES[key].dtype == torch.float16 and device.type != "cuda":
            rows.append([SIZES[key].name, "evaluate_features", "not measured (needs --device cuda)", "", ""])
            continue
        benchmark_size(key, args, device, rows)
        if key == "market":
            benchmark_size(key, args, device, rows, untrained=True)
    if args.rerank:
        rerank_parity(args, device, rows, sizes)
        for key in sizes:
            if key != "large":  # (q+g)^2 products for a million images: not a re-ranking workload
                benchmark_rerank(key, args, device, rows)

    print(f"torch {torch.__version__}, {describe_machine(device)}, feature dim {args.dim}; tiny/Market rows: median of "
          f"{args.repeats} runs after a warm-up, larger rows: median of {args.large_repeats}\n")
    print("| Problem | Function | Time | Peak extra memory | Notes |")
    print("|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")


if __name__ == "__main__":
    run_cli(main)
