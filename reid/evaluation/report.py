"""The evaluation report: one self-contained HTML page per run, and one that puts several runs side by side.

Two steps, so that a page can be drawn again (or several runs compared) without the features:

1. :func:`build_dataset_report` turns one dataset's evaluation (features, ids, paths and the evaluator's
   :class:`~reid.evaluation.RankResult`) into a small JSON-serialisable :class:`DatasetReport`: the metrics
   and CMC curves (plain and re-ranked), R1/mAP per (query camera, gallery camera) pair, histograms of
   true-match and false-match distances, and the ranked lists of the worst and best queries (file paths,
   identities, cameras, distances; no features, no pixels). A :class:`ReportData` holds the datasets of a run.
2. :func:`render_report_html` draws one or several :class:`ReportData` into one HTML page that opens from
   disk: CSS inline, every picture (plots and thumbnails read from the stored paths) inlined as a base64
   data URI, no script, no network.

:func:`write_report` writes ``report.html`` and ``report_data.json`` into a run folder;
:func:`write_comparison_report` renders the ``report_data.json`` of several run folders into one page.

Camera pairs: cell (a, b) ranks the queries taken by camera a against the gallery images taken by camera b
only, with the evaluator's protocol; a query without a true match there is left out of that cell. The
diagonal (a, a) is empty by construction: the protocol discards the gallery images of the query's identity
taken by the query's camera, so no query has a true match in its own camera's gallery. The "all" column is
the ordinary evaluation restricted to the queries of one camera.

Cameras are written as in the file names: 1-based, ``c1`` is camera id 0.
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reid.evaluation import FeatureDistances, RankResult, evaluate_rank
from reid.evaluation.protocol import as_numpy
from reid.evaluation.report_data import (
    REPORT_DATA,
    REPORT_HTML,
    CameraCell,
    DatasetReport,
    DistanceHistogram,
    QueryList,
    ReportData,
    Tile,
)
from reid.evaluation.report_html import render_report_html
from reid.utils.errors import ReIDError
from reid.utils.fsio import atomic_write_text
from reid.utils.progress import Progress

logger = logging.getLogger("reid.evaluation")

# Query x gallery distances computed at once (about 10 bytes of working memory each).
_BLOCK_ENTRIES = 4 * 2**20
# Histogram bins over the whole possible range of distances, merged into the requested number at the end.
_FINE_BINS = 4096


# ------------------------------------------------------------------------------------- building
def build_dataset_report(name: str, qf, gf, q_pids, g_pids, q_camids, g_camids, q_paths: Sequence[str],
                         g_paths: Sequence[str], results: Mapping[str, RankResult], *, metric: str = "cosine",
                         normalize: bool = False, num_queries: int = 8, topk: int = 10,
                         camera_pairs: bool = True, histogram_bins: int = 60) -> DatasetReport:
    """Summarise one dataset's evaluation for the report, in one pass over blocks of query rows.

    Args:
        qf, gf, q_pids, g_pids, q_camids, g_camids: what the evaluator ranked (numpy or torch; the work runs
            on the features' device); camera ids 0-based.
        q_paths, g_paths: the image files, in the same order.
        results: the evaluator's results, ``{"plain": RankResult}`` plus ``"rerank"`` when computed; the
            worst and best queries are chosen by the plain AP, and the "all cameras" column uses it.
        metric, normalize: TEST.METRIC and TEST.FEAT_NORM, so the distances are the evaluator's own
            (:class:`~reid.evaluation.FeatureDistances`, the same numbers bit for bit).
        num_queries: how many worst and how many best queries to list; topk: results shown per query.
        camera_pairs: compute R1/mAP per (query camera, gallery camera) pair.
        histogram_bins: at most this many bins for the distance histograms (0: none).

    Cost: the distances of every query to the gallery once more (in blocks of bounded memory) plus, with
    ``camera_pairs``, ranking each block's columns of each gallery camera: about one more evaluation.
    """
    if "plain" not in results:
        raise ReIDError(f"The report of {name} needs the plain evaluation result (results['plain']).")
    distances = FeatureDistances(qf, gf, metric, normalize)
    labels = _Labels.checked(name, distances.shape, q_pids, g_pids, q_camids, g_camids, q_paths, g_paths)
    report = DatasetReport(name=name, num_query=distances.shape[0], num_gallery=distances.shape[1], metric=metric,
                           results={key: _result_row(result) for key, result in results.items()},
                           query_cameras=sorted(set(labels.q_cams.tolist())),
                           gallery_cameras=sorted(set(labels.g_cams.tolist())))
    plain = results["plain"]
    order = np.argsort(np.asarray(plain.AP), kind="stable")
    count = min(num_queries, len(order))
    worst, best = order[:count], order[::-1][:count]
    listed = {int(plain.query_indices[p]): float(plain.AP[p]) for p in (*worst, *best)}

    unit_features = metric == "cosine" or normalize
    histogram = (_HistogramCounts(qf, gf, unit_features, histogram_bins, distances.device)
                 if histogram_bins > 0 else None)
    cells = _CameraCells(labels, distances.device) if camera_pairs else None
    with Progress(f"report {name}", distances.shape[0], "queries", logger=logger) as progress:
        lists, rank1_hit = _scan_query_blocks(distances, labels, listed, topk, histogram, cells, progress)
    report.worst = [lists[int(plain.query_indices[p])] for p in worst]
    report.best = [lists[int(plain.query_indices[p])] for p in best]
    if cells is not None:
        report.camera_cells = cells.result(plain, rank1_hit)
    if histogram is not None:
        report.histogram = histogram.result(distances.shape[0])
    return report


def _scan_query_blocks(distances: FeatureDistances, labels: _Labels, listed: Mapping[int, float], topk: int,
                       histogram: _HistogramCounts | None, cells: _CameraCells | None,
                       progress: Progress) -> tuple[dict[int, QueryList], np.ndarray]:
    """One pass over blocks of query rows: feeds the histogram and the camera cells, keeps the ranked lists
    of the ``listed`` queries (query -> AP) and whether each query's rank 1 is a true match."""
    num_q, num_g = distances.shape
    device = distances.device
    q_pids, g_pids, q_cams, g_cams = (torch.from_numpy(a).to(device)
                                      for a in (labels.q_pids, labels.g_pids, labels.q_cams, labels.g_cams))
    rank1_hit = np.zeros(num_q, dtype=bool)
    lists: dict[int, QueryList] = {}
    rows_per_block = max(1, _BLOCK_ENTRIES // max(num_g, 1))
    # Blocks hold the queries of one camera (so each is ranked once per gallery camera), the queries in order.
    by_camera = np.argsort(labels.q_cams, kind="stable")
    for block in _camera_blocks(labels.q_cams[by_camera], rows_per_block):
        queries = by_camera[block]
        rows = torch.from_numpy(queries).to(device)
        dist = distances.rows(rows)
        same = q_pids[rows, None] == g_pids[None, :]
        ignored = same & (q_cams[rows, None] == g_cams[None, :])
        if histogram is not None:
            histogram.add(dist, same, ignored)
        if cells is not None:
            # Rank 1 under the protocol: the nearest image that is not ignored (ties: the lower gallery index).
            nearest = dist.masked_fill(ignored, math.inf).argmin(dim=1)
            rank1_hit[queries] = (g_pids[nearest] == q_pids[rows]).cpu().numpy()
            cells.add_block(queries, dist)
        for position, query in enumerate(queries.tolist()):
            if query in listed:
                lists[query] = _query_list(query, listed[query], dist[position].cpu().numpy(), labels, topk)
        progress.update(len(queries))
    return lists, rank1_hit


@dataclass
class _Labels:
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_cams: np.ndarray
    g_cams: np.ndarray
    q_paths: list[str]
    g_paths: list[str]

    @classmethod
    def checked(cls, name: str, shape: tuple[int, int], q_pids, g_pids, q_camids, g_camids,
                q_paths: Sequence[str], g_paths: Sequence[str]) -> _Labels:
        """The labels as int64 numpy arrays, refused unless they have one entry per query / gallery feature."""
        q_pids, g_pids, q_cams, g_cams = (as_numpy(a).astype(np.int64).reshape(-1)
                                          for a in (q_pids, g_pids, q_camids, g_camids))
        num_q, num_g = shape
        sizes = {len(q_paths): "query paths", len(q_pids): "query pids", len(q_cams): "query camids"}
        g_sizes = {len(g_paths): "gallery paths", len(g_pids): "gallery pids", len(g_cams): "gallery camids"}
        if set(sizes) != {num_q} or set(g_sizes) != {num_g}:
            raise ReIDError(f"The report of {name}: the features are {num_q} queries x {num_g} gallery images but "
                            f"the paths and ids have {sorted(sizes)} and {sorted(g_sizes)} entries; they must come "
                            "from the same query/gallery split.")
        return cls(q_pids, g_pids, q_cams, g_cams, list(map(str, q_paths)), list(map(str, g_paths)))


def _result_row(result: RankResult) -> dict[str, Any]:
    return {**result.as_dict(), "cmc": [round(float(v), 6) for v in result.cmc],
            "num_valid_queries": int(result.num_valid_queries)}


def _query_list(query: int, ap: float, row: np.ndarray, labels: _Labels, topk: int) -> QueryList:
    """The query's ranking as the evaluator sees it (float32 distances, ties by gallery index): its first
    ``topk`` ranked images, the ignored ones that fall among them, and its first true match if lower."""
    q_pid, q_cam = int(labels.q_pids[query]), int(labels.q_cams[query])
    order = np.argsort(row.astype(np.float32, copy=False), kind="stable")
    same_pid = labels.g_pids[order] == q_pid
    counted = ~(same_pid & (labels.g_cams[order] == q_cam))
    ranks = np.cumsum(counted)  # at each position: how many counted images up to it
    head_end = int(np.searchsorted(ranks, topk)) + 1 if ranks[-1] >= topk else len(order)
    matches = np.flatnonzero(same_pid & counted)

    def tile(position: int) -> Tile:
        gallery = int(order[position])
        status = ("match" if same_pid[position] else "mismatch") if counted[position] else "ignored"
        return Tile(labels.g_paths[gallery], int(labels.g_pids[gallery]), int(labels.g_cams[gallery]), status,
                    float(row[gallery]), int(ranks[position]) if counted[position] else None)

    shown = [tile(position) for position in range(head_end)]
    first_match = tile(int(matches[0])) if len(matches) and matches[0] >= head_end else None
    return QueryList(Tile(labels.q_paths[query], q_pid, q_cam, "query"), ap, shown, first_match)


def _camera_blocks(sorted_cams: np.ndarray, rows_per_block: int) -> list[slice]:
    """Slices of at most ``rows_per_block`` consecutive entries of ``sorted_cams`` that share one camera."""
    blocks = []
    for cam in np.unique(sorted_cams):
        first, last = np.searchsorted(sorted_cams, cam), np.searchsorted(sorted_cams, cam, side="right")
        blocks += [slice(start, min(start + rows_per_block, last)) for start in range(first, last, rows_per_block)]
    return blocks


class _CameraCells:
    """R1/mAP per (query camera, gallery camera): each block's rows of a query camera are ranked against the
    block's columns of each other gallery camera with the evaluator's :func:`~reid.evaluation.evaluate_rank`
    (no image there is ignored by the protocol: the cameras differ), and the sums are kept per cell."""

    def __init__(self, labels: _Labels, device: torch.device) -> None:
        self.labels = labels
        # The gallery grouped by camera (stable), so a camera's columns are one slice of a permuted block.
        self.gallery_order = np.argsort(labels.g_cams, kind="stable")
        self.gallery_order_t = torch.from_numpy(self.gallery_order).to(device)
        cams = labels.g_cams[self.gallery_order]
        self.spans = {int(c): (int(np.searchsorted(cams, c)), int(np.searchsorted(cams, c, side="right")))
                      for c in np.unique(cams)}
        self.pids_of = {c: np.unique(labels.g_pids[self.gallery_order[a:b]]) for c, (a, b) in self.spans.items()}
        self.device = device
        self.sums: dict[tuple[int, int], list[float]] = defaultdict(lambda: [0.0, 0.0, 0])  # hits, AP sum, count

    def add_block(self, queries: np.ndarray, dist: torch.Tensor) -> None:
        """Rank ``queries`` (all of one camera) against each other camera's gallery images."""
        q_pids, q_cams = self.labels.q_pids[queries], self.labels.q_cams[queries]
        q_cam = int(q_cams[0])
        grouped = dist[:, self.gallery_order_t]  # one copy per block; a camera's columns are then one slice
        g_pids, g_cams = self.labels.g_pids[self.gallery_order], self.labels.g_cams[self.gallery_order]
        for g_cam, (c0, c1) in self.spans.items():
            if g_cam == q_cam or not np.isin(q_pids, self.pids_of[g_cam]).any():
                continue  # the diagonal, or no query here has a match in that camera
            result = evaluate_rank(grouped[:, c0:c1], q_pids, g_pids[c0:c1], q_cams, g_cams[c0:c1], max_rank=1)
            cell = self.sums[(q_cam, g_cam)]
            cell[0] += round(float(result.cmc[0]) * result.num_valid_queries)
            cell[1] += float(np.sum(result.AP))
            cell[2] += result.num_valid_queries

    def result(self, plain: RankResult, rank1_hit: np.ndarray) -> list[CameraCell]:
        cells = [CameraCell(q_cam, g_cam, hits / count, ap_sum / count, int(count))
                 for (q_cam, g_cam), (hits, ap_sum, count) in sorted(self.sums.items())]
        # The whole gallery: the plain evaluation restricted to each camera's queries.
        valid = np.asarray(plain.query_indices, dtype=np.int64)
        ap = np.asarray(plain.AP, dtype=float)
        for q_cam in sorted(set(self.labels.q_cams.tolist())):
            mine = self.labels.q_cams[valid] == q_cam
            if mine.any():
                cells.append(CameraCell(int(q_cam), None, float(rank1_hit[valid[mine]].mean()),
                                        float(ap[mine].mean()), int(mine.sum())))
        return cells


class _HistogramCounts:
    """Counts of true-match and false-match distances, accumulated block by block on the device.

    The range is known before any distance: [0, 2] for unit features (cosine, or normalised euclidean),
    [0, max |q| + max |g|] otherwise. Distances are counted in :data:`_FINE_BINS` bins over it; the result keeps
    the occupied span, merged into at most ``bins`` bins, so every pair is counted exactly once.
    """

    def __init__(self, qf, gf, unit_features: bool, bins: int, device: torch.device) -> None:
        high = 2.0 if unit_features else _max_norm(qf) + _max_norm(gf)  # the triangle inequality
        self.low, self.high = 0.0, max(high, 1e-6) * (1 + 1e-4)  # float32 rounding stays inside
        self.bins = bins
        self.scale = _FINE_BINS / (self.high - self.low)
        self.true = torch.zeros(_FINE_BINS, dtype=torch.int64, device=device)
        self.false = torch.zeros(_FINE_BINS, dtype=torch.int64, device=device)

    def add(self, dist: torch.Tensor, same: torch.Tensor, ignored: torch.Tensor) -> None:
        """Count a block: ``same`` identity as the query (true matches unless ``ignored``), else false matches."""
        index = ((dist - self.low) * self.scale).floor_().clamp_(0, _FINE_BINS - 1).long()
        # One bincount over (kind, bin): kind 0 false match, 1 true match, 2 ignored (dropped).
        index += _FINE_BINS * (same.long() + ignored.long())
        counts = torch.bincount(index.reshape(-1), minlength=3 * _FINE_BINS)
        self.false += counts[:_FINE_BINS]
        self.true += counts[_FINE_BINS:2 * _FINE_BINS]

    def result(self, num_queries: int) -> DistanceHistogram:
        true, false = self.true.cpu().numpy(), self.false.cpu().numpy()
        occupied = np.flatnonzero(true + false)
        first, last = (int(occupied[0]), int(occupied[-1])) if len(occupied) else (0, _FINE_BINS - 1)
        group = max(1, math.ceil((last - first + 1) / self.bins))
        starts = np.arange(first, last + 1, group)
        width = 1.0 / self.scale
        edges = [self.low + width * int(i) for i in (*starts, min(starts[-1] + group, _FINE_BINS))]
        return DistanceHistogram(edges, np.add.reduceat(true, starts).tolist()[:len(starts)],
                                 np.add.reduceat(false, starts).tolist()[:len(starts)], num_queries)


# ------------------------------------------------------------------------------------- writing
def write_report(data: ReportData, output_dir: str | Path, *, max_rank: int = 20) -> Path:
    """Write ``report_data.json`` and ``report.html`` into ``output_dir``; returns the page's path."""
    output_dir = Path(output_dir)
    data.save(output_dir / REPORT_DATA)
    return atomic_write_text(output_dir / REPORT_HTML, render_report_html([(data.title, data)], max_rank=max_rank))


def write_comparison_report(run_dirs: Sequence[str | Path], output_path: str | Path, *,
                            labels: Sequence[str] | None = None, title: str = "", max_rank: int = 20) -> Path:
    """One page comparing runs from their ``report_data.json`` (written by :func:`write_report`).

    ``labels`` name the runs (default: their folder names, made unique). ``output_path`` is the page's file
    (a folder gets ``report.html`` inside).
    """
    if not run_dirs:
        raise ReIDError("Give at least one run folder to compare.")
    if labels is not None and len(labels) != len(run_dirs):
        raise ReIDError(f"{len(labels)} labels for {len(run_dirs)} run folders: give one label per run.")
    names = [Path(d).resolve().name for d in run_dirs]
    default = [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]
    runs = [(label, ReportData.load(Path(d) / REPORT_DATA)) for label, d in zip(labels or default, run_dirs)]
    output_path = Path(output_path)
    if output_path.is_dir() or output_path.suffix.lower() not in (".html", ".htm"):
        output_path = output_path / REPORT_HTML
    page = render_report_html(runs, title=title or "Comparison of " + ", ".join(label for label, _ in runs),
                              max_rank=max_rank)
    return atomic_write_text(output_path, page)


def _max_norm(features, chunk_rows: int = 4096) -> float:
    """The largest L2 norm of the rows of ``features`` (numpy or torch), in float64, a chunk at a time."""
    largest = 0.0
    for start in range(0, len(features), chunk_rows):
        chunk = features[start:start + chunk_rows]
        chunk = chunk.detach() if isinstance(chunk, torch.Tensor) else torch.as_tensor(np.asarray(chunk))
        largest = max(largest, float(torch.linalg.vector_norm(chunk.double(), dim=1).max()))
    return largest
