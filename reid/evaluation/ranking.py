"""The ranks of the true matches, without sorting every row: three paths over one ordered key.

The metrics only need the rank of each true match among the kept gallery images. Each distance is
turned into an int64 key ``(float bits, gallery index)`` whose integer order is exactly the stable
order of the distances (:func:`ordered_keys`): equal distances are ordered by gallery index, as a
stable sort would. Then, per block of queries:

- **candidates only** (:func:`true_match_ranks`, a useful model): only images not farther than a
  query's hardest true match can precede one of its matches; they are a small fraction of the gallery,
  and sorting just those gives the ranks;
- **whole-row searchsorted** (:func:`true_match_ranks` otherwise, e.g. an untrained model): the keys of
  the query's few true matches are sorted and one ``searchsorted`` of every gallery key into them
  counts the matches preceding each image; a per-query histogram of those counts gives the ranks, in
  O(G log M) per query (M = true matches) instead of O(G log G);
- **gallery-chunked, two passes** (:func:`rank_gallery_chunks`, when even 16 whole rows of distances do
  not fit in the budget): the true matches' keys are collected chunk by chunk, then every image is
  located among them chunk by chunk, with the same histogram.

Everything runs on the device the distances live on. NaN distances are rejected.
"""

from __future__ import annotations

from typing import Callable

import torch

from reid.evaluation.distances import FeatureDistances
from reid.evaluation.memory import PeakMemory, block_rows, row_blocks
from reid.evaluation.protocol import (
    IDENTITY_PAIR_BYTES,
    Identities,
    MetricAccumulator,
    identity_pairs,
    index_within_group,
)
from reid.utils.errors import ReIDError

# Larger than every key of a real image: sorts after every true match, so it is never counted.
_KEY_SENTINEL = torch.iinfo(torch.int64).max
# Sort only the candidate images (those not farther than a query's hardest true match) when they are
# at most 1/_SPARSE_CANDIDATE_FACTOR of the block: on CPU, sorting costs about ten times more per
# image than the searchsorted pass over every image.
_SPARSE_CANDIDATE_FACTOR = 16
_NAN_DISTANCES = "The distances contain NaN; check the features (NaN/inf values) that produced them."


