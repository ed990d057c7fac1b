"""Exact, memory-bounded ReID ranking metrics: CMC, mAP and mINP (the public entry points).

:func:`evaluate_rank` ranks a query x gallery distance matrix; :func:`evaluate_features` ranks the
distances of query and gallery features without building that matrix. Both follow the Market-1501
protocol of torchreid and fast-reid (:mod:`reid.evaluation.protocol`), compare distances in float32,
order equal distances by gallery index as a stable sort would, and reject NaN. The work is split by
responsibility:

- :mod:`reid.evaluation.protocol`: inputs, identities, true matches and junk, per-query metrics;
- :mod:`reid.evaluation.distances`: feature distances, bit-identical whatever block they are in;
- :mod:`reid.evaluation.ranking`: the ranks of the true matches (candidates only, whole-row
  searchsorted, gallery-chunked);
- :mod:`reid.evaluation.memory`: the budget, block and chunk sizes, the peak.

Queries are processed in blocks sized from a memory budget, on the device the data lives on.
"""

from __future__ import annotations

import torch

from reid.evaluation.distances import GEMM_ROWS, FeatureDistances, compute_distance_matrix
from reid.evaluation.memory import (
    CPU_RANK_CHUNK_BYTES,
    CUDA_BUDGET_FRACTION,
    DEFAULT_CPU_BUDGET_BYTES,
    PeakMemory,
    chunk_budget,
    memory_budget,
    row_blocks,
    split_budget,
)
from reid.evaluation.protocol import (
    METRICS,
    ArrayLike,
    Identities,
    MetricAccumulator,
    RankResult,
    as_tensor,
    check_max_rank,
    check_metric,
    feature_tensors,
)
from reid.evaluation.ranking import rank_blocks, rank_cost, rank_gallery_chunks, true_match_ranks
from reid.utils.errors import ReIDError

__all__ = ["CUDA_BUDGET_FRACTION", "DEFAULT_CPU_BUDGET_BYTES", "METRICS", "ArrayLike", "FeatureDistances",
           "RankResult", "compute_distance_matrix", "evaluate_features", "evaluate_rank"]


def evaluate_rank(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    memory_budget_bytes: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP from a query x gallery distance matrix (smaller = more similar).

    Runs on the device of ``distmat`` (numpy arrays run on CPU), in blocks of queries whose working
    memory stays under ``memory_budget_bytes`` (default: 256 MiB on CPU, half the free memory on
    CUDA), except that a block always holds at least one query. ``distmat`` holds real numbers
    (floating point or integer; compared in float32).
    """
    dist = as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ReIDError(f"evaluate_rank needs a 2-D query x gallery distance matrix, got shape "
                        f"{tuple(dist.shape)}.")
    if dist.dtype == torch.bool or dist.is_complex():
        raise ReIDError(f"The distance matrix must hold real numbers (floating point or integer), got dtype "
                        f"{dist.dtype}.")
    device = dist.device
    num_q, num_g = dist.shape
    ids = Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    max_rank = check_max_rank(max_rank)
    budget = memory_budget(device, memory_budget_bytes)

    # A chunk not already contiguous float32 is converted: one float32 copy of its rows.
    copy_row_bytes = 0 if dist.dtype == torch.float32 and dist.is_contiguous() else 4 * num_g
    acc = MetricAccumulator(num_q, device)
    for start, end in row_blocks(rank_cost(ids, copy_row_bytes), chunk_budget(device, budget, CPU_RANK_CHUNK_BYTES)):
        chunk = dist[start:end].to(torch.float32).contiguous()
        acc.add(start, *true_match_ranks(chunk, ids, start, end))
    return acc.result(max_rank)


def evaluate_features(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    metric: str = "cosine",
    max_rank: int = 50,
    normalize: bool = False,
    memory_budget_bytes: int | None = None,
) -> RankResult:
    """CMC, mAP and mINP straight from query and gallery features, in blocks of query rows.

    Distances are those of :class:`FeatureDistances` (``"euclidean"``: the true, not squared,
    distance; ``"cosine"``: ``1 - cos``; ``normalize`` L2-normalises the features first, which only
    changes euclidean); they are bit-identical whatever the block size, so the result does not depend
    on ``memory_budget_bytes`` and equals ``evaluate_rank(compute_distance_matrix(...))``. Features may
    be float16/bfloat16/float32/float64; they are multiplied in float32. Everything runs on ``qf``'s
    device (``gf`` is moved there chunk by chunk).

    Memory: one block of at most 1,024 query rows is alive at a time (so the full query x gallery
    matrix is never built when there are more queries), sized so that all buffers stay under
    ``memory_budget_bytes`` (default: 256 MiB on CPU, half the free memory on CUDA). When even 16 whole
    gallery rows do not fit, the gallery is split too: each block of queries is ranked against fixed
    gallery chunks of at most 16,384 images, in two passes over the chunks (the true matches' distances,
    then every image's place among them), so the working set no longer grows with the gallery. What
    remains proportional to it is bookkeeping, 48 bytes per gallery image (its ids, norm and order),
    and the gallery conversion buffer (at most 32 MiB). ``peak_memory_bytes`` reports what was used; on
    CUDA it resets the device's peak-memory statistics.
    """
    metric = check_metric(metric)
    query, gallery, device = feature_tensors(qf, gf)
    num_q, num_g = query.shape[0], gallery.shape[0]
    max_rank = check_max_rank(max_rank)
    budget = memory_budget(device, memory_budget_bytes)
    tracker = PeakMemory(device)
    ids = Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    distances = FeatureDistances(query, gallery, metric, normalize, device=device)
    acc = MetricAccumulator(num_q, device)

    fixed_bytes = ids.nbytes + acc.nbytes + distances.fixed_bytes
    smallest_whole_rows = fixed_bytes + GEMM_ROWS * distances.block_row_bytes + int(rank_cost(ids).max())
    if smallest_whole_rows <= budget:
        rows_per_block, ranking_budget = split_budget(budget, fixed_bytes, distances.block_row_bytes, num_q, device)
        block_bytes = fixed_bytes + rows_per_block * distances.block_row_bytes
        rank_blocks(lambda start, end, out: distances.block(slice(start, end), out=out), ids, acc,
                    distances.block_buffer(rows_per_block), ranking_budget, block_bytes, tracker)
    else:
        rank_gallery_chunks(distances, ids, acc, budget - fixed_bytes, fixed_bytes, tracker)
    return acc.result(max_rank, peak_memory_bytes=tracker.peak())
