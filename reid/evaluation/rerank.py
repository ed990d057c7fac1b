"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in torch, with bounded memory.

Same algorithm and numbers as the usual numpy implementation shipped by BoT and torchreid (see
:func:`reid.evaluation.reference.re_ranking_reference`), which holds several dense (q+g)^2 matrices.
Here nothing of that size is kept:

1. One streaming pass over row blocks of the squared euclidean distances of all q+g features finds
   each image's nearest neighbours (``topk``) and its normaliser. The usual implementation divides
   each column by its max and transposes; the distance is symmetric, so that is each row divided by
   its own max, which the same pass computes. The q x g part of the output is written in that pass.
2. k-reciprocal sets, their expansion with half-size sets and the local query expansion (k2) work
   on the neighbour lists and on a sparse ``V`` (row, column, weight), not a dense matrix. Weights
   need the distance of an image to its expanded set members, recomputed as dot products.
3. The Jaccard distance is accumulated over the shared non-zeros of ``V`` for a block of queries at a
   time.

Memory: the q x g result, O((q+g) * k1 * k2) for the sparse structures, plus block buffers bounded
by ``memory_budget_bytes`` (default 256 MiB on CPU, half the free memory on CUDA; a distance block
holds at least one row, 4 * (q+g) bytes). ``V`` is float32 as in torchreid (BoT stores it as
float16, which moves results by about 1e-3).
"""

from __future__ import annotations

import torch

from reid.evaluation.rank import (
    ArrayLike,
    _as_tensor,
    _BlockDistance,
    _check_features,
    _expand_ranges,
    _memory_budget,
    _row_blocks,
)
from reid.utils.errors import ReIDError

# Bytes per entry of a row block of the (q+g)-wide distance matrix: the float32 distance plus topk's
# and the normalisation's temporaries.
_BYTES_PER_DISTANCE = 12
# Bytes per (query entry of V, gallery entry of V) pair joined for the Jaccard overlap.
_BYTES_PER_JACCARD_PAIR = 40
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
    """Query and gallery features seen as one (q+g) x D set, without concatenating them."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, device: torch.device, budget: int):
        self.parts = (query, gallery)
        self.device = device
        self.budget = budget
        self.num_query = query.shape[0]
        self.num_all = query.shape[0] + gallery.shape[0]
        self.distances = [_BlockDistance(part, "sqeuclidean", False, device, budget // 8)
                          for part in self.parts]
        self.sq_norm = torch.cat([distance.offset for distance in self.distances])
        self.row_max = torch.empty(self.num_all, device=device)

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 features of the given global indices (query first, then gallery)."""
        query, gallery = self.parts
        out = torch.empty((index.numel(), query.shape[1]), device=self.device)
        in_query = index < self.num_query
        out[in_query] = query[index[in_query].to(query.device)].to(self.device, torch.float32)
        out[~in_query] = gallery[(index[~in_query] - self.num_query).to(gallery.device)].to(
            self.device, torch.float32)
        return out

    def distance_rows(self, start: int, end: int) -> torch.Tensor:
        """Squared euclidean distances of rows ``start:end`` to all q+g rows."""
        block = self.rows(torch.arange(start, end, device=self.device))
        out = torch.empty((end - start, self.num_all), device=self.device)
        self.distances[0](block, out=out[:, :self.num_query])
        self.distances[1](block, out=out[:, self.num_query:])
        return out

    def normalised_distance(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised squared distances of (row, col) pairs, from dot products in bounded chunks."""
        out = torch.empty(rows.numel(), device=self.device)
        # Two gathered float32 feature rows and their product per pair.
        chunk = max(1, self.budget // (12 * max(self.parts[0].shape[1], 1)))
        for start in range(0, rows.numel(), chunk):
            r, c = rows[start:start + chunk], cols[start:start + chunk]
            dot = (self.rows(r) * self.rows(c)).sum(1)
            out[start:start + chunk] = (self.sq_norm[r] + self.sq_norm[c] - 2 * dot) / self.row_max[r]
        return out


def _nearest_neighbours(
    feats: _AllFeatures, num_neighbours: int, lambda_value: float, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-neighbour lists of all q+g images (by normalised distance) and ``lambda * original``
    for the q x g output, in one pass over row blocks; also fills ``feats.row_max``."""
    num_all, num_query = feats.num_all, feats.num_query
    num_neighbours = min(num_neighbours, num_all)
    neighbours = torch.empty((num_all, num_neighbours), dtype=torch.int64, device=feats.device)
    result = torch.empty((num_query, num_all - num_query), device=feats.device)
    block_rows = max(1, budget // (2 * num_all * _BYTES_PER_DISTANCE))
    for start in range(0, num_all, block_rows):
        end = min(start + block_rows, num_all)
        dist = feats.distance_rows(start, end)
        row_max = dist.max(dim=1).values
        feats.row_max[start:end] = row_max
        dist /= row_max[:, None]
        neighbours[start:end] = torch.topk(dist, num_neighbours, dim=1, largest=False, sorted=True).indices
        if start < num_query:
            query_end = min(end, num_query)
            torch.mul(dist[:query_end - start, num_query:], lambda_value, out=result[start:query_end])
        del dist
    return neighbours, result


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
    block_rows = max(1, budget // (2 * width * half_width * width + 16 * width * (half_width + 1)))
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
    for start, end in _row_blocks(gathered_per_row * _BYTES_PER_EXPANDED_ENTRY, budget):
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
    pairs_per_query = torch.zeros(num_query, dtype=torch.int64, device=device).index_add_(
        0, query_rows, column_length[query_cols])
    query_start = torch.searchsorted(query_rows, torch.arange(num_query + 1, device=device))
    cost = pairs_per_query * _BYTES_PER_JACCARD_PAIR + 8 * num_gallery
    for start, end in _row_blocks(cost, budget):
        first, last = int(query_start[start]), int(query_start[end])
        q_rows, q_cols, q_weights = query_rows[first:last], query_cols[first:last], query_weights[first:last]
        source, partner = _expand_ranges(column_start[q_cols], column_length[q_cols])
        overlap = torch.zeros((end - start) * num_gallery, device=device)
        overlap.index_add_(0, (q_rows[source] - start) * num_gallery + gallery_rows[partner],
                           torch.minimum(q_weights[source], gallery_weights[partner]))
        overlap = overlap.view(end - start, num_gallery)
        result[start:end].add_(1 - overlap / (2 - overlap), alpha=jaccard_weight)
