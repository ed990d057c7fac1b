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

Distances from features (:class:`FeatureDistances`) do not depend on the blocks they are computed in:
every matrix product has both operands' row counts padded to a multiple of 16 and multiplies the
gallery in chunks of a fixed size, and per-row norms are computed once. A BLAS library computes a
1-row product (GEMV) or a ragged tail with other kernels whose float32 sums round differently, so
otherwise two identical gallery images could get different distances and exact ties, hence the
metrics, would depend on the memory budget.

Distances are compared in float32 (as torchreid's and fast-reid's Cython evaluators do): float64
input is rounded to float32 first, float16/bfloat16 input is widened exactly. NaN is rejected.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch

from reid.utils.errors import ReIDError

ArrayLike = Union[np.ndarray, torch.Tensor]
#: Query rows for :meth:`FeatureDistances.rows`: a range, or indices (sequence, numpy or torch).
QueryRows = Union[slice, Sequence[int], np.ndarray, torch.Tensor]

#: The distance metrics of :func:`evaluate_features` and :class:`FeatureDistances`.
METRICS = ("cosine", "euclidean")
#: Memory budget on CPU when none is given (bytes).
DEFAULT_CPU_BUDGET_BYTES = 256 * 2**20
#: Fraction of the free CUDA memory used as budget when none is given.
CUDA_BUDGET_FRACTION = 0.5

