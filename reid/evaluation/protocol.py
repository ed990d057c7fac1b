"""The Market-1501 ranking protocol: inputs, identities, true matches and junk, per-query metrics.

The protocol of torchreid and fast-reid: for each query, the gallery images of the query's identity
taken by the query's camera are discarded (junk); a query left without any true match is excluded
from every average; AP is non-interpolated (mean of the precision at each true match); INP is
``num_matches / position of the hardest true match`` (1-based); ``cmc[k]`` is the fraction of valid
queries whose first true match is at 0-based rank ``<= k``.

This module knows who matches whom (:class:`Identities`, :func:`identity_pairs`) and turns the ranks
of the true matches into metrics (:class:`MetricAccumulator`, :class:`RankResult`); how the ranks are
found is :mod:`reid.evaluation.ranking`'s job. It also checks the user's inputs.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Union

import numpy as np
import torch

from reid.utils.errors import ReIDError

ArrayLike = Union[np.ndarray, torch.Tensor]

#: The distance metrics of :func:`reid.evaluation.rank.evaluate_features` and
#: :class:`reid.evaluation.distances.FeatureDistances`.
METRICS = ("cosine", "euclidean")


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
        peak_memory_bytes: extra memory used by :func:`reid.evaluation.rank.evaluate_features` or
            :func:`reid.evaluation.rerank.evaluate_reranked` (``None`` for
            :func:`reid.evaluation.rank.evaluate_rank`): on CUDA the ``torch.cuda.max_memory_allocated``
            increase; on CPU the bytes of the largest set of buffers alive at once, computed from their
            shapes.
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

    def __iter__(self) -> Iterator:
        """``cmc, mAP = evaluate_rank(...)``, as torchreid's ``evaluate_rank`` returns them; the other fields
        stay attributes of the result."""
        return iter((self.cmc, self.mAP))

    def __repr__(self) -> str:
        # The per-query arrays can hold tens of thousands of numbers: a log line wants the summary.
        return (f"RankResult(R1={float(self.cmc[0]):.4f}, mAP={float(self.mAP):.4f}, "
                f"mINP={float(self.mINP):.4f}, queries={self.num_valid_queries})")


# --------------------------------------------------------------------------------------------------
# Input checks


def as_numpy(value: ArrayLike) -> np.ndarray:
    """``value`` as a numpy array (a tensor is detached and copied to the host), for drawing and reports."""
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)


def as_tensor(value: ArrayLike, name: str) -> torch.Tensor:
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


def feature_tensors(qf: ArrayLike, gf: ArrayLike) -> tuple[torch.Tensor, torch.Tensor, torch.device]:
    """Checked query and gallery feature tensors and the device to work on (``qf``'s when a tensor)."""
    query, gallery = as_tensor(qf, "qf"), as_tensor(gf, "gf")
    if query.dim() != 2 or gallery.dim() != 2 or query.shape[1] != gallery.shape[1]:
        raise ReIDError(f"Query and gallery features must be 2-D with the same width, got shapes "
                        f"{tuple(query.shape)} and {tuple(gallery.shape)}.")
    if not (query.is_floating_point() and gallery.is_floating_point()):
        raise ReIDError(f"Features must be floating point, got {query.dtype} and {gallery.dtype}.")
    device = query.device if isinstance(qf, torch.Tensor) else gallery.device
    return query, gallery, device


def check_metric(metric: str) -> str:
    """``metric`` if it is one of :data:`METRICS`."""
    if metric not in METRICS:
        raise ReIDError(f"Unknown distance metric {metric!r}; use one of {', '.join(METRICS)}.")
    return metric


def check_max_rank(max_rank: int) -> int:
    """``max_rank`` as an int if it is a positive integer."""
    # bool is an Integral too, but max_rank=True is a mistake, not 1.
    if isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
        raise ReIDError(f"max_rank must be a positive integer, got {max_rank!r}.")
    return int(max_rank)


def _labels(value: ArrayLike, name: str, length: int, device: torch.device) -> torch.Tensor:
    labels = as_tensor(value, name).reshape(-1)
    if labels.numel() != length:
        raise ReIDError(f"{name} has {labels.numel()} entries but the distance matrix / features have "
                        f"{length}; ids and features must come from the same query/gallery split.")
    if labels.numel() and (labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool):
        raise ReIDError(f"{name} must hold integer ids, got dtype {labels.dtype}.")
    return labels.to(device=device, dtype=torch.int64)


# --------------------------------------------------------------------------------------------------
# Identities


class Identities:
    """Query/gallery identities and cameras on one device, with the gallery grouped by identity.

    Grouping lets a query find its same-identity gallery images (true matches and same-camera junk)
    by binary search, without a query x gallery mask.
    """

    def __init__(self, q_pids: ArrayLike, g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike, num_q: int,
                 num_g: int, device: torch.device):
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

    @property
    def num_queries(self) -> int:
        return self.q_pids.numel()

    @property
    def device(self) -> torch.device:
        return self.q_pids.device

    @property
    def nbytes(self) -> int:
        """Bytes held for the whole evaluation: per gallery image its pid, camera, index and identity
        order; per query its pid, camera and identity span (start, count)."""
        return sum(t.nbytes for t in (self.q_pids, self.g_pids, self.q_camids, self.g_camids, self.gallery_index,
                                      self.gallery_by_pid, self.span_start, self.span_count))

    def same_identity_pairs(self, start: int, end: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(row within the block, gallery index) of every same-identity pair of queries ``start:end``.

        Rows come out grouped and in order; within a row, gallery indices are ascending.
        """
        rows, positions = expand_ranges(self.span_start[start:end], self.span_count[start:end])
        return rows, self.gallery_by_pid[positions]


def expand_ranges(starts: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten the ranges ``starts[r] : starts[r] + lengths[r]``: (range r, position) of each element."""
    owner = torch.repeat_interleave(torch.arange(lengths.numel(), device=lengths.device), lengths)
    return owner, starts[owner] + index_within_group(owner, lengths)


def index_within_group(group: torch.Tensor, group_sizes: torch.Tensor) -> torch.Tensor:
    """0-based position of each element within its group, for elements sorted by ``group``."""
    group_start = torch.cumsum(group_sizes, 0) - group_sizes
    return torch.arange(group.numel(), device=group.device) - group_start[group]


#: Bytes per (query, same-identity gallery image) pair while :func:`identity_pairs` runs: the int64 row
#: and column of every pair (and the int64 temporaries of :func:`expand_ranges` behind them), the bool
#: same-camera mask and its negation, and the int64 rows and columns of the matches and junk it splits
#: them into.
IDENTITY_PAIR_BYTES = 40


def identity_pairs(ids: Identities, start: int, end: int) -> tuple[torch.Tensor, ...]:
    """``(match_rows, match_cols, junk_rows, junk_cols, num_matches)`` of queries ``start:end``: their true
    matches (same identity, other camera) and same-camera junk, rows within the block.
    :data:`IDENTITY_PAIR_BYTES` per pair."""
    rows, cols = ids.same_identity_pairs(start, end)
    same_camera = ids.q_camids[start:end][rows] == ids.g_camids[cols]
    match_rows = rows[~same_camera]
    num_matches = torch.bincount(match_rows, minlength=end - start)
    return match_rows, cols[~same_camera], rows[same_camera], cols[same_camera], num_matches


# --------------------------------------------------------------------------------------------------
# Metrics


class MetricAccumulator:
    """Per-query AP, INP and first-match rank, filled block by block."""

    def __init__(self, num_queries: int, device: torch.device):
        self.num_matches = torch.zeros(num_queries, dtype=torch.int64, device=device)
        self.first_rank = torch.zeros(num_queries, dtype=torch.int64, device=device)
        self.ap = torch.zeros(num_queries, dtype=torch.float64, device=device)
        self.inp = torch.zeros(num_queries, dtype=torch.float64, device=device)

    @property
    def nbytes(self) -> int:
        """Bytes held for the whole evaluation: 4 numbers per query."""
        return sum(t.nbytes for t in (self.num_matches, self.first_rank, self.ap, self.inp))

    def add(self, start: int, ranks: torch.Tensor, num_matches: torch.Tensor) -> None:
        """Record queries ``start:start + len(ranks)``: ``ranks[q, :num_matches[q]]`` are the ascending
        0-based ranks of query q's true matches (the rest of the row is padding)."""
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
        """The metrics over the queries with at least one true match."""
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
