"""Exact, memory-bounded ReID ranking metrics: CMC, mAP and mINP.

Protocol (the Market-1501 one of torchreid and fast-reid): for each query, the gallery images of the
query's identity taken by the query's camera are discarded; a query left without any true match is
excluded from every average; AP is non-interpolated (mean of the precision at each true match); INP is
``num_matches / position of the hardest true match`` (1-based); ``cmc[k]`` is the fraction of valid
queries whose first true match is at 0-based rank ``<= k``. Equal distances are ordered by gallery
index, as a stable sort would.

How it avoids sorting every row: the metrics only need the rank of each true match among the kept
gallery images. Each distance is turned into an int64 key ``(float bits, gallery index)`` whose
integer order is exactly the stable order of the distances. Only images not farther than a query's
hardest true match can precede one of its matches; with a useful model they are a small fraction of
the gallery, and sorting just those gives the ranks. Otherwise (e.g. an untrained model) the keys of
the query's few true matches are sorted and one ``searchsorted`` of every gallery key into them
counts the matches preceding each image; a per-query histogram of those counts gives the ranks, in
O(G log M) per query (M = true matches) instead of O(G log G). Queries are processed in blocks sized
from a memory budget, on the device the data lives on.

Distances are compared in float32 (as torchreid's and fast-reid's Cython evaluators do): float64
input is rounded to float32 first, float16/bfloat16 input is widened exactly. NaN is rejected.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import numpy as np
import torch
import torch.nn.functional as F

from reid.utils.errors import ReIDError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: Memory budget on CPU when none is given (bytes).
DEFAULT_CPU_BUDGET_BYTES = 256 * 2**20
#: Fraction of the free CUDA memory used as budget when none is given.
CUDA_BUDGET_FRACTION = 0.5

# On CPU, ranks are computed on chunks of queries using about this much working memory whatever the
# budget: fastest on Market- and MSMT-sized problems on a 2-core CPU (smaller chunks pay per-chunk
# overhead, larger ones fall out of cache and pay page faults on every fresh allocation).
_CPU_RANK_CHUNK_BYTES = 48 * 2**20
# Working bytes per (query, gallery) entry while ranks are computed, besides the float32 distance
# itself: at the peak the int64 keys (8) and the int64 searchsorted result (8), plus 4 for the bool
# candidate mask and slack (building negative keys needs the keys and an 8-byte sign temporary).
_RANK_BYTES_PER_ENTRY = 20
# Bytes per (query, same-identity gallery image) pair: row and column int64 indices plus masks.
_BYTES_PER_IDENTITY_PAIR = 40
# Whole-call vectors: per gallery image 4 float32 (scale, squared norm, coefficient, offset) and
# 4 int64 (pid, camera, index, identity order); per query 4 int64 (pid, camera, identity span
# start/count) and 4 accumulated metrics.
_BYTES_PER_GALLERY_ITEM = 4 * 4 + 4 * 8
_BYTES_PER_QUERY = 4 * 8 + 4 * 8
_KEY_SENTINEL = torch.iinfo(torch.int64).max
# Sort only the candidate images (those not farther than a query's hardest true match) when they are
# at most 1/_SPARSE_CANDIDATE_FACTOR of the block: on CPU, sorting costs about ten times more per
# image than the searchsorted pass over every image.
_SPARSE_CANDIDATE_FACTOR = 16
_METRICS = ("euclidean", "cosine")


@dataclass(frozen=True)
class RankResult:
    """Ranking metrics of one evaluation.

    Attributes:
        cmc: CMC curve, ``cmc[k]`` = fraction of valid queries whose first true match has 0-based
            rank ``<= k``; always ``max_rank`` long (past the gallery size it repeats the last value).
        mAP: mean of ``AP`` (in [0, 1]).
        mINP: mean of ``INP`` (in [0, 1]).
        AP: average precision of each valid query, in the order of ``query_indices``.
        INP: inverse negative penalty of each valid query.
        query_indices: indices of the queries that were counted (those with a true match left).
        num_valid_queries: ``len(query_indices)``.
        peak_memory_bytes: extra memory used by :func:`evaluate_features` (``None`` for
            :func:`evaluate_rank`): on CUDA the ``torch.cuda.max_memory_allocated`` increase; on CPU
            the bytes of the largest set of block buffers alive at once, computed from their shapes.
    """

    cmc: np.ndarray
    mAP: float
    mINP: float
    AP: np.ndarray
    INP: np.ndarray
    query_indices: np.ndarray
    num_valid_queries: int
    peak_memory_bytes: int | None = None

    def as_dict(self) -> dict[str, float]:
        """R1/R5/R10 (those within ``max_rank``), mAP and mINP as plain floats, for JSON."""
        scores = {f"R{k}": float(self.cmc[k - 1]) for k in (1, 5, 10) if k <= len(self.cmc)}
        scores["mAP"] = float(self.mAP)
        scores["mINP"] = float(self.mINP)
        return scores


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
    CUDA), except that a block always holds at least one query.
    """
    dist = _as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ReIDError(f"evaluate_rank needs a 2-D query x gallery distance matrix, got shape "
                        f"{tuple(dist.shape)}.")
    device = dist.device
    num_q, num_g = dist.shape
    ids = _Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    max_rank = _check_max_rank(max_rank)
    budget = _memory_budget(device, memory_budget_bytes)

    # A chunk not already contiguous float32 is converted: one float32 copy of its rows.
    copy_row_bytes = 0 if dist.dtype == torch.float32 and dist.is_contiguous() else 4 * num_g
    chunk_budget = _chunk_budget(device, budget, _CPU_RANK_CHUNK_BYTES)
    acc = _MetricAccumulator(num_q, device)
    for start, end in _row_blocks(ids.rank_cost(copy_row_bytes), chunk_budget):
        chunk = dist[start:end].to(torch.float32).contiguous()
        acc.add(start, *_true_match_ranks(chunk, ids, start, end))
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
    """CMC, mAP and mINP straight from query and gallery features, without a full distance matrix.

    Distances are those of :func:`compute_distance_matrix` (``"euclidean"``: the true, not squared,
    distance; ``"cosine"``: ``1 - cos``; ``normalize`` L2-normalises the features first, which only
    changes euclidean). Features may be float16/bfloat16/float32/float64; they are multiplied in
    float32 blocks. Everything runs on ``qf``'s device (``gf`` is moved there block by block). Only a
    block of query rows is alive at a time, sized so block buffers stay under ``memory_budget_bytes``
    (default: 256 MiB on CPU, half the free memory on CUDA; a block always holds at least one query,
    so the bound is max(budget, about 24 bytes x gallery size)). ``peak_memory_bytes`` of the result
    reports what was used; on CUDA it resets the device's peak-memory statistics.
    """
    metric = _check_metric(metric)
    query = _as_tensor(qf, "qf")
    gallery = _as_tensor(gf, "gf")
    device = query.device if isinstance(qf, torch.Tensor) else gallery.device
    _check_features(query, gallery)
    num_q, num_g = query.shape[0], gallery.shape[0]
    ids = _Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    max_rank = _check_max_rank(max_rank)
    budget = _memory_budget(device, memory_budget_bytes)

    tracker = _PeakMemory(device)
    distance = _BlockDistance(gallery, metric, normalize, device, feature_budget_bytes=budget // 4)
    # Vectors (ids, norms, per-query metrics) and the gallery conversion block live for the whole call.
    fixed_bytes = _BYTES_PER_GALLERY_ITEM * num_g + _BYTES_PER_QUERY * num_q + distance.block_bytes
    chunk_budget = _chunk_budget(device, budget // 2, _CPU_RANK_CHUNK_BYTES)
    # Per query row of a block: its float32 distances, and its features converted to float32 and
    # normalised (up to two float32 copies at once).
    block_row_bytes = 4 * num_g + 2 * 4 * query.shape[1]
    rows_per_block = max(1, (budget - fixed_bytes - chunk_budget) // block_row_bytes)
    buffer = torch.empty((min(rows_per_block, num_q), num_g), device=device)
    rank_cost = ids.rank_cost(0)
    acc = _MetricAccumulator(num_q, device)
    for start in range(0, num_q, rows_per_block):
        end = min(start + rows_per_block, num_q)
        block = distance(query[start:end], out=buffer[:end - start])
        for first, last in _row_blocks(rank_cost[start:end], chunk_budget):
            acc.add(start + first, *_true_match_ranks(block[first:last], ids, start + first, start + last))
            tracker.account(fixed_bytes + buffer.numel() * 4 + (end - start) * 2 * 4 * query.shape[1]
                            + int(rank_cost[start + first:start + last].sum()))
    return acc.result(max_rank, peak_memory_bytes=tracker.peak())


def compute_distance_matrix(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: str = "cosine",
    normalize: bool = False,
) -> torch.Tensor:
    """The full query x gallery float32 distance matrix that :func:`evaluate_features` ranks.

    Meant for small problems, tests and visualisation; it allocates ``len(qf) x len(gf)`` floats.
    """
    metric = _check_metric(metric)
    query, gallery = _as_tensor(qf, "qf"), _as_tensor(gf, "gf")
    _check_features(query, gallery)
    device = query.device if isinstance(qf, torch.Tensor) else gallery.device
    distance = _BlockDistance(gallery, metric, normalize, device,
                              feature_budget_bytes=DEFAULT_CPU_BUDGET_BYTES // 4)
    return distance(query)


# --------------------------------------------------------------------------------------------------
# Ranking kernel


class _Identities:
    """Query/gallery identities and cameras on one device, with the gallery grouped by identity.

    Grouping lets a query find its same-identity gallery images (true matches and same-camera junk)
    by binary search, without a query x gallery mask.
    """

    def __init__(self, q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, device: torch.device):
        self.q_pids = _labels(q_pids, "q_pids", num_q, device)
        self.g_pids = _labels(g_pids, "g_pids", num_g, device)
        self.q_camids = _labels(q_camids, "q_camids", num_q, device)
        self.g_camids = _labels(g_camids, "g_camids", num_g, device)
        self.num_gallery = num_g
        self.gallery_index = torch.arange(num_g, device=device)
        self.gallery_by_pid = torch.argsort(self.g_pids, stable=True)
        sorted_pids = self.g_pids[self.gallery_by_pid]
        self.span_start = torch.searchsorted(sorted_pids, self.q_pids)
        self.span_count = torch.searchsorted(sorted_pids, self.q_pids, right=True) - self.span_start

    def rank_cost(self, extra_row_bytes: int) -> torch.Tensor:
        """Working bytes of ranking each query: gallery-wide buffers plus its identity pairs."""
        row_bytes = self.num_gallery * _RANK_BYTES_PER_ENTRY + extra_row_bytes
        return row_bytes + self.span_count.cpu() * _BYTES_PER_IDENTITY_PAIR

    def same_identity_pairs(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the block, gallery index) of every same-identity pair of queries ``start:end``.

        Rows come out grouped and in order; within a row, gallery indices are ascending.
        """
        rows, positions = _expand_ranges(self.span_start[start:end], self.span_count[start:end])
        return rows, self.gallery_by_pid[positions]


def _expand_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the ranges ``starts[r] : starts[r] + lengths[r]``: (range r, position) of each element."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    return owner, starts[owner] + _index_within_group(owner, lengths)


def _index_within_group(group: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """0-based position of each element within its group, for elements sorted by ``group``."""
    group_start = torch.cumsum(group_sizes, 0) - group_sizes
    return torch.arange(group.numel(), device=group.device) - group_start[group]


def _ordered_keys(values: torch.Tensor, gallery_index: torch.Tensor, num_gallery: int,
                  nonnegative: bool) -> torch.Tensor:
    """int64 keys ordered like (float32 distance, gallery index), i.e. like a stable sort.

    A float's bit pattern read as an integer is ordered like the float when non-negative; a negative
    float maps to minus its magnitude bits, which also maps -0.0 to 0 (they compare equal).
    ``nonnegative`` (no value below 0) allows a cheaper form of the same map.
    """
    bits = values.view(torch.int32).to(torch.int64)
    if nonnegative:
        bits.clamp_(min=0)  # only -0.0 reads as negative
    else:
        # v = magnitude - 2**31 for a negative float; -magnitude = -v - 2**31, computed in place.
        sign = bits >> 63  # -1 where negative, else 0
        bits ^= sign
        bits -= sign
        bits.add_(sign, alpha=2**31)
    return bits.mul_(num_gallery).add_(gallery_index)


def _true_match_ranks(
    dist: torch.Tensor, ids: _Identities, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of every true match of queries ``start:end`` among their kept gallery images.

    Only gallery images not farther than a query's hardest true match can precede one of its
    matches. When those candidates are few (a useful model), they alone are sorted; otherwise every
    image is located among the sorted true matches with one ``searchsorted``.

    Args:
        dist: contiguous float32 distances of the block, (end - start) x G.
    Returns:
        ``ranks`` (B x W int64, row q's first ``num_matches[q]`` entries ascending, rest padding) and
        ``num_matches`` (B,).
    """
    lowest = dist.min() if dist.numel() else torch.zeros(())
    if torch.isnan(lowest):
        raise ReIDError("The distance matrix contains NaN; check the features (NaN/inf values) that "
                        "produced it.")
    nonnegative = bool(lowest >= 0)
    rows, cols = ids.same_identity_pairs(start, end)
    same_camera = ids.q_camids[start:end][rows] == ids.g_camids[cols]
    match_rows, match_cols = rows[~same_camera], cols[~same_camera]
    junk_rows, junk_cols = rows[same_camera], cols[same_camera]
    num_queries, num_gallery = dist.shape
    num_matches = torch.bincount(match_rows, minlength=num_queries)
    width = int(num_matches.max()) + 1 if num_queries else 1

    hardest = torch.full((num_queries,), float("nan"), device=dist.device)  # NaN: no candidates
    hardest.scatter_reduce_(0, match_rows, dist[match_rows, match_cols], reduce="amax", include_self=False)
    candidate = dist <= hardest[:, None]
    candidate[junk_rows, junk_cols] = False
    if int(candidate.sum()) * _SPARSE_CANDIDATE_FACTOR <= candidate.numel():
        return _ranks_among_candidates(dist, candidate, ids, start, nonnegative, width), num_matches
    del candidate

    keys = _ordered_keys(dist, ids.gallery_index, num_gallery, nonnegative)
    keys[junk_rows, junk_cols] = _KEY_SENTINEL  # sorts after every true match: never counted
    match_keys = torch.full((num_queries, width), _KEY_SENTINEL, dtype=torch.int64, device=dist.device)
    match_keys[match_rows, _index_within_group(match_rows, num_matches)] = keys[match_rows, match_cols]
    match_keys = torch.sort(match_keys, dim=1).values
    # matches_before[q, j] = number of true matches of q ranked before gallery image j. Image j
    # precedes the m-th true match iff matches_before <= m (m itself included, hence the -1 below).
    matches_before = torch.searchsorted(match_keys, keys)
    del keys
    histogram = torch.zeros((num_queries, width), dtype=torch.int64, device=dist.device)
    histogram.scatter_add_(1, matches_before, torch.ones((), dtype=torch.int64,
                                                         device=dist.device).expand_as(matches_before))
    return histogram.cumsum(1) - 1, num_matches


def _ranks_among_candidates(
    dist: torch.Tensor, candidate: torch.Tensor, ids: _Identities, start: int, nonnegative: bool, width: int
) -> torch.Tensor:
    """Ranks of the true matches from a stable sort of each query's candidate images only."""
    rows, cols = candidate.nonzero(as_tuple=True)
    keys = _ordered_keys(dist[rows, cols], cols, dist.shape[1], nonnegative)
    # Sort by key, then stably by row: each row's candidates end up contiguous and in rank order.
    order = torch.argsort(keys)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, cols = rows[order], cols[order]
    # Junk is not a candidate, so a candidate of the query's identity is a true match.
    is_match = ids.g_pids[cols] == ids.q_pids[start + rows]
    position = _index_within_group(rows, torch.bincount(rows, minlength=dist.shape[0]))
    match_rows, match_rank = rows[is_match], position[is_match]
    num_matches = torch.bincount(match_rows, minlength=dist.shape[0])
    ranks = torch.zeros((dist.shape[0], width), dtype=torch.int64, device=dist.device)
    ranks[match_rows, _index_within_group(match_rows, num_matches)] = match_rank
    return ranks


class _MetricAccumulator:
    """Per-query AP, INP and first-match rank, filled block by block."""

    def __init__(self, num_queries: int, device: torch.device):
        self.num_matches = torch.zeros(num_queries, dtype=torch.int64, device=device)
        self.first_rank = torch.zeros(num_queries, dtype=torch.int64, device=device)
        self.ap = torch.zeros(num_queries, dtype=torch.float64, device=device)
        self.inp = torch.zeros(num_queries, dtype=torch.float64, device=device)

    def add(self, start: int, ranks: torch.Tensor, num_matches: torch.Tensor) -> None:
        end = start + ranks.shape[0]
        nth = torch.arange(1, ranks.shape[1] + 1, device=ranks.device, dtype=torch.float64)
        is_match = nth <= num_matches[:, None]
        precision_at_match = torch.where(is_match, nth / (ranks + 1), 0.0)
        count = num_matches.clamp(min=1).to(torch.float64)
        last = ranks.gather(1, (num_matches - 1).clamp(min=0)[:, None]).squeeze(1)
        self.num_matches[start:end] = num_matches
        self.first_rank[start:end] = ranks[:, 0]
        self.ap[start:end] = precision_at_match.sum(1) / count
        self.inp[start:end] = num_matches / (last + 1).to(torch.float64)

    def result(self, max_rank: int, peak_memory_bytes: int | None = None) -> RankResult:
        valid = self.num_matches > 0
        num_valid = int(valid.sum())
        if num_valid == 0:
            raise ReIDError("No query has a true match in the gallery (same identity, other camera), "
                            "so CMC/mAP are undefined; check the query/gallery split and the person and "
                            "camera ids.")
        first = self.first_rank[valid].clamp(max=max_rank)
        cmc = torch.bincount(first, minlength=max_rank + 1)[:max_rank].cumsum(0).double() / num_valid
        ap = self.ap[valid].cpu().numpy()
        inp = self.inp[valid].cpu().numpy()
        return RankResult(
            cmc=cmc.cpu().numpy(),
            mAP=float(ap.mean()),
            mINP=float(inp.mean()),
            AP=ap,
            INP=inp,
            query_indices=torch.nonzero(valid).squeeze(1).cpu().numpy(),
            num_valid_queries=num_valid,
            peak_memory_bytes=peak_memory_bytes,
        )


# --------------------------------------------------------------------------------------------------
# Distances


class _BlockDistance:
    """float32 distances of query blocks to the whole gallery, multiplied in gallery blocks.

    ``metric`` is ``"euclidean"``, ``"cosine"`` or ``"sqeuclidean"`` (squared euclidean, not clamped:
    what re-ranking uses). Gallery scale factors and squared norms are computed once, so a gallery
    block is only copied when it must change dtype/device (at most ``feature_budget_bytes``).
    """

    def __init__(self, gallery: torch.Tensor, metric: str, normalize: bool, device: torch.device,
                 feature_budget_bytes: int):
        self.gallery = gallery
        self.metric = metric
        self.unit_norm = normalize or metric == "cosine"
        self.device = device
        needs_copy = gallery.dtype != torch.float32 or gallery.device != device or not gallery.is_contiguous()
        dim = max(gallery.shape[1], 1)
        self.rows_per_block = (max(1, feature_budget_bytes // (dim * 4)) if needs_copy
                               else max(gallery.shape[0], 1))
        self.block_bytes = min(self.rows_per_block, gallery.shape[0]) * dim * 4 if needs_copy else 0
        scales, sq_norms = [], []
        for block in self._gallery_blocks():
            norm = torch.linalg.vector_norm(block, dim=1)  # a reduction: no block-sized temporary
            scale = 1.0 / norm.clamp(min=1e-12) if self.unit_norm else torch.ones_like(norm)
            scales.append(scale)
            sq_norms.append((norm * scale) ** 2)
        empty = torch.zeros(0, device=device)
        scale = torch.cat(scales) if scales else empty
        sq_norm = torch.cat(sq_norms) if sq_norms else empty
        # distance = offset + coef * (q . g): cosine 1 - s_g q.g; squared euclidean |g|^2 - 2 s_g q.g
        # (+ |q|^2 added per query row).
        self.coef = -scale if metric == "cosine" else -2.0 * scale
        self.offset = torch.ones_like(scale) if metric == "cosine" else sq_norm

    def _gallery_blocks(self):
        for start in range(0, self.gallery.shape[0], self.rows_per_block):
            yield self.gallery[start:start + self.rows_per_block].to(self.device, torch.float32)

    def __call__(self, query: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """Distances of ``query`` rows to every gallery row, written into ``out`` when given."""
        query = query.to(self.device, torch.float32)
        if self.unit_norm:
            query = F.normalize(query, dim=1)
        if out is None:
            out = torch.empty((query.shape[0], self.gallery.shape[0]), device=self.device)
        start = 0
        for block in self._gallery_blocks():
            end = start + block.shape[0]
            part = out[:, start:end]
            torch.mm(query, block.T, out=part)
            torch.addcmul(self.offset[start:end], part, self.coef[start:end], out=part)
            start = end
        if self.metric != "cosine":
            out.add_(torch.linalg.vector_norm(query, dim=1, keepdim=True) ** 2)
        if self.metric == "euclidean":
            out.clamp_(min=0).sqrt_()
        return out


# --------------------------------------------------------------------------------------------------
# Inputs, budgets and memory


def _as_tensor(value: ArrayLike, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError) as err:
        raise ReIDError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__}.") from err


def _labels(value: ArrayLike, name: str, length: int, device: torch.device) -> torch.Tensor:
    labels = _as_tensor(value, name).reshape(-1)
    if labels.numel() != length:
        raise ReIDError(f"{name} has {labels.numel()} entries but the distance matrix / features have "
                        f"{length}; ids and features must come from the same query/gallery split.")
    if labels.numel() and (labels.is_floating_point() or labels.is_complex()):
        raise ReIDError(f"{name} must hold integer ids, got dtype {labels.dtype}.")
    return labels.to(device=device, dtype=torch.int64)


def _check_features(query: torch.Tensor, gallery: torch.Tensor) -> None:
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ReIDError(f"Query and gallery features must be 2-D with the same width, got shapes "
                        f"{tuple(query.shape)} and {tuple(gallery.shape)}.")
    if not (query.is_floating_point() and gallery.is_floating_point()):
        raise ReIDError(f"Features must be floating point, got {query.dtype} and {gallery.dtype}.")


def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise ReIDError(f"Unknown distance metric {metric!r}; use one of {', '.join(_METRICS)}.")
    return metric


def _check_max_rank(max_rank: int) -> int:
    if int(max_rank) != max_rank or max_rank < 1:
        raise ReIDError(f"max_rank must be a positive integer, got {max_rank!r}.")
    return int(max_rank)


def _memory_budget(device: torch.device, requested: int | None) -> int:
    """Bytes the block buffers may use: ``requested``, else 256 MiB on CPU or half the free CUDA memory."""
    if requested is not None:
        if requested <= 0:
            raise ReIDError(f"memory_budget_bytes must be positive, got {requested}.")
        return int(requested)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(CUDA_BUDGET_FRACTION * (free + cached))
    return DEFAULT_CPU_BUDGET_BYTES


def _chunk_budget(device: torch.device, budget: int, cpu_cap: int) -> int:
    """Working memory for one chunk: the budget, capped on CPU where cache-sized chunks run faster."""
    return min(budget, cpu_cap) if device.type == "cpu" else budget


def _row_blocks(cost: torch.Tensor, budget: int) -> list[tuple[int, int]]:
    """Consecutive row ranges whose summed ``cost`` fits in ``budget`` (at least one row each)."""
    cumulative = torch.cumsum(cost, 0).cpu()
    blocks, start, spent = [], 0, 0
    while start < len(cumulative):
        end = max(int(torch.searchsorted(cumulative, spent + max(budget, 1), right=True)), start + 1)
        blocks.append((start, end))
        spent, start = int(cumulative[end - 1]), end
    return blocks


class _PeakMemory:
    """Extra memory of a computation: measured on CUDA, accounted from block shapes on CPU."""

    def __init__(self, device: torch.device):
        self.device = device
        self.accounted = 0
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            self.baseline = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)

    def account(self, nbytes: int) -> None:
        self.accounted = max(self.accounted, int(nbytes))

    def peak(self) -> int:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            return int(torch.cuda.max_memory_allocated(self.device) - self.baseline)
        return self.accounted