# Both operands of every matrix product have a multiple of this many rows (zero rows are appended and
# their results dropped). MKL, like other BLAS libraries, computes a 1-row product as a GEMV and ragged
# row or column tails with other kernels, whose sums round differently; with both row counts a multiple
# of 16 each entry is computed the same way whatever block it is in (checked with MKL on AVX-512 over
# hundreds of random problems, 11- to 2048-d, galleries up to 16k, blocks of 16 to 1,024 rows; on CUDA
# the tests marked cuda check it).
_GEMM_ROWS = 16
# At most this many query rows per block, so the full query x gallery matrix is never materialised
# when there are more queries; on CPU, 1,024-row products run as fast per entry as larger ones (measured).
_MAX_BLOCK_ROWS = 1024
# The gallery is multiplied in chunks of a fixed number of rows (this many bytes of float32 features),
# never derived from the budget, so that the products' shapes do not depend on it. A chunk that must
# change dtype or device, and the zero-padded last chunk, are copied into a buffer of at most this size.
_GALLERY_CHUNK_BYTES = 32 * 2**20
# ... and at most this many rows, so that a block of distances to one chunk stays small for narrow
# features too (it bounds the working set of the gallery-chunked ranking, see _rank_gallery_chunks).
_MAX_GALLERY_CHUNK_ROWS = 16384
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
# Whole-call label vectors: per gallery image 4 int64 (pid, camera, index, identity order); per query
# 4 int64 (pid, camera, identity span start/count) and 4 accumulated metrics. The features' norms are
# counted by FeatureDistances.fixed_bytes.
_BYTES_PER_GALLERY_ITEM = 4 * 8
_BYTES_PER_QUERY = 4 * 8 + 4 * 8
# Working bytes per (query, gallery) entry of the gallery-chunked ranking: the float32 distance, its
# int64 key, the sign temporary of a general key and the int64 searchsorted result.
_CHUNKED_BYTES_PER_ENTRY = 4 + 3 * 8
_KEY_SENTINEL = torch.iinfo(torch.int64).max
# Sort only the candidate images (those not farther than a query's hardest true match) when they are
# at most 1/_SPARSE_CANDIDATE_FACTOR of the block: on CPU, sorting costs about ten times more per
# image than the searchsorted pass over every image.
_SPARSE_CANDIDATE_FACTOR = 16


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
        peak_memory_bytes: extra memory used by :func:`evaluate_features` or
            :func:`reid.evaluation.rerank.evaluate_reranked` (``None`` for :func:`evaluate_rank`): on
            CUDA the ``torch.cuda.max_memory_allocated`` increase; on CPU the bytes of the largest set
            of buffers alive at once, computed from their shapes.
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
    CUDA), except that a block always holds at least one query. ``distmat`` holds real numbers
    (floating point or integer; compared in float32).
    """
    dist = _as_tensor(distmat, "distmat")
    if dist.dim() != 2:
        raise ReIDError(f"evaluate_rank needs a 2-D query x gallery distance matrix, got shape "
                        f"{tuple(dist.shape)}.")
    if dist.dtype == torch.bool or dist.is_complex():
        raise ReIDError(f"The distance matrix must hold real numbers (floating point or integer), got dtype "
                        f"{dist.dtype}.")
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
    metric = _check_metric(metric)
    query, gallery, device = _feature_tensors(qf, gf)
    num_q, num_g = query.shape[0], gallery.shape[0]
    max_rank = _check_max_rank(max_rank)
    budget = _memory_budget(device, memory_budget_bytes)
    tracker = _PeakMemory(device)
    ids = _Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    distances = FeatureDistances(query, gallery, metric, normalize, device=device)

    fixed_bytes = _BYTES_PER_GALLERY_ITEM * num_g + _BYTES_PER_QUERY * num_q + distances.fixed_bytes
    smallest_whole_rows = fixed_bytes + _GEMM_ROWS * distances.block_row_bytes + int(ids.rank_cost(0).max())
    if smallest_whole_rows <= budget:
        rows_per_block, chunk_budget = _split_budget(budget, fixed_bytes, distances.block_row_bytes, num_q,
                                                     device)
        block_bytes = fixed_bytes + rows_per_block * distances.block_row_bytes
        acc = _rank_blocks(lambda start, end, out: distances.block(slice(start, end), out=out), ids,
                           rows_per_block, chunk_budget, block_bytes, tracker)
    else:
        acc = _rank_gallery_chunks(distances, ids, budget - fixed_bytes, fixed_bytes, tracker)
    return acc.result(max_rank, peak_memory_bytes=tracker.peak())


def compute_distance_matrix(
    qf: ArrayLike,
    gf: ArrayLike,
    metric: str = "cosine",
    normalize: bool = False,
) -> torch.Tensor:
    """The full query x gallery float32 distance matrix that :func:`evaluate_features` ranks.

    Bit-identical to the rows :func:`evaluate_features` computes block by block. Meant for small
    problems, tests and visualisation: it allocates ``len(qf) x len(gf)`` floats.
    """
    return FeatureDistances(qf, gf, metric, normalize).matrix()
# --------------------------------------------------------------------------------------------------
# Ranking kernel


class _Identities:
    """Query/gallery identities and cameras on one device, with the gallery grouped by identity.

    Grouping lets a query find its same-identity gallery images (true matches and same-camera junk)
    by binary search, without a query x gallery mask.
    """

    def __init__(self, q_pids, g_pids, q_camids, g_camids, num_q: int, num_g: int, device: torch.device):
        if num_q == 0 or num_g == 0:
            raise ReIDError(f"The {'query set' if num_q == 0 else 'gallery'} is empty ({num_q} queries, "
                            f"{num_g} gallery images): there is nothing to rank.")
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


_NAN_DISTANCES = "The distances contain NaN; check the features (NaN/inf values) that produced them."


def _identity_pairs(ids: _Identities, start: int, end: int) -> tuple[torch.Tensor, ...]:
    """``(match_rows, match_cols, junk_rows, junk_cols, num_matches)`` of queries ``start:end``: their true
    matches (same identity, other camera) and same-camera junk, rows within the block."""
    rows, cols = ids.same_identity_pairs(start, end)
    same_camera = ids.q_camids[start:end][rows] == ids.g_camids[cols]
    match_rows = rows[~same_camera]
    num_matches = torch.bincount(match_rows, minlength=end - start)
    return match_rows, cols[~same_camera], rows[same_camera], cols[same_camera], num_matches


def _count_matches_before(histogram: torch.Tensor, match_keys: torch.Tensor, keys: torch.Tensor) -> None:
    """Add to ``histogram[q, m]`` the images of ``keys`` (a row per query) that have exactly m true matches
    ranked before them (``match_keys``: each query's sorted match keys). Image j precedes the m-th true
    match iff that count is <= m (m itself included), so ``histogram.cumsum(1) - 1`` are the ranks."""
    matches_before = torch.searchsorted(match_keys, keys)
    histogram.scatter_add_(1, matches_before, torch.ones((), dtype=torch.int64,
                                                         device=keys.device).expand_as(matches_before))


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
        raise ReIDError(_NAN_DISTANCES)
    nonnegative = bool(lowest >= 0)
    match_rows, match_cols, junk_rows, junk_cols, num_matches = _identity_pairs(ids, start, end)
    num_queries, num_gallery = dist.shape
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
    histogram = torch.zeros_like(match_keys)
    _count_matches_before(histogram, match_keys, keys)
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
        # A sequential sum (the last of a cumulative sum), not .sum(1): a reduction's order can depend on
        # the number of rows, and AP must not depend on the block a query was ranked in.
        self.ap[start:end] = precision_at_match.cumsum(1)[:, -1] / count
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


class FeatureDistances:
    """The float32 query x gallery distances that :func:`evaluate_features` ranks, any rows at a time.

    ``distance = offset[g] + coef[g] * (q' . g)`` with ``q'`` the query scaled to unit length when the
    features are normalised: cosine ``1 - s_g (q' . g)``; euclidean ``sqrt(max(0, |q'|^2 + |g'|^2 -
    2 s_g (q' . g)))`` (``s_g`` = 1 / |g| when normalised, else 1). Per-row norms are computed once, in
    fixed chunks; every matrix product pads both operands to a multiple of 16 rows and multiplies the
    gallery in fixed chunks. So a distance does not depend on which other rows are computed with it:
    blocks of any size, :func:`compute_distance_matrix` and :meth:`rows` of any queries agree bit for
    bit, ties included.

    Args:
        qf, gf: query and gallery features (numpy or torch, float16/bfloat16/float32/float64).
        metric: ``"cosine"`` or ``"euclidean"``.
        normalize: L2-normalise the features first (cosine always does).
        device: where to compute; default ``qf``'s device when it is a tensor, else ``gf``'s.
    """

    def __init__(self, qf: ArrayLike, gf: ArrayLike, metric: str = "cosine", normalize: bool = False,
                 device: torch.device | str | None = None):
        self.metric = _check_metric(metric)
        self.query, self.gallery, default_device = _feature_tensors(qf, gf)
        self.device = torch.device(device) if device is not None else default_device
        self.unit_norm = bool(normalize) or metric == "cosine"
        num_g, dim = self.gallery.shape
        self.chunk_rows = _gallery_chunk_rows(dim)
        self.query_scale, self.query_sq_norm = self._scales(self.query)
        scale, sq_norm = self._scales(self.gallery)
        # distance = offset + coef * (q' . g): cosine 1 - s_g q'.g; squared euclidean |g'|^2 - 2 s_g q'.g
        # (+ |q'|^2 added per query row).
        self.coef = -scale if self.metric == "cosine" else -2.0 * scale
        self.offset = torch.ones_like(scale) if self.metric == "cosine" else sq_norm
        # A float32 contiguous gallery on the device is multiplied in place, chunk by chunk, except the
        # last chunk when it must be padded: that one is copied once. Any other gallery is converted
        # chunk by chunk into a reused buffer.
        self.in_place = (self.gallery.dtype == torch.float32 and self.gallery.device == self.device
                         and self.gallery.is_contiguous())
        last_start = (max(num_g - 1, 0) // self.chunk_rows) * self.chunk_rows
        self.last_width = num_g - last_start
        self._tail: torch.Tensor | None = None
        if self.in_place and self.last_width % _GEMM_ROWS:
            self._tail = self._padded_rows(self.gallery[last_start:])
        copied_rows = _padded(min(self.chunk_rows, num_g)) if not self.in_place else (
            0 if self._tail is None else self._tail.shape[0])
        self._buffer_bytes = 4 * dim * copied_rows

    @property
    def shape(self) -> tuple[int, int]:
        """(number of queries, number of gallery images)."""
        return self.query.shape[0], self.gallery.shape[0]

    @property
    def fixed_bytes(self) -> int:
        """Bytes held for the whole computation: per-row norms, scales and offsets, the gallery chunk
        buffer."""
        return 4 * 2 * self.query.shape[0] + 4 * 4 * self.gallery.shape[0] + self._buffer_bytes

    @property
    def block_row_bytes(self) -> int:
        """Bytes per query row of a block: its distances, its float32 features, the padded last chunk."""
        padded_last = _padded(self.last_width)
        tail = 4 * padded_last if padded_last != self.last_width else 0
        return 4 * self.gallery.shape[0] + 4 * self.query.shape[1] + tail

    def block(self, rows: QueryRows, out: torch.Tensor) -> torch.Tensor:
        """Distances of the query ``rows`` to every gallery image, written into ``out``.

        ``out``: float32 on :attr:`device`, ``num_gallery`` columns and at least as many rows as the
        queries rounded up to a multiple of 16 (the padding rows are scratch). Returns ``out``'s first
        ``len(rows)`` rows.
        """
        query, sq_norm = self._query_rows(rows)
        for start, chunk in self._gallery_chunks():
            end = min(start + self.chunk_rows, self.gallery.shape[0])
            self._chunk_distances(query, sq_norm, start, chunk, out[:query.shape[0], start:end])
        return out[:sq_norm.shape[0]]

    def column_chunks(self, rows: QueryRows, buffer: torch.Tensor) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first gallery index, distances)`` of the query ``rows`` to each fixed gallery chunk in turn.

        The same numbers as :meth:`block`, bit for bit, a chunk at a time: ``buffer`` (float32 on
        :attr:`device`, at least ``len(rows)`` rounded up to 16 rows and ``min(chunk_rows, num_gallery)``
        columns) is overwritten by each chunk, so a yielded view is valid until the next one.
        """
        query, sq_norm = self._query_rows(rows)
        for start, chunk in self._gallery_chunks():
            width = min(self.chunk_rows, self.gallery.shape[0] - start)
            yield start, self._chunk_distances(query, sq_norm, start, chunk, buffer[:query.shape[0], :width])

    def _query_rows(self, rows: QueryRows) -> tuple[torch.Tensor, torch.Tensor]:
        """The zero-padded (scaled) float32 query rows, and their squared norms (unpadded)."""
        scale, sq_norm = self.query_scale[_on(rows, self.device)], self.query_sq_norm[_on(rows, self.device)]
        query = self._padded_rows(self.query[_on(rows, self.query.device)])
        if self.unit_norm:
            query[:scale.shape[0]] *= scale[:, None]
        return query, sq_norm

    def _chunk_distances(self, query: torch.Tensor, sq_norm: torch.Tensor, start: int, chunk: torch.Tensor,
                         part: torch.Tensor) -> torch.Tensor:
        """Write the distances of the padded ``query`` rows to one gallery ``chunk`` (starting at gallery
        index ``start``) into ``part``; returns the rows of real queries."""
        end = start + part.shape[1]
        if chunk.shape[0] == part.shape[1]:
            torch.mm(query, chunk.T, out=part)
        else:  # the zero-padded last chunk
            part.copy_(torch.mm(query, chunk.T)[:, :part.shape[1]])
        # Two separately rounded operations, not addcmul: a fused multiply-add in a vectorised loop and
        # not in its scalar tail would make a distance depend on the layout of the buffer it lands in.
        part.mul_(self.coef[start:end]).add_(self.offset[start:end])
        dist = part[:sq_norm.shape[0]]
        if self.metric != "cosine":
            dist.add_(sq_norm[:, None])
        if self.metric == "euclidean":
            dist.clamp_(min=0).sqrt_()
        return dist

    def rows(self, rows: QueryRows) -> torch.Tensor:
        """A new ``len(rows) x num_gallery`` float32 tensor: the distances of the query ``rows``."""
        num = self.query_scale[_on(rows, self.device)].shape[0]
        return self.block(rows, torch.empty((_padded(num), self.gallery.shape[0]), device=self.device))

    def matrix(self) -> torch.Tensor:
        """The full ``num_query x num_gallery`` distance matrix."""
        out = torch.empty(self.shape, device=self.device)
        return _fill_rows(out, lambda start, end, block: self.block(slice(start, end), block), _MAX_BLOCK_ROWS)

    def _scales(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-row scale (1/norm when normalising, else 1) and squared norm of the scaled row."""
        scales, sq_norms = [torch.zeros(0, device=self.device)], [torch.zeros(0, device=self.device)]
        for start in range(0, features.shape[0], self.chunk_rows):
            chunk = features[start:start + self.chunk_rows].to(self.device, torch.float32)
            norm = torch.linalg.vector_norm(chunk, dim=1)  # a reduction: no chunk-sized temporary
            if not bool(torch.isfinite(norm).all()):
                raise ReIDError("A feature vector holds NaN or inf, or values too large for float32 (its norm "
                                "overflows); check the model's output before evaluating.")
            scale = 1.0 / norm.clamp(min=1e-12) if self.unit_norm else torch.ones_like(norm)
            scales.append(scale)
            sq_norms.append((norm * scale) ** 2)
        return torch.cat(scales), torch.cat(sq_norms)

    def _gallery_chunks(self) -> Iterator[tuple[int, torch.Tensor]]:
        """``(first row, float32 rows)`` of each gallery chunk; rows are zero-padded to a multiple of 16."""
        num_g = self.gallery.shape[0]
        buffer = None
        for start in range(0, num_g, self.chunk_rows):
            rows = self.gallery[start:start + self.chunk_rows]
            if self.in_place:
                yield start, rows if self._tail is None or start + rows.shape[0] < num_g else self._tail
            else:
                if buffer is None:
                    buffer = torch.empty((_padded(min(self.chunk_rows, num_g)), rows.shape[1]), device=self.device)
                padded = _padded(rows.shape[0])
                buffer[:rows.shape[0]].copy_(rows)  # converts in place: no chunk-sized temporary
                buffer[rows.shape[0]:padded] = 0
                yield start, buffer[:padded]

    def _padded_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """A float32 copy of ``rows`` on the device with zero rows appended up to a multiple of 16."""
        out = torch.zeros((_padded(rows.shape[0]), rows.shape[1]), device=self.device)
        out[:rows.shape[0]].copy_(rows)
        return out


def _fill_rows(out: torch.Tensor, compute: Callable[[int, int, torch.Tensor], torch.Tensor],
               rows_per_block: int) -> torch.Tensor:
    """Fill ``out`` (queries x gallery) by blocks of rows: ``compute(start, end, buffer)`` writes the
    rows ``start:end`` into ``buffer``, which needs ``end - start`` rounded up to a multiple of 16 rows.

    Blocks of a multiple of 16 rows are computed straight into ``out``; the last few rows go through
    a 16-row scratch buffer.
    """
    num_rows = out.shape[0]
    aligned = num_rows - num_rows % _GEMM_ROWS
    for start in range(0, aligned, rows_per_block):
        end = min(start + rows_per_block, aligned)
        compute(start, end, out[start:end])
    if aligned < num_rows:
        out[aligned:] = compute(aligned, num_rows, torch.empty((_GEMM_ROWS, out.shape[1]), device=out.device))
    return out


def _rank_blocks(compute: Callable[[int, int, torch.Tensor], torch.Tensor], ids: _Identities, rows_per_block: int,
                 chunk_budget: int, block_bytes: int, tracker: _PeakMemory) -> _MetricAccumulator:
    """Rank every query block by block: ``compute(start, end, buffer)`` returns the distances of queries
    ``start:end`` (written into ``buffer``, ``rows_per_block`` rows); each block is ranked in chunks of
    ``chunk_budget`` working bytes. ``block_bytes`` is what is alive besides the ranking chunks."""
    num_q, num_g = ids.q_pids.numel(), ids.num_gallery
    buffer = torch.empty((rows_per_block, num_g), device=ids.q_pids.device)
    rank_cost = ids.rank_cost(0)
    acc = _MetricAccumulator(num_q, ids.q_pids.device)
    for start in range(0, num_q, rows_per_block):
        end = min(start + rows_per_block, num_q)
        block = compute(start, end, buffer)
        for first, last in _row_blocks(rank_cost[start:end], chunk_budget):
            acc.add(start + first, *_true_match_ranks(block[first:last], ids, start + first, start + last))
            tracker.account(block_bytes + int(rank_cost[start + first:start + last].sum()))
    return acc


def _rank_gallery_chunks(distances: FeatureDistances, ids: _Identities, available_bytes: int, fixed_bytes: int,
                         tracker: _PeakMemory) -> _MetricAccumulator:
    """Rank every query against the gallery one fixed gallery chunk at a time, for galleries so large
    that even 16 whole rows of distances do not fit in the budget.

    Per block of queries, a first pass over the chunks collects the ordered keys of the true matches
    (the same keys as :func:`_true_match_ranks`); a second pass locates every gallery image among them
    with ``searchsorted`` and accumulates the per-query histogram that gives the matches' ranks. The
    distances are computed twice, in exactly the shapes of :meth:`FeatureDistances.block`, so the
    results are bit-identical to the whole-row path.
    """
    num_q, num_g = distances.shape
    device = distances.device
    chunk_width = min(distances.chunk_rows, num_g)
    widest = int(ids.span_count.max()) + 1  # bound on the true matches (+1 padding column) of a query
    row_bytes = (_CHUNKED_BYTES_PER_ENTRY * chunk_width + 4 * distances.query.shape[1]
                 + (2 * 8 + _BYTES_PER_IDENTITY_PAIR) * widest)
    rows_per_block = _block_rows(available_bytes, row_bytes, num_q)
    tracker.account(fixed_bytes + rows_per_block * row_bytes)
    buffer = torch.empty((rows_per_block, chunk_width), device=device)
    acc = _MetricAccumulator(num_q, device)
    for start in range(0, num_q, rows_per_block):
        end = min(start + rows_per_block, num_q)
        match_rows, match_cols, junk_rows, junk_cols, num_matches = _identity_pairs(ids, start, end)
        match_slot = _index_within_group(match_rows, num_matches)
        match_keys = torch.full((end - start, int(num_matches.max()) + 1), _KEY_SENTINEL, dtype=torch.int64,
                                device=device)
        nan_seen = torch.zeros((), dtype=torch.bool, device=device)  # checked once per block: no sync per chunk
        for first, dist in distances.column_chunks(slice(start, end), buffer):
            nan_seen |= torch.isnan(dist).any()
            here = (match_cols >= first) & (match_cols < first + dist.shape[1])
            r, c = match_rows[here], match_cols[here]
            match_keys[r, match_slot[here]] = _ordered_keys(dist[r, c - first], c, num_g, nonnegative=False)
        if bool(nan_seen):
            raise ReIDError(_NAN_DISTANCES)
        match_keys = torch.sort(match_keys, dim=1).values
        histogram = torch.zeros_like(match_keys)
        for first, dist in distances.column_chunks(slice(start, end), buffer):
            keys = _ordered_keys(dist, ids.gallery_index[first:first + dist.shape[1]], num_g, nonnegative=False)
            here = (junk_cols >= first) & (junk_cols < first + dist.shape[1])
            keys[junk_rows[here], junk_cols[here] - first] = _KEY_SENTINEL  # never counted
            _count_matches_before(histogram, match_keys, keys)
        acc.add(start, histogram.cumsum(1) - 1, num_matches)
    return acc


def _padded(num_rows: int) -> int:
    """``num_rows`` rounded up to a multiple of the GEMM row granule (at least one granule)."""
    return max(1, -(-num_rows // _GEMM_ROWS)) * _GEMM_ROWS


def _gallery_chunk_rows(dim: int) -> int:
    """Gallery rows per matrix product: a fixed multiple of 16 (it depends only on the width)."""
    rows = min(_GALLERY_CHUNK_BYTES // (4 * max(dim, 1)), _MAX_GALLERY_CHUNK_ROWS)
    return max(_GEMM_ROWS, rows // _GEMM_ROWS * _GEMM_ROWS)


def _block_rows(available_bytes: int, row_bytes: int, num_rows: int) -> int:
    """Query rows per block: what ``available_bytes`` holds, a multiple of 16 in [16, 1024], and not
    more than the (padded) number of queries."""
    rows = min(max(available_bytes, 0) // max(row_bytes, 1), _MAX_BLOCK_ROWS, _padded(num_rows))
    return max(_GEMM_ROWS, rows // _GEMM_ROWS * _GEMM_ROWS)


def _split_budget(budget: int, fixed_bytes: int, row_bytes: int, num_rows: int,
                  device: torch.device) -> tuple[int, int]:
    """(query rows per block, working budget of the chunks that rank or post-process a block).

    About half of what the fixed buffers leave goes to the block, the rest to ranking chunks (capped
    on CPU, see :data:`_CPU_RANK_CHUNK_BYTES`). A block has at least 16 rows; when that already
    exceeds the budget, chunks get nothing and rank one query at a time, so the peak stays at the
    minimum working set.
    """
    chunk_budget = _chunk_budget(device, budget // 2, _CPU_RANK_CHUNK_BYTES)
    rows = _block_rows(budget - fixed_bytes - chunk_budget, row_bytes, num_rows)
    return rows, _chunk_budget(device, max(budget - fixed_bytes - rows * row_bytes, 0), _CPU_RANK_CHUNK_BYTES)


def _on(rows: QueryRows, device: torch.device) -> slice | torch.Tensor:
    """``rows`` as something that indexes a tensor on ``device``: a slice, or an int64 index tensor."""
    if isinstance(rows, slice):
        return rows
    return torch.as_tensor(np.asarray(rows) if not isinstance(rows, torch.Tensor) else rows,
                           dtype=torch.int64).reshape(-1).to(device)


# --------------------------------------------------------------------------------------------------
# Inputs, budgets and memory


def _as_tensor(value: ArrayLike, name: str) -> torch.Tensor:
    """``value`` as a tensor (numpy arrays share memory where torch allows it)."""
    if isinstance(value, torch.Tensor):
        return value.detach()
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as err:  # e.g. ragged nested lists
        raise ReIDError(f"{name} must be a numpy array or torch tensor, got {type(value).__name__} that numpy "
                        f"cannot convert ({err}).") from err
    if array.dtype.kind not in "biufc":  # object, str, bytes, datetime...
        raise ReIDError(f"{name} must hold numbers, got a numpy array of dtype {array.dtype} "
                        f"(from {type(value).__name__}).")
    if any(stride < 0 for stride in array.strides):
        array = np.ascontiguousarray(array)  # torch cannot view negative strides (e.g. a[::-1])
    return torch.as_tensor(array)


def _feature_tensors(qf: ArrayLike, gf: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Checked query and gallery feature tensors and the device to work on (``qf``'s when a tensor)."""
    query, gallery = _as_tensor(qf, "qf"), _as_tensor(gf, "gf")
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ReIDError(f"Query and gallery features must be 2-D with the same width, got shapes "
                        f"{tuple(query.shape)} and {tuple(gallery.shape)}.")
    if not (query.is_floating_point() and gallery.is_floating_point()):
        raise ReIDError(f"Features must be floating point, got {query.dtype} and {gallery.dtype}.")
    device = query.device if isinstance(qf, torch.Tensor) else gallery.device
    return query, gallery, device


def _labels(value: ArrayLike, name: str, length: int, device: torch.device) -> torch.Tensor:
    labels = _as_tensor(value, name).reshape(-1)
    if labels.numel() != length:
        raise ReIDError(f"{name} has {labels.numel()} entries but the distance matrix / features have "
                        f"{length}; ids and features must come from the same query/gallery split.")
    if labels.numel() and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        raise ReIDError(f"{name} must hold integer ids, got dtype {labels.dtype}.")
    return labels.to(device=device, dtype=torch.int64)


def _check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ReIDError(f"Unknown distance metric {metric!r}; use one of {', '.join(METRICS)}.")
    return metric


def _check_max_rank(max_rank: int) -> int:
    # bool is an Integral too, but max_rank=True is a mistake, not 1.
    if isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
        raise ReIDError(f"max_rank must be a positive integer, got {max_rank!r}.")
    return int(max_rank)


def _memory_budget(device: torch.device, requested: int | None) -> int:
    """Bytes the block buffers may use: ``requested``, else 256 MiB on CPU or half the free CUDA memory."""
    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, numbers.Integral) or requested <= 0:
            raise ReIDError(f"memory_budget_bytes must be a positive integer, got {requested!r}.")
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
