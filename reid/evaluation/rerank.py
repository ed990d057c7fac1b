"""k-reciprocal re-ranking (Zhong et al., CVPR 2017) in torch, with bounded memory.

Same algorithm and numbers as the usual numpy implementation shipped by BoT and torchreid (see
:func:`reid.evaluation.reference.re_ranking_reference`), which holds several dense (q+g)^2 matrices.
Here nothing of that size is kept, nor the q x g result unless :func:`re_ranking` is asked for it:

1. One pass over square blocks of the squared euclidean distances of all q+g features finds each
   image's nearest neighbours and its normaliser. The matrix is symmetric, so only blocks on and
   above the diagonal are computed (half the multiply-adds). The usual implementation divides each
   column by its max and transposes; by symmetry that is each row divided by its own max. Neighbours
   are ordered by (distance, index), i.e. like a stable argsort, so equal distances never make the
   result depend on the block size.
2. k-reciprocal sets, their expansion with half-size sets and the local query expansion (k2) work
   on the neighbour lists and on a sparse ``V`` (row, column, weight), not a dense matrix. Weights
   need the distance of an image to its expanded set members, recomputed as dot products.
3. Then, block of queries by block of queries: the block's original distances are recomputed with the
   very float32 operations of step 1 (products padded to multiples of 16 rows, as in
   :class:`reid.evaluation.distances.FeatureDistances`, so they are bit-identical), normalised and weighted,
   and the Jaccard distance is added from the shared non-zeros of ``V``. :func:`re_ranking` writes
   the block into its dense result; :func:`evaluate_reranked` ranks it at once with the evaluator's
   kernel and drops it.

Memory: O((q+g) * k1 * k2) for the neighbour lists and the sparse structures, plus block buffers
bounded by ``memory_budget_bytes`` (default 256 MiB on CPU, half the free memory on CUDA; a query
block holds 16 to 1,024 rows), plus the q x g result for :func:`re_ranking` only. ``V`` is float32 as
in torchreid (BoT stores it as float16, which moves results by about 1e-3).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import torch

from reid.evaluation.distances import GEMM_ROWS, fill_rows, gallery_chunk_rows, padded
from reid.evaluation.memory import PeakMemory, chunk_budget, memory_budget, nbytes, row_blocks, split_budget
from reid.evaluation.protocol import (
    ArrayLike,
    Identities,
    MetricAccumulator,
    RankResult,
    check_max_rank,
    expand_ranges,
    feature_tensors,
)
from reid.evaluation.ranking import ordered_keys, rank_blocks
from reid.utils.errors import ReIDError
from reid.utils.progress import Progress

#: ``progress(stage, total, unit)`` gives the :class:`Progress` of one stage of re-ranking: ``"neighbours"``
#: (distance blocks of the nearest-neighbour pass) and ``"queries"`` (queries re-ranked and ranked).
ProgressFactory = Callable[[str, int, str], Progress]

# On CPU, gathers and joins run on chunks of about this many bytes whatever the budget: cache-sized
# chunks measured several times faster than large ones. (What each buffer costs is stated next to the
# code that allocates it.)
_CPU_CHUNK_BYTES = 8 * 2**20


def re_ranking(
    qf: ArrayLike,
    gf: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    memory_budget_bytes: int | None = None,
) -> torch.Tensor:
    """Re-ranked query x gallery distances (float32, on ``qf``'s device), for small problems.

    It returns the dense q x g matrix; to evaluate large problems in bounded memory use
    :func:`evaluate_reranked`, which ranks block by block and gives the same metrics as
    ``evaluate_rank(re_ranking(...))``.

    Args:
        qf, gf: query and gallery features (numpy or torch, any float dtype); the distance is the
            squared euclidean one of the features as given (L2-normalise them first if wanted).
        k1: size of the k-reciprocal neighbourhoods (positive integer).
        k2: size of the local query expansion (positive integer; 1 disables it).
        lambda_value: weight of the original distance in the result, in [0, 1].
        memory_budget_bytes: bound for the block buffers (see the module docstring); the result does
            not depend on it.
    """
    query, gallery, device = feature_tensors(qf, gf)
    budget = memory_budget(device, memory_budget_bytes)
    # Nothing is reported here: a CPU tracker only adds numbers (a CUDA one would reset the device's
    # peak-memory statistics).
    reranker = _KReciprocal(query, gallery, device, k1, k2, lambda_value, budget, PeakMemory(torch.device("cpu")))
    num_q, num_g = reranker.shape
    rows, post_budget = split_budget(budget, reranker.fixed_bytes, reranker.block_row_bytes, num_q, device)
    join_budget = chunk_budget(device, post_budget, _CPU_CHUNK_BYTES)
    out = torch.empty((num_q, num_g), device=device)
    return fill_rows(out, lambda start, end, block: reranker.block(start, end, block, join_budget), rows)


def evaluate_reranked(
    qf: ArrayLike,
    gf: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    max_rank: int = 50,
    memory_budget_bytes: int | None = None,
    progress: ProgressFactory | None = None,
) -> RankResult:
    """CMC, mAP and mINP of the k-reciprocal re-ranked distances, without the q x g matrix.

    Equals ``evaluate_rank(re_ranking(qf, gf, k1, k2, lambda_value), ...)`` exactly, whatever
    ``memory_budget_bytes``: each block of at most 1,024 query rows is re-ranked and ranked with the
    evaluator's kernel at once. Memory: the neighbour lists and sparse structures (O((q+g) k1 k2))
    plus buffers within max(budget, a 16-row block and one query's ranking buffers).
    ``peak_memory_bytes`` reports it (measured on CUDA, accounted from shapes on CPU).
    ``progress`` (see :data:`ProgressFactory`) reports both long stages with a rate and an ETA.
    Arguments as in :func:`re_ranking` and :func:`reid.evaluation.rank.evaluate_rank`.
    """
    query, gallery, device = feature_tensors(qf, gf)
    num_q, num_g = query.shape[0], gallery.shape[0]
    # Labels and max_rank are checked before the expensive part.
    ids = Identities(q_pids, g_pids, q_camids, g_camids, num_q, num_g, device)
    max_rank = check_max_rank(max_rank)
    budget = memory_budget(device, memory_budget_bytes)
    tracker = PeakMemory(device)
    reranker = _KReciprocal(query, gallery, device, k1, k2, lambda_value, budget, tracker, progress)

    rows, ranking_budget = split_budget(budget, reranker.fixed_bytes, reranker.block_row_bytes, num_q, device)
    join_budget = chunk_budget(device, ranking_budget, _CPU_CHUNK_BYTES)  # the Jaccard joins like cache-sized chunks
    block_bytes = reranker.fixed_bytes + rows * reranker.block_row_bytes
    acc = MetricAccumulator(num_q, device)
    queries = progress("queries", num_q, "queries") if progress is not None else None
    rank_blocks(lambda start, end, out: reranker.block(start, end, out, join_budget), ids, acc,
                reranker.feats.block_buffer(rows), ranking_budget, block_bytes, tracker,
                on_ranked=queries.set if queries is not None else None)
    if queries is not None:
        queries.close()
    return acc.result(max_rank, peak_memory_bytes=tracker.peak())


def _check_parameters(k1: int, k2: int, lambda_value: float) -> tuple[int, int, float]:
    for name, value in (("k1", k1), ("k2", k2)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
            raise ReIDError(f"Re-ranking needs {name} to be a positive integer, got {name}={value!r}.")
    if (isinstance(lambda_value, bool) or not isinstance(lambda_value, numbers.Real)
            or not 0.0 <= lambda_value <= 1.0):
        raise ReIDError(f"Re-ranking needs lambda_value (the weight of the original distance) in [0, 1], got "
                        f"{lambda_value!r}.")
    return int(k1), int(k2), float(lambda_value)


class _KReciprocal:
    """Steps 1 and 2 of the module docstring at construction; :meth:`block` does step 3."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, device: torch.device, k1: int, k2: int,
                 lambda_value: float, budget: int, tracker: PeakMemory, progress: ProgressFactory | None = None):
        k1, k2, self.lambda_value = _check_parameters(k1, k2, lambda_value)
        feats = self.feats = _AllFeatures(query, gallery, device)
        num_all, num_query = feats.num_all, feats.num_query
        neighbours = _nearest_neighbours(feats, max(k1 + 1, k2), budget, tracker, progress)
        live = feats.fixed_bytes + nbytes(neighbours)
        half_k1 = round(k1 / 2)  # Python and numpy both round half to even, as the reference does
        reciprocal = _reciprocal_mask(neighbours, k1, budget)
        half_reciprocal = _reciprocal_mask(neighbours, half_k1, budget)
        live += nbytes(reciprocal, half_reciprocal)
        tracker.account(live + chunk_budget(device, budget, _CPU_CHUNK_BYTES))
        rows, cols = _expanded_sets(neighbours, reciprocal, half_reciprocal, k1, half_k1, budget)
        del reciprocal, half_reciprocal
        weights = torch.exp(-feats.normalised_distance(rows, cols))
        weights /= _scatter_sum(torch.zeros(num_all, device=device), rows, weights)[rows]
        # The sparse V: (row, column, weight) per entry.
        v_bytes = nbytes(rows, cols, weights)
        tracker.account(feats.fixed_bytes + nbytes(neighbours) + v_bytes + feats.chunk_bytes)
        if k2 != 1:
            expansion = neighbours[:, :k2]
            rows, cols, weights = _query_expansion(rows, cols, weights, expansion, num_all, budget)
            v_bytes += nbytes(rows, cols, weights)  # the expanded V is built while V is alive
            tracker.account(feats.fixed_bytes + nbytes(neighbours) + v_bytes
                            + chunk_budget(device, budget, _CPU_CHUNK_BYTES))
        del neighbours
        self.jaccard = _Jaccard(rows, cols, weights, num_query, num_all)
        tracker.account(feats.fixed_bytes + self.jaccard.nbytes + nbytes(rows, cols, weights))
        #: Bytes held while blocks are computed: norms, the Jaccard join structures, a gallery chunk.
        self.fixed_bytes = feats.fixed_bytes + self.jaccard.nbytes + feats.gallery_chunk_bytes
        self.block_row_bytes = feats.block_row_bytes

    @property
    def shape(self) -> tuple[int, int]:
        return self.feats.num_query, self.feats.num_all - self.feats.num_query

    def block(self, start: int, end: int, out: torch.Tensor, join_budget: int) -> torch.Tensor:
        """Re-ranked distances of queries ``start:end`` to the gallery, in ``out``'s first rows.

        ``out`` needs at least ``end - start`` rounded up to a multiple of 16 rows (scratch beyond).
        The operations per entry are those of the dense implementation: ``original / row max *
        lambda + (1 - lambda) * jaccard``.
        """
        dist = self.feats.query_gallery_distances(start, end, out)
        dist.div_(self.feats.row_max[start:end, None]).mul_(self.lambda_value)
        self.jaccard.add_to(dist, start, 1.0 - self.lambda_value, join_budget)
        return dist


# Feature rows gathered per chunk for norms and pair distances (:meth:`_AllFeatures.rows`): a fixed size
# (per device type), never derived from the budget, so that these reductions, hence the weights, do not
# depend on it.
_FEATURE_CHUNK_BYTES = {"cpu": 8 * 2**20}
_DEFAULT_FEATURE_CHUNK_BYTES = 256 * 2**20


class _AllFeatures:
    """Query and gallery features seen as one (q+g) x D float32 set, without concatenating them."""

    def __init__(self, query: torch.Tensor, gallery: torch.Tensor, device: torch.device):
        self.parts = (query, gallery)
        self.device = device
        self.num_query = query.shape[0]
        self.num_all = query.shape[0] + gallery.shape[0]
        dim = max(query.shape[1], 1)
        # Rows per gathered chunk (normalised_distance): two float32 feature rows and their float32
        # product per pair.
        self.chunk_bytes = _FEATURE_CHUNK_BYTES.get(device.type, _DEFAULT_FEATURE_CHUNK_BYTES)
        self.chunk_rows = max(1, self.chunk_bytes // (12 * dim))
        self.gallery_chunk_rows = gallery_chunk_rows(dim)
        num_g = gallery.shape[0]
        last_width = num_g - (max(num_g - 1, 0) // self.gallery_chunk_rows) * self.gallery_chunk_rows
        #: Bytes per query row of a block (query_gallery_distances): its float32 row of ``out``, its float32
        #: features (block) and, when the last gallery chunk is padded, its float32 product with that chunk.
        self.block_row_bytes = 4 * num_g + 4 * dim + (4 * padded(last_width) if last_width % GEMM_ROWS else 0)
        #: Bytes of one gallery chunk's float32 features and squared norms (block) while it is multiplied.
        self.gallery_chunk_bytes = 4 * (dim + 1) * padded(min(self.gallery_chunk_rows, num_g))
        self.sq_norm = torch.cat([torch.zeros(0, device=device)] + [
            (block * block).sum(1) for block in self._chunks()])
        if not bool(torch.isfinite(self.sq_norm).all()):
            raise ReIDError("The features hold NaN or infinite values (or values so large that their squares "
                            "overflow float32); check the model that produced them.")
        self.row_max = torch.empty(self.num_all, device=device)  # filled by _nearest_neighbours
        self.fixed_bytes = nbytes(self.sq_norm, self.row_max)

    def block_buffer(self, num_rows: int) -> torch.Tensor:
        """An uninitialised float32 ``out`` of ``num_rows`` query rows for :meth:`query_gallery_distances`
        (one row of :attr:`block_row_bytes` each)."""
        return torch.empty((num_rows, self.num_all - self.num_query), device=self.device)

    def _chunks(self):
        for start in range(0, self.num_all, self.chunk_rows):
            yield self.rows(torch.arange(start, min(start + self.chunk_rows, self.num_all), device=self.device))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """float32 features of the given global indices (query first, then gallery)."""
        query, gallery = self.parts
        out = torch.empty((index.numel(), query.shape[1]), device=self.device)
        in_query = index < self.num_query
        # Positions, gathers and index_copy_: about twice as fast as boolean-mask assignment on CPU.
        for part, positions, offset in ((query, in_query.nonzero().squeeze(1), 0),
                                        (gallery, (~in_query).nonzero().squeeze(1), self.num_query)):
            if positions.numel():
                picked = part.index_select(0, (index[positions] - offset).to(part.device))
                out.index_copy_(0, positions, picked.to(self.device, torch.float32))
        return out

    def block(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 features and squared norms of rows ``start:end``, zero rows appended up to a multiple
        of 16 (see :data:`reid.evaluation.distances.GEMM_ROWS`)."""
        count = end - start
        feats = torch.zeros((padded(count), self.parts[0].shape[1]), device=self.device)
        feats[:count] = self.rows(torch.arange(start, end, device=self.device))
        sq_norm = torch.zeros(feats.shape[0], device=self.device)
        sq_norm[:count] = self.sq_norm[start:end]
        return feats, sq_norm

    def normalised_distance(self, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """Normalised squared distances of (row, col) pairs, from dot products in fixed chunks."""
        out = torch.empty(rows.numel(), device=self.device)
        for start in range(0, rows.numel(), self.chunk_rows):
            r, c = rows[start:start + self.chunk_rows], cols[start:start + self.chunk_rows]
            dot = (self.rows(r) * self.rows(c)).sum(1)
            squared = self.sq_norm[r] + self.sq_norm[c] - 2 * dot
            out[start:start + self.chunk_rows] = squared / self.row_max[r]
        return out

    def query_gallery_distances(self, start: int, end: int, out: torch.Tensor) -> torch.Tensor:
        """Squared distances of queries ``start:end`` to every gallery image, bit-identical to those of
        the neighbour pass; written into ``out`` (padded rows are scratch), returns its first rows."""
        query, query_sq = self.block(start, end)
        num_gallery = self.num_all - self.num_query
        for first in range(0, num_gallery, self.gallery_chunk_rows):
            last = min(first + self.gallery_chunk_rows, num_gallery)
            gallery, gallery_sq = self.block(self.num_query + first, self.num_query + last)
            part = out[:query.shape[0], first:last]
            if gallery.shape[0] == last - first:
                _squared_distances(query, gallery, query_sq, gallery_sq, out=part)
            else:  # the zero-padded last chunk
                part.copy_(_squared_distances(query, gallery, query_sq, gallery_sq)[:, :last - first])
        return out[:end - start]


def _squared_distances(rows: torch.Tensor, cols: torch.Tensor, rows_sq: torch.Tensor, cols_sq: torch.Tensor,
                       out: torch.Tensor | None = None) -> torch.Tensor:
    """``(|x|^2 + |y|^2) - 2 x.y``, the order of operations of the usual implementation.

    Every squared distance of this module comes from here, with row counts that are multiples of 16,
    so that one pair gets the same float32 value in whichever block it is computed.
    """
    out = torch.add(rows_sq[:, None], cols_sq[None, :], out=out)
    return out.addmm_(rows, cols.T, alpha=-2)


# Bytes per entry of a square block of the (q+g)^2 distance matrix in _nearest_neighbours: the float32
# distance, topk's copy of a transposed block (4), the bool tie mask (1) and slack; the two float32
# feature blocks are counted apart.
_BYTES_PER_DISTANCE = 16
# Larger square blocks gain nothing (measured) and waste more work on the diagonal blocks.
_MAX_BLOCK_SIDE = 2048


def _nearest_neighbours(feats: _AllFeatures, num_neighbours: int, budget: int, tracker: PeakMemory,
                        progress: ProgressFactory | None = None) -> torch.Tensor:
    """Nearest-neighbour lists of all q+g images, ordered by (distance, index); fills ``feats.row_max``.

    The distance matrix is symmetric, so only blocks on and above the diagonal are computed; each
    serves its rows and, transposed, its columns. Running lists are kept as int64 keys ordered like
    (distance, index) (see :func:`reid.evaluation.ranking.ordered_keys`) and merged block by block, so
    equal distances are always resolved by index, whatever the block size.
    """
    num_all = feats.num_all
    num_neighbours = min(num_neighbours, num_all)
    best = torch.full((num_all, num_neighbours), torch.iinfo(torch.int64).max, dtype=torch.int64,
                      device=feats.device)
    feats.row_max.fill_(float("-inf"))
    # Block side: a multiple of 16 (see _squared_distances) holding a distance block and its temporaries.
    side = max(1, min(_MAX_BLOCK_SIDE, math.isqrt(budget // _BYTES_PER_DISTANCE)) // GEMM_ROWS) * GEMM_ROWS
    used = min(side, padded(num_all))
    tracker.account(feats.fixed_bytes + nbytes(best) + _BYTES_PER_DISTANCE * used * used
                    + 2 * 4 * used * feats.parts[0].shape[1])  # and the two float32 feature blocks
    blocks = [(start, min(start + side, num_all)) for start in range(0, num_all, side)]
    # Progress counts distance blocks: those on and above the diagonal.
    counter = progress("neighbours", len(blocks) * (len(blocks) + 1) // 2, "blocks") if progress is not None else None
    for position, (row_start, row_end) in enumerate(blocks):
        row_feats, row_sq = feats.block(row_start, row_end)
        for col_start, col_end in blocks[position:]:
            col_feats, col_sq = (row_feats, row_sq) if col_start == row_start else feats.block(col_start, col_end)
            dist = _squared_distances(row_feats, col_feats, row_sq, col_sq)[:row_end - row_start, :col_end - col_start]
            _merge_neighbours(best, feats.row_max, row_start, dist, col_start)
            if col_start != row_start:
                _merge_neighbours(best, feats.row_max, col_start, dist.T, row_start)
            del dist
            if counter is not None:
                counter.update()
    if counter is not None:
        counter.close()

    if bool(torch.isnan(feats.row_max).any()):
        raise ReIDError("Re-ranking distances are NaN: the features are too large for float32 squared "
                        "distances; check the model that produced them.")
    # The usual implementation sorts rows of the max-normalised matrix. Dividing a row by its max keeps
    # its order, except that rounding can merge two adjacent values into a tie, which the reference then
    # orders by index: only then can the lists differ. Keys are unique per row (one per index).
    return torch.sort(best, dim=1).values % num_all


def _merge_neighbours(best: torch.Tensor, row_max: torch.Tensor, rows_start: int, dist: torch.Tensor,
                      cols_start: int) -> None:
    """Merge a block of distances (rows from ``rows_start``, columns from ``cols_start``) into the running
    neighbour keys ``best`` (one row per image, ordered like (distance, index)) and row maxima."""
    num_all, num_neighbours = best.shape
    rows = slice(rows_start, rows_start + dist.shape[0])
    torch.maximum(row_max[rows], dist.max(dim=1).values, out=row_max[rows])
    values, index = _k_smallest(dist, min(num_neighbours, dist.shape[1]))
    keys = ordered_keys(values, index + cols_start, num_all, nonnegative=False)
    merged = torch.cat([best[rows], keys], dim=1)
    best[rows] = torch.topk(merged, num_neighbours, dim=1, largest=False, sorted=False).values


def _k_smallest(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Values and column indices of the ``k`` smallest entries of each row, equal values by index.

    ``torch.topk`` chooses arbitrarily among values equal to the k-th smallest; rows where that choice
    matters (more entries equal to the k-th value than were taken) are redone with exact
    (value, index) keys. Exact ties are rare with real features, so this costs one comparison pass.
    """
    values, index = torch.topk(dist, k, dim=1, largest=False, sorted=False)
    kth = values.max(dim=1, keepdim=True).values
    cut = (dist == kth).sum(dim=1) > (values == kth).sum(dim=1)
    if bool(cut.any()):
        rows = cut.nonzero().squeeze(1)
        columns = torch.arange(dist.shape[1], device=dist.device)
        keys = ordered_keys(dist[rows].contiguous(), columns, dist.shape[1], nonnegative=False)
        exact = torch.topk(keys, k, dim=1, largest=False, sorted=False).values % dist.shape[1]
        index[rows] = exact
        values[rows] = dist[rows].gather(1, exact)
    return values, index


def _reciprocal_mask(neighbours: torch.Tensor, k: int, budget: int) -> torch.Tensor:
    """``mask[i, a]``: ``neighbours[i, a]`` (a <= k) has ``i`` among its own k+1 nearest neighbours."""
    forward = neighbours[:, :k + 1]
    width = forward.shape[1]
    mask = torch.empty(forward.shape, dtype=torch.bool, device=neighbours.device)
    block_rows = max(1, budget // (9 * width * width))  # per row: the int64 backward lists and a bool mask
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
    # Per row of _expanded_block: two bool (width x half_width x width) membership tests, and int64
    # candidate lists (width x (half_width + 1)) with their sorted/deduplicated copies.
    bytes_per_row = 2 * width * half_width * width + 32 * width * (half_width + 1)
    block_rows = max(1, chunk_budget(neighbours.device, budget, _CPU_CHUNK_BYTES) // bytes_per_row)
    for start in range(0, num_all, block_rows):
        end = min(start + block_rows, num_all)
        block_row, cols = _expanded_block(members_of[start:end], reciprocal[start:end], half_of, half_reciprocal,
                                          sentinel=num_all)
        all_rows.append(block_row + start)
        all_cols.append(cols)
    return torch.cat(all_rows), torch.cat(all_cols)


def _expanded_block(members: torch.Tensor, is_member: torch.Tensor, half_of: torch.Tensor,
                    half_reciprocal: torch.Tensor, sentinel: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(row within the block, col) of the expanded sets of a block of images: ``members`` (B x width) are
    their k1+1 nearest neighbours, ``is_member`` which of those are reciprocal; ``half_of`` and
    ``half_reciprocal`` the same for every image at half size."""
    candidate_sets = half_of[members]  # B x width x half_width
    in_candidate_set = half_reciprocal[members]
    in_own_set = ((candidate_sets[..., None] == members[:, None, None, :])
                  & is_member[:, None, None, :]).any(dim=3)
    overlap = (in_own_set & in_candidate_set).sum(dim=2)
    accepted = is_member & (3 * overlap > 2 * in_candidate_set.sum(dim=2))
    taken = in_candidate_set & accepted[..., None]
    expanded = torch.cat([torch.where(is_member, members, sentinel),
                          torch.where(taken, candidate_sets, sentinel).flatten(1)], dim=1)
    expanded = torch.sort(expanded, dim=1).values
    repeated = torch.zeros_like(expanded, dtype=torch.bool)
    repeated[:, 1:] = expanded[:, 1:] == expanded[:, :-1]
    keep = (expanded != sentinel) & ~repeated
    block_row, position = keep.nonzero(as_tuple=True)
    return block_row, expanded[block_row, position]


# Bytes per V entry gathered by _query_expansion: its int64 source position and owner, the int64 key,
# its int64 slot among the unique keys and the gathered float32 weight, with the unique keys and sums.
_BYTES_PER_EXPANDED_ENTRY = 48


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
    gather_budget = chunk_budget(device, budget, _CPU_CHUNK_BYTES)
    # A row is never split across chunks, so its sums are accumulated in the same order whatever the budget.
    for start, end in row_blocks(gathered_per_row * _BYTES_PER_EXPANDED_ENTRY, gather_budget):
        sources = expansion_neighbours[start:end].reshape(-1)
        source, entry = expand_ranges(row_start[sources], row_length[sources])
        owner = start + source // num_sources
        keys, slot = torch.unique(owner * num_all + cols[entry], sorted=True, return_inverse=True)
        summed = _scatter_sum(torch.zeros(keys.numel(), device=device), slot, weights[entry])
        new_rows.append(keys // num_all)
        new_cols.append(keys % num_all)
        new_weights.append(summed / num_sources)
    return torch.cat(new_rows), torch.cat(new_cols), torch.cat(new_weights)


# Bytes per (query entry of V, gallery entry of V) pair joined by _Jaccard.add_to for the overlap: at the
# peak the int64 partner position and flat index plus an int64 gathered temporary; later the float32
# minimum and a gathered float32 weight.
_BYTES_PER_JACCARD_PAIR = 24
# Bytes per (query, gallery) entry of _Jaccard.add_to: the float32 overlap and one float32 temporary.
_JACCARD_BYTES_PER_ENTRY = 8


class _Jaccard:
    """Adds ``weight * jaccard`` to blocks of re-ranked distances, ``jaccard = 1 - s / (2 - s)`` with
    ``s[q, g] = sum_j min(V[q, j], V[g, j])`` joined on the shared columns ``j`` of the sparse ``V``.

    The gallery entries of ``V`` are grouped by column once; a query's entries then find their
    partners by position, and a block of queries is joined in chunks within the chunk budget.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, weights: torch.Tensor, num_query: int,
                 num_all: int):
        device = rows.device
        self.num_gallery = num_all - num_query
        in_gallery = rows >= num_query
        by_column = torch.argsort(cols[in_gallery], stable=True)
        self.gallery_rows = (rows[in_gallery] - num_query)[by_column]
        self.gallery_weights = weights[in_gallery][by_column]
        column_length = torch.bincount(cols[in_gallery], minlength=num_all)
        self.column_start = torch.cumsum(column_length, 0) - column_length
        # V rows are sorted, so each query's entries are contiguous and in column order: the sum for
        # a (query, gallery) pair is accumulated over shared columns in ascending order in any chunk.
        self.query_rows, self.query_cols = rows[~in_gallery], cols[~in_gallery]
        self.query_weights = weights[~in_gallery]
        self.partners = column_length[self.query_cols]  # gallery entries sharing each query entry's column
        self.query_start = torch.searchsorted(self.query_rows, torch.arange(num_query + 1, device=device))
        pairs_per_query = torch.zeros(num_query, dtype=torch.int64, device=device).index_add_(
            0, self.query_rows, self.partners)
        self.cost = pairs_per_query * _BYTES_PER_JACCARD_PAIR + _JACCARD_BYTES_PER_ENTRY * self.num_gallery
        self.nbytes = nbytes(self.gallery_rows, self.gallery_weights, self.column_start, self.query_rows,
                             self.query_cols, self.query_weights, self.partners, self.query_start, self.cost)

    def add_to(self, block: torch.Tensor, start: int, weight: float, join_budget: int) -> None:
        """``block += weight * jaccard`` for queries ``start:start + len(block)``, joined in chunks of
        queries within ``join_budget`` bytes (:attr:`cost` per query)."""
        device = block.device
        end = start + block.shape[0]
        for first, last in row_blocks(self.cost[start:end], join_budget):
            first, last = first + start, last + start
            lo, hi = int(self.query_start[first]), int(self.query_start[last])
            count = self.partners[lo:hi]
            num_pairs = int(count.sum())
            # For each (query entry, gallery entry) pair of a shared column: position of the gallery
            # entry, flat (query row, gallery row) index, and min of the two weights.
            run_start = torch.cumsum(count, 0) - count
            partner = torch.repeat_interleave(self.column_start[self.query_cols[lo:hi]] - run_start, count,
                                              output_size=num_pairs)
            partner += torch.arange(num_pairs, device=device)
            flat = torch.repeat_interleave((self.query_rows[lo:hi] - first) * self.num_gallery, count,
                                           output_size=num_pairs)
            flat += self.gallery_rows[partner]
            shared = torch.repeat_interleave(self.query_weights[lo:hi], count, output_size=num_pairs)
            torch.minimum(shared, self.gallery_weights[partner], out=shared)
            del partner
            overlap = _scatter_sum(torch.zeros((last - first) * self.num_gallery, device=device), flat, shared)
            del flat, shared
            overlap = overlap.view(last - first, self.num_gallery)
            # jaccard = 1 - overlap / (2 - overlap) with one temporary instead of three; -x + c is
            # exactly c - x in IEEE arithmetic, so the values are those of the plain expression.
            jaccard = overlap.neg().add_(2.0)
            overlap.div_(jaccard)
            torch.neg(overlap, out=jaccard).add_(1.0)
            block[first - start:last - start].add_(jaccard, alpha=weight)


def _scatter_sum(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out[index[i]] += values[i]``, summing each entry's values in the order of ``i``, on every run.

    On CPU ``index_add_`` runs serially in that order. On CUDA it uses atomics (an arbitrary order per
    run, so float sums could differ in the last bit between runs or budgets); ``index_put_`` with
    ``accumulate=True`` sorts the indices instead and is deterministic (PyTorch's reproducibility notes).
    """
    if out.device.type == "cpu":
        return out.index_add_(0, index, values)
    return out.index_put_((index,), values, accumulate=True)