def ordered_keys(values: torch.Tensor, gallery_index: torch.Tensor, num_gallery: int,
                 nonnegative: bool) -> torch.Tensor:
    """int64 keys ordered like (float32 distance, gallery index), i.e. like a stable sort.

    A float's bit pattern read as an integer is ordered like the float when non-negative; a negative
    float maps to minus its magnitude bits, which also maps -0.0 to 0 (they compare equal).
    ``nonnegative`` (no value below 0) allows a cheaper form of the same map. Memory: the int64 keys
    and, unless ``nonnegative``, an int64 sign temporary while they are built.
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


def _count_matches_before(histogram: torch.Tensor, match_keys: torch.Tensor, keys: torch.Tensor) -> None:
    """Add to ``histogram[q, m]`` the images of ``keys`` (a row per query) that have exactly m true matches
    ranked before them (``match_keys``: each query's sorted match keys). Image j precedes the m-th true
    match iff that count is <= m (m itself included), so ``histogram.cumsum(1) - 1`` are the ranks.
    Memory: an int64 count per entry of ``keys``."""
    matches_before = torch.searchsorted(match_keys, keys)
    histogram.scatter_add_(1, matches_before, torch.ones((), dtype=torch.int64,
                                                         device=keys.device).expand_as(matches_before))


# --------------------------------------------------------------------------------------------------
# Whole rows: candidates only, or searchsorted over every image

#: Working bytes per (query, gallery) entry while :func:`true_match_ranks` runs, besides the float32
#: distance itself: at the peak the int64 keys (8) and the int64 searchsorted result (8), plus 4 for the
#: bool candidate mask and slack (building negative keys needs the keys and an 8-byte sign temporary; the
#: candidate path holds the mask and, for at most 1/16 of the entries, int64 positions and keys).
RANK_BYTES_PER_ENTRY = 20


def rank_cost(ids: Identities, extra_row_bytes: int = 0) -> torch.Tensor:
    """Working bytes of ranking each query with :func:`true_match_ranks` (a CPU int64 vector):
    gallery-wide buffers, ``extra_row_bytes`` per query, and its identity pairs."""
    row_bytes = ids.num_gallery * RANK_BYTES_PER_ENTRY + extra_row_bytes
    return row_bytes + ids.span_count.cpu() * IDENTITY_PAIR_BYTES


def true_match_ranks(
    dist: torch.Tensor, ids: Identities, start: int, end: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """0-based ranks of every true match of queries ``start:end`` among their kept gallery images.

    Only gallery images not farther than a query's hardest true match can precede one of its
    matches. When those candidates are few (a useful model), they alone are sorted; otherwise every
    image is located among the sorted true matches with one ``searchsorted``. Memory:
    :func:`rank_cost` per query.

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
    pairs = identity_pairs(ids, start, end)
    match_rows, match_cols, junk_rows, junk_cols, num_matches = pairs
    num_queries = dist.shape[0]
    width = int(num_matches.max()) + 1 if num_queries else 1

    hardest = torch.full((num_queries,), float("nan"), device=dist.device)  # NaN: no candidates
    hardest.scatter_reduce_(0, match_rows, dist[match_rows, match_cols], reduce="amax", include_self=False)
    candidate = dist <= hardest[:, None]
    candidate[junk_rows, junk_cols] = False
    if int(candidate.sum()) * _SPARSE_CANDIDATE_FACTOR <= candidate.numel():
        return _ranks_among_candidates(dist, candidate, ids, start, nonnegative, width), num_matches
    del candidate  # freed before the keys are built
    return _ranks_by_searchsorted(dist, pairs, ids, nonnegative, width), num_matches


def _ranks_among_candidates(
    dist: torch.Tensor, candidate: torch.Tensor, ids: Identities, start: int, nonnegative: bool, width: int
) -> torch.Tensor:
    """Ranks of the true matches from a stable sort of each query's candidate images only."""
    rows, cols = candidate.nonzero(as_tuple=True)
    keys = ordered_keys(dist[rows, cols], cols, dist.shape[1], nonnegative)
    # Sort by key, then stably by row: each row's candidates end up contiguous and in rank order.
    order = torch.argsort(keys)
    order = order[torch.argsort(rows[order], stable=True)]
    rows, cols = rows[order], cols[order]
    # Junk is not a candidate, so a candidate of the query's identity is a true match.
    is_match = ids.g_pids[cols] == ids.q_pids[start + rows]
    position = index_within_group(rows, torch.bincount(rows, minlength=dist.shape[0]))
    match_rows, match_rank = rows[is_match], position[is_match]
    num_matches = torch.bincount(match_rows, minlength=dist.shape[0])
    ranks = torch.zeros((dist.shape[0], width), dtype=torch.int64, device=dist.device)
    ranks[match_rows, index_within_group(match_rows, num_matches)] = match_rank
    return ranks


def _ranks_by_searchsorted(dist: torch.Tensor, pairs: tuple[torch.Tensor, ...], ids: Identities,
                           nonnegative: bool, width: int) -> torch.Tensor:
    """Ranks of the true matches from every image's place among the sorted true matches of its query."""
    match_rows, match_cols, junk_rows, junk_cols, num_matches = pairs
    keys = ordered_keys(dist, ids.gallery_index, dist.shape[1], nonnegative)
    keys[junk_rows, junk_cols] = _KEY_SENTINEL  # sorts after every true match: never counted
    match_keys = torch.full((dist.shape[0], width), _KEY_SENTINEL, dtype=torch.int64, device=dist.device)
    match_keys[match_rows, index_within_group(match_rows, num_matches)] = keys[match_rows, match_cols]
    match_keys = torch.sort(match_keys, dim=1).values
    histogram = torch.zeros_like(match_keys)
    _count_matches_before(histogram, match_keys, keys)
    return histogram.cumsum(1) - 1


def rank_blocks(compute: Callable[[int, int, torch.Tensor], torch.Tensor], ids: Identities, acc: MetricAccumulator,
                buffer: torch.Tensor, chunk_budget: int, block_bytes: int, tracker: PeakMemory,
                on_ranked: Callable[[int], None] | None = None) -> None:
    """Rank every query block by block into ``acc``: ``compute(start, end, buffer)`` returns the distances
    of queries ``start:end`` (written into ``buffer``, whose rows make a block); each block is ranked in
    chunks of ``chunk_budget`` working bytes (:func:`rank_cost`). ``block_bytes`` is what is alive besides
    the ranking chunks (``buffer`` included). ``on_ranked(n)`` is told after each block that the first
    ``n`` queries are ranked (for progress)."""
    num_q, rows_per_block = ids.num_queries, buffer.shape[0]
    cost = rank_cost(ids)
    for start in range(0, num_q, rows_per_block):
        end = min(start + rows_per_block, num_q)
        block = compute(start, end, buffer)
        for first, last in row_blocks(cost[start:end], chunk_budget):
            acc.add(start + first, *true_match_ranks(block[first:last], ids, start + first, start + last))
            tracker.account(block_bytes + int(cost[start + first:start + last].sum()))
        if on_ranked is not None:
            on_ranked(end)


# --------------------------------------------------------------------------------------------------
# Gallery chunks, two passes

#: Working bytes per (query, gallery-chunk) entry of :func:`rank_gallery_chunks`: the float32 distance
#: buffer (4), its int64 keys, the int64 sign temporary of general keys (or, while the next chunk is
#: computed, the previous chunk's keys) and the int64 searchsorted result (3 x 8).
CHUNKED_RANK_BYTES_PER_ENTRY = 4 + 3 * 8
#: Bytes per true match of the widest query in :func:`rank_gallery_chunks`: its int64 key and its int64
#: histogram count, besides its identity pairs.
CHUNKED_RANK_BYTES_PER_MATCH = 2 * 8


def rank_gallery_chunks(distances: FeatureDistances, ids: Identities, acc: MetricAccumulator, available_bytes: int,
                        fixed_bytes: int, tracker: PeakMemory) -> None:
    """Rank every query into ``acc`` against the gallery one fixed gallery chunk at a time, for galleries
    so large that even 16 whole rows of distances do not fit in the budget.

    Per block of queries, a first pass over the chunks collects the ordered keys of the true matches
    (the same keys as :func:`true_match_ranks`); a second pass locates every gallery image among them
    with ``searchsorted`` and accumulates the per-query histogram that gives the matches' ranks. The
    distances are computed twice, in exactly the shapes of :meth:`FeatureDistances.block`, so the
    results are bit-identical to the whole-row path. Blocks use at most ``available_bytes``, besides
    the ``fixed_bytes`` alive for the whole call.
    """
    num_q, num_g = distances.shape
    device = distances.device
    chunk_width = min(distances.chunk_rows, num_g)
    widest = int(ids.span_count.max()) + 1  # bound on the true matches (+1 padding column) of a query
    row_bytes = (CHUNKED_RANK_BYTES_PER_ENTRY * chunk_width + distances.query_row_bytes
                 + (CHUNKED_RANK_BYTES_PER_MATCH + IDENTITY_PAIR_BYTES) * widest)
    rows_per_block = block_rows(available_bytes, row_bytes, num_q)
    tracker.account(fixed_bytes + rows_per_block * row_bytes)
    buffer = torch.empty((rows_per_block, chunk_width), device=device)
    for start in range(0, num_q, rows_per_block):
        end = min(start + rows_per_block, num_q)
        match_rows, match_cols, junk_rows, junk_cols, num_matches = identity_pairs(ids, start, end)
        match_slot = index_within_group(match_rows, num_matches)
        match_keys = torch.full((end - start, int(num_matches.max()) + 1), _KEY_SENTINEL, dtype=torch.int64,
                                device=device)
        nan_seen = torch.zeros((), dtype=torch.bool, device=device)  # checked once per block: no sync per chunk
        for first, dist in distances.column_chunks(slice(start, end), buffer):
            nan_seen |= torch.isnan(dist).any()
            here = (match_cols >= first) & (match_cols < first + dist.shape[1])
            r, c = match_rows[here], match_cols[here]
            match_keys[r, match_slot[here]] = ordered_keys(dist[r, c - first], c, num_g, nonnegative=False)
        if bool(nan_seen):
            raise ReIDError(_NAN_DISTANCES)
        match_keys = torch.sort(match_keys, dim=1).values
        histogram = torch.zeros_like(match_keys)
        for first, dist in distances.column_chunks(slice(start, end), buffer):
            keys = ordered_keys(dist, ids.gallery_index[first:first + dist.shape[1]], num_g, nonnegative=False)
            here = (junk_cols >= first) & (junk_cols < first + dist.shape[1])
            keys[junk_rows[here], junk_cols[here] - first] = _KEY_SENTINEL  # never counted
            _count_matches_before(histogram, match_keys, keys)
        acc.add(start, histogram.cumsum(1) - 1, num_matches)
