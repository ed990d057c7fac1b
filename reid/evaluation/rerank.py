"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in torch, with bounded memory.

Same algorithm and numbers as the usual numpy implementation shipped by BoT and torchreid (see
:func:`reid.evaluation.reference.re_ranking_reference`), which holds several dense (q+g)^2 matrices.
Here nothing of that size is kept:

1. One pass over square blocks of the squared euclidean distances of all q+g features finds each
   image's nearest neighbours (running ``topk``) and its normaliser. The matrix is symmetric, so only
   blocks on and above the diagonal are computed (half the multiply-adds). The usual implementation
   divides each column by its max and transposes; by symmetry that is each row divided by its own
   max. The q x g part of the output is written in the same pass.
2. k-reciprocal sets, their expansion with half-size sets and the local query expansion (k2) work
   on the neighbour lists and on a sparse ``V`` (row, column, weight), not a dense matrix. Weights
   need the distance of an image to its expanded set members, recomputed as dot products.
3. The Jaccard distance is accumulated over the shared non-zeros of ``V`` for a block of queries at a
   time.

Memory: the q x g result, O((q+g) * k1 * k2) for the sparse structures, plus block buffers bounded
by ``memory_budget_bytes`` (default 256 MiB on CPU, half the free memory on CUDA). ``V`` is float32
as in torchreid (BoT stores it as float16, which moves results by about 1e-3).
"""

from __future__ import annotations

import math

import torch

from reid.evaluation.rank import (
    ArrayLike,
    _as_tensor,
    _check_features,
    _chunk_budget,
    _expand_ranges,
    _memory_budget,
    _row_blocks,
)
from reid.utils.errors import ReIDError

# Bytes per entry of a square block of the (q+g)^2 distance matrix: the float32 distance, the float32
# norm sums it is built from, and topk's temporaries (about 4 more); feature blocks are extra.
_BYTES_PER_DISTANCE = 16
# Larger square blocks gain nothing (measured) and waste more work on the diagonal blocks.
_MAX_BLOCK_SIDE = 2048
# Bytes per (query entry of V, gallery entry of V) pair joined for the Jaccard overlap: partner and
# flat int64 indices, the float32 minimum and a gathered float32 weight.
_BYTES_PER_JACCARD_PAIR = 24
# On CPU, gathers and joins run on chunks of about this many bytes whatever the budget: cache-sized
# chunks measured several times faster than large ones.
_CPU_CHUNK_BYTES = 8 * 2**20
# Bytes per V entry gathered for the query expansion (indices, key, slot, weight).
_BYTES_PER_EXPANDED_ENTRY = 48


def re_ranking(
    qf: ArrayLike,
    gf: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    memory_budget_bytes: int | None = None,
) -> torch.Tensor:
    """Re-ranked query x gallery distances (float32, on ``qf``'s device).

    Args:
        qf, gf: query and gallery features (numpy or torch, any float dtype); the distance is the
            squared euclidean one of the features as given (L2-normalise them first if wanted).
        k1: size of the k-reciprocal neighbourhoods.
        k2: size of the local query expansion (1 disables it).
        lambda_value: weight of the original distance in the result.
        memory_budget_bytes: bound for the block buffers (see the module docstring).
    """
    if k1 < 1 or k2 < 1:
        raise ReIDError(f"re_ranking needs k1 >= 1 and k2 >= 1, got k1={k1}, k2={k2}.")
    query, gallery = _as_tensor(qf, "qf"), _as_tensor(gf, "gf")
    _check_features(query, gallery)
    device = query.device if isinstance(qf, torch.Tensor) else gallery.device
    budget = _memory_budget(device, memory_budget_bytes)
    feats = _AllFeatures(query, gallery, device, budget)

    neighbours, result = _nearest_neighbours(feats, max(k1 + 1, k2), lambda_value, budget)
    half_k1 = round(k1 / 2)  # Python and numpy both round half to even, as the reference does
    reciprocal = _reciprocal_mask(neighbours, k1, budget)
    half_reciprocal = _reciprocal_mask(neighbours, half_k1, budget)
    rows, cols = _expanded_sets(neighbours, reciprocal, half_reciprocal, k1, half_k1, budget)
    weights = torch.exp(-feats.normalised_distance(rows, cols))
    weights /= torch.zeros(feats.num_all, device=device).index_add_(0, rows, weights)[rows]
    if k2 != 1:
        rows, cols, weights = _query_expansion(rows, cols, weights, neighbours[:, :k2], feats.num_all, budget)
    _add_jaccard(result, rows, cols, weights, feats.num_query, 1.0 - lambda_value, budget)
    return result


class _AllFeatures:
    """Query and gallery features seen as one (q+g) x D float32 set, without concatenating them."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, device: torch.device, budget: int):
        self.parts = (query, gallery)
        self.device = device
        self.num_query = query.shape[0]
        self.num_all = query.shape[0] + gallery.shape[0]
        # Rows per gathered chunk: two float32 feature rows and their product per pair.
        chunk_bytes = _chunk_budget(device, budget, _CPU_CHUNK_BYTES)
        self.chunk_rows = max(1, chunk_bytes // (12 * max(query.shape[1], 1)))
        self.sq_norm = torch.cat([(block * block).sum(1) for block in self._chunks()])
        self.row_max = torch.empty(self.num_all, device=device)  # filled by _nearest_neighbours

    def _chunks(self):
        for start in range(0, self.num_all, self.chunk_rows):
            yield self.block(start, min(start + self.chunk_rows, self.num_all))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 features of the given global indices (query first, then gallery)."""
        query, gallery = self.parts
        out = torch.empty((index.numel(), query.shape[1]), device=self.device)
        in_query = index < self.num_query
        out[in_query] = query[index[in_query].to(query.device)].to(self.device, torch.float32)
        out[~in_query] = gallery[(index[~in_query] - self.num_query).to(gallery.device)].to(
            self.device, torch.float32)
        return out

    def block(self, start: int, end: int) -> torch.Tensor:
        """float32 features of rows ``start:end``."""
        return self.rows(torch.arange(start, end, device=self.device))

    def normalised_distance(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised squared distances of (row, col) pairs, from dot products in bounded chunks."""
        out = torch.empty(rows.numel(), device=self.device)
        for start in range(0, rows.numel(), self.chunk_rows):
            r, c = rows[start:start + self.chunk_rows], cols[start:start + self.chunk_rows]
            dot = (self.rows(r) * self.rows(c)).sum(1)
            squared = self.sq_norm[r] + self.sq_norm[c] - 2 * dot
            out[start:start + self.chunk_rows] = squared / self.row_max[r]
        return out


def _nearest_neighbours(
    feats: _AllFeatures, num_neighbours: int, lambda_value: float, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour lists of all q+g images and ``lambda * original`` for the q x g output.

    The distance matrix is symmetric, so only blocks on and above the diagonal are computed; each
    serves its rows and, transposed, its columns. Running top-k lists and row maxima are merged block
    by block; also fills ``feats.row_max``.
    """
    num_all, num_query = feats.num_all, feats.num_query
    num_neighbours = min(num_neighbours, num_all)
    best = torch.full((num_all, num_neighbours), float("inf"), device=feats.device)
    best_index = torch.zeros((num_all, num_neighbours), dtype=torch.int64, device=feats.device)
    feats.row_max.fill_(float("-inf"))
    result = torch.empty((num_query, num_all - num_query), device=feats.device)

    def merge(rows_start: int, dist: torch.Tensor, cols_start: int) -> None:
        rows = slice(rows_start, rows_start + dist.shape[0])
        torch.maximum(feats.row_max[rows], dist.max(dim=1).values, out=feats.row_max[rows])
        top = torch.topk(dist, min(num_neighbours, dist.shape[1]), dim=1, largest=False, sorted=False)
        values = torch.cat([best[rows], top.values], dim=1)
        index = torch.cat([best_index[rows], top.indices + cols_start], dim=1)
        keep = torch.topk(values, num_neighbours, dim=1, largest=False, sorted=False).indices
        best[rows] = values.gather(1, keep)
        best_index[rows] = index.gather(1, keep)

    # Block side: a distance block, the addmm input it is built from and two feature blocks.
    side = max(1, min(_MAX_BLOCK_SIDE, math.isqrt(budget // _BYTES_PER_DISTANCE)))
    blocks = [(start, min(start + side, num_all)) for start in range(0, num_all, side)]
    for position, (row_start, row_end) in enumerate(blocks):
        row_feats = feats.block(row_start, row_end)
        for col_start, col_end in blocks[position:]:
            col_feats = row_feats if col_start == row_start else feats.block(col_start, col_end)
            # (|x|^2 + |y|^2) - 2 x.y, the order of operations of the usual implementation
            norms = feats.sq_norm[row_start:row_end, None] + feats.sq_norm[None, col_start:col_end]
            dist = torch.addmm(norms, row_feats, col_feats.T, alpha=-2)
            del norms
            merge(row_start, dist, col_start)
            if col_start != row_start:
                merge(col_start, dist.T, row_start)
            query_rows = slice(row_start, min(row_end, num_query))
            gallery_cols = slice(max(col_start, num_query), col_end)
            if query_rows.stop > query_rows.start and gallery_cols.stop > gallery_cols.start:
                result[query_rows, gallery_cols.start - num_query:gallery_cols.stop - num_query] = dist[
                    query_rows.start - row_start:query_rows.stop - row_start,
                    gallery_cols.start - col_start:gallery_cols.stop - col_start]
            del dist

    # The usual implementation divides each column by its max; symmetric, so each row by its max.
    result.div_(feats.row_max[:num_query, None]).mul_(lambda_value)
    order = torch.sort(best, dim=1).indices
    return best_index.gather(1, order), result


def _reciprocal_mask(neighbours: torch.Tensor, k: int, budget: int) -> torch.Tensor:
    """``mask[i, a]``: ``neighbours[i, a]`` (a <= k) has ``i`` among its own k+1 nearest neighbours."""
    forward = neighbours[:, :k + 1]
    width = forward.shape[1]
    mask = torch.empty(forward.shape, dtype=torch.bool, device=neighbours.device)
    block_rows = max(1, budget // (9 * width * width))
    for start in range(0, forward.shape[0], block_rows):
        rows = torch.arange(start, min(start + block_rows, forward.shape[0]), device=neighbours.device)
        backward = forward[forward[rows]]  # rows x width x width
        mask[rows] = (backward == rows[:, None, None]).any(dim=2)
    return mask


def _expanded_sets(
    neighbours: torch.Tensor,
    reciprocal: torch.Tensor,
    half_reciprocal: torch.Tensor,
    k1: int,
    half_k1: int,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(row, col) of every image's expanded k-reciprocal set, sorted by row then col.

    The set of ``i`` is its k1-reciprocal set R(i) plus, for each candidate c in R(i), the
    half-size reciprocal set R'(c) when ``|R'(c) & R(i)| > 2/3 |R'(c)|``.
    """
    num_all = neighbours.shape[0]
    members_of = neighbours[:, :k1 + 1]
    half_of = neighbours[:, :half_k1 + 1]
    width, half_width = members_of.shape[1], half_of.shape[1]
    all_rows, all_cols = [], []
    # Per row: two bool (width x half_width x width) membership tests, and int64 candidate lists
    # (width x (half_width + 1)) with their sorted/deduplicated copies.
    bytes_per_row = 2 * width * half_width * width + 32 * width * (half_width + 1)
    block_rows = max(1, _chunk_budget(neighbours.device, budget, _CPU_CHUNK_BYTES) // bytes_per_row)
    for start in range(0, num_all, block_rows):
        end = min(start + block_rows, num_all)
        members, is_member = members_of[start:end], reciprocal[start:end]
        candidate_sets = half_of[members]  # B x width x half_width
        in_candidate_set = half_reciprocal[members]
        in_own_set = ((candidate_sets[..., None] == members[:, None, None, :])
                      & is_member[:, None, None, :]).any(dim=3)
        overlap = (in_own_set & in_candidate_set).sum(dim=2)
        accepted = is_member & (3 * overlap > 2 * in_candidate_set.sum(dim=2))
        taken = in_candidate_set & accepted[..., None]
        sentinel = num_all
        expanded = torch.cat([torch.where(is_member, members, sentinel),
                              torch.where(taken, candidate_sets, sentinel).flatten(1)], dim=1)
        expanded = torch.sort(expanded, dim=1).values
        repeated = torch.zeros_like(expanded, dtype=torch.bool)
        repeated[:, 1:] = expanded[:, 1:] == expanded[:, :-1]
        keep = (expanded != sentinel) & ~repeated
        block_row, position = keep.nonzero(as_tuple=True)
        all_rows.append(block_row + start)
        all_cols.append(expanded[block_row, position])
    return torch.cat(all_rows), torch.cat(all_cols)


def _query_expansion(
    rows: torch.Tensor,
    cols: torch.Tensor,
    weights: torch.Tensor,
    expansion_neighbours: torch.Tensor,
    num_all: int,
    budget: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sparse ``V_qe[i] = mean(V[j] for j in the k2 nearest neighbours of i)``, rows sorted."""
    device = rows.device
    row_length = torch.bincount(rows, minlength=num_all)
    row_start = torch.cumsum(row_length, 0) - row_length
    num_sources = expansion_neighbours.shape[1]
    new_rows, new_cols, new_weights = [], [], []
    gathered_per_row = row_length[expansion_neighbours].sum(1)
    chunk_budget = _chunk_budget(device, budget, _CPU_CHUNK_BYTES)
    for start, end in _row_blocks(gathered_per_row * _BYTES_PER_EXPANDED_ENTRY, chunk_budget):
        sources = expansion_neighbours[start:end].reshape(-1)
        source, entry = _expand_ranges(row_start[sources], row_length[sources])
        owner = start + source // num_sources
        keys, slot = torch.unique(owner * num_all + cols[entry], sorted=True, return_inverse=True)
        summed = torch.zeros(keys.numel(), device=device).index_add_(0, slot, weights[entry])
        new_rows.append(keys // num_all)
        new_cols.append(keys % num_all)
        new_weights.append(summed / num_sources)
    return torch.cat(new_rows), torch.cat(new_cols), torch.cat(new_weights)


def _add_jaccard(
    result: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    weights: torch.Tensor,
    num_query: int,
    jaccard_weight: float,
    budget: int,
) -> None:
    """``result += jaccard_weight * jaccard`` where ``jaccard = 1 - s / (2 - s)`` and
    ``s[q, g] = sum_j min(V[q, j], V[g, j])``, joined on the shared columns ``j`` of ``V``."""
    device = result.device
    num_gallery = result.shape[1]
    num_all = num_query + num_gallery
    in_gallery = rows >= num_query
    by_column = torch.argsort(cols[in_gallery], stable=True)
    gallery_rows = (rows[in_gallery] - num_query)[by_column]
    gallery_weights = weights[in_gallery][by_column]
    column_length = torch.bincount(cols[in_gallery], minlength=num_all)
    column_start = torch.cumsum(column_length, 0) - column_length

    query_rows, query_cols, query_weights = rows[~in_gallery], cols[~in_gallery], weights[~in_gallery]
    partners = column_length[query_cols]  # gallery entries sharing each query entry's column
    query_start = torch.searchsorted(query_rows, torch.arange(num_query + 1, device=device))
    pairs_per_query = torch.zeros(num_query, dtype=torch.int64, device=device).index_add_(
        0, query_rows, partners)
    cost = pairs_per_query * _BYTES_PER_JACCARD_PAIR + 4 * num_gallery
    for start, end in _row_blocks(cost, _chunk_budget(device, budget, _CPU_CHUNK_BYTES)):
        first, last = int(query_start[start]), int(query_start[end])
        count = partners[first:last]
        num_pairs = int(count.sum())
        # For each (query entry, gallery entry) pair of a shared column: position of the gallery
        # entry, flat (query row, gallery row) index, and min of the two weights.
        run_start = torch.cumsum(count, 0) - count
        partner = torch.repeat_interleave(column_start[query_cols[first:last]] - run_start, count,
                                          output_size=num_pairs)
        partner += torch.arange(num_pairs, device=device)
        flat = torch.repeat_interleave((query_rows[first:last] - start) * num_gallery, count,
                                       output_size=num_pairs)
        flat += gallery_rows[partner]
        shared = torch.repeat_interleave(query_weights[first:last], count, output_size=num_pairs)
        torch.minimum(shared, gallery_weights[partner], out=shared)
        overlap = torch.zeros((end - start) * num_gallery, device=device).index_add_(0, flat, shared)
        overlap = overlap.view(end - start, num_gallery)
        result[start:end].add_(1 - overlap / (2 - overlap), alpha=jaccard_weight)
