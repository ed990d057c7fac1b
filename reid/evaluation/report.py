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

import base64
import datetime
import html
import io
import json
import logging
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.evaluation import FeatureDistances, RankResult, evaluate_rank
from reid.evaluation.visualize import (
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    UNKNOWN_COLOR,
    camera_label,
    cmc_figure,
    read_tile_image,
)
from reid.utils.errors import ReIDError
from reid.utils.fsio import atomic_write_text

logger = logging.getLogger("reid.evaluation")

REPORT_FORMAT = "reid-report/1"
REPORT_HTML = "report.html"
REPORT_DATA = "report_data.json"
#: Thumbnail size in the ranked lists, (height, width) pixels.
THUMBNAIL_SIZE = (128, 64)
#: Metric columns of the tables, in order (those present in every row are shown).
METRIC_COLUMNS = ("R1", "R5", "R10", "mAP", "mINP")
#: Result keys and how the page names them.
VARIANT_NAMES = {"plain": "", "rerank": "re-ranked"}
#: Kinds of tile in a ranked list.
STATUSES = ("query", "match", "mismatch", "ignored")

# Query x gallery distances computed at once (about 10 bytes of working memory each).
_BLOCK_ENTRIES = 4 * 2**20
# Histogram bins over the whole possible range of distances, merged into the requested number at the end.
_FINE_BINS = 4096


# ---------------------------------------------------------------------------------------- data
@dataclass
class Tile:
    """One image of a ranked list."""

    path: str
    pid: int
    camid: int  # 0-based, as in the toolkit; shown 1-based
    status: str  # one of STATUSES
    distance: float | None = None  # to the query (None for the query itself)
    rank: int | None = None  # 1-based rank under the protocol (None: the query, or ignored by the protocol)


@dataclass
class QueryList:
    """A query, its AP, and the head of its ranking (ignored images shown where they fall, in grey)."""

    query: Tile
    ap: float
    results: list[Tile]
    first_match: Tile | None = None  # the first true match, when it ranks below the shown results


@dataclass
class CameraCell:
    query_camera: int
    gallery_camera: int | None  # None: the whole gallery
    R1: float
    mAP: float
    queries: int  # queries with a true match in this cell


@dataclass
class DistanceHistogram:
    edges: list[float]
    true_match: list[int]
    false_match: list[int]
    queries: int  # queries whose distances are counted (all of them)


@dataclass
class DatasetReport:
    """Everything the page shows about one dataset (JSON-serialisable; no features)."""

    name: str
    num_query: int
    num_gallery: int
    metric: str
    results: dict[str, dict[str, Any]]  # "plain" / "rerank" -> R1.., mAP, mINP, cmc, num_valid_queries
    query_cameras: list[int] = field(default_factory=list)
    gallery_cameras: list[int] = field(default_factory=list)
    camera_cells: list[CameraCell] = field(default_factory=list)
    histogram: DistanceHistogram | None = None
    worst: list[QueryList] = field(default_factory=list)
    best: list[QueryList] = field(default_factory=list)


@dataclass
class ReportData:
    """One run's report: its datasets and a few facts to show (weights, config, ...)."""

    title: str
    datasets: list[DatasetReport]
    info: dict[str, str] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.datetime.now().isoformat(timespec="seconds"))
    format: str = REPORT_FORMAT

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        """Write the data as JSON (a few tens of kB: no features, no pixels)."""
        return atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=1))

    @classmethod
    def from_dict(cls, data: Mapping, source: str = "report data") -> ReportData:
        """Rebuild from :meth:`to_dict`'s output; a ReIDError naming ``source`` when it does not fit."""
        try:
            if data.get("format") != REPORT_FORMAT:
                raise ReIDError(f"{source} is not a report data file of this version (format "
                                f"{data.get('format')!r}, expected {REPORT_FORMAT!r}); run the evaluation again.")
            datasets = [_dataset_from_dict(d) for d in data["datasets"]]
            return cls(title=str(data["title"]), datasets=datasets, info=dict(data.get("info", {})),
                       created=str(data.get("created", "")))
        except ReIDError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ReIDError(f"{source} is not a readable report data file ({type(exc).__name__}: {exc}); "
                            "run the evaluation again to rewrite it.") from exc

    @classmethod
    def load(cls, path: str | Path) -> ReportData:
        path = Path(path)
        if not path.is_file():
            raise ReIDError(f"{path} does not exist: tools/test.py (or training's final evaluation) writes it "
                            f"next to {REPORT_HTML}; evaluate the run first.")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ReIDError(f"{path} is not valid JSON ({exc}); run the evaluation again to rewrite it.") from exc
        if not isinstance(data, dict):
            raise ReIDError(f"{path} does not hold a report (a JSON object was expected).")
        return cls.from_dict(data, source=str(path))


def _tile(d: Mapping) -> Tile:
    tile = Tile(**d)
    if tile.status not in STATUSES:
        raise ValueError(f"unknown tile status {tile.status!r}")
    return tile


def _dataset_from_dict(d: Mapping) -> DatasetReport:
    def query_list(q: Mapping) -> QueryList:
        return QueryList(query=_tile(q["query"]), ap=float(q["ap"]), results=[_tile(t) for t in q["results"]],
                         first_match=_tile(q["first_match"]) if q.get("first_match") else None)

    histogram = d.get("histogram")
    return DatasetReport(
        name=str(d["name"]), num_query=int(d["num_query"]), num_gallery=int(d["num_gallery"]), metric=str(d["metric"]),
        results={str(k): dict(v) for k, v in d["results"].items()},
        query_cameras=[int(c) for c in d.get("query_cameras", [])],
        gallery_cameras=[int(c) for c in d.get("gallery_cameras", [])],
        camera_cells=[CameraCell(**c) for c in d.get("camera_cells", [])],
        histogram=DistanceHistogram(**histogram) if histogram else None,
        worst=[query_list(q) for q in d.get("worst", [])], best=[query_list(q) for q in d.get("best", [])])


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
    q_pids_np, g_pids_np, q_cams_np, g_cams_np = (_to_numpy(a).astype(np.int64).reshape(-1)
                                                  for a in (q_pids, g_pids, q_camids, g_camids))
    distances = FeatureDistances(qf, gf, metric, normalize)
    num_q, num_g = distances.shape
    sizes = {len(q_paths): "query paths", len(q_pids_np): "query pids", len(q_cams_np): "query camids"}
    g_sizes = {len(g_paths): "gallery paths", len(g_pids_np): "gallery pids", len(g_cams_np): "gallery camids"}
    if set(sizes) != {num_q} or set(g_sizes) != {num_g}:
        raise ReIDError(f"The report of {name}: the features are {num_q} queries x {num_g} gallery images but the "
                        f"paths and ids have {sorted(sizes)} and {sorted(g_sizes)} entries; they must come from the "
                        "same query/gallery split.")
    labels = _Labels(q_pids_np, g_pids_np, q_cams_np, g_cams_np, list(map(str, q_paths)), list(map(str, g_paths)))
    report = DatasetReport(name=name, num_query=num_q, num_gallery=num_g, metric=metric,
                           results={key: _result_row(result) for key, result in results.items()},
                           query_cameras=sorted(set(q_cams_np.tolist())),
                           gallery_cameras=sorted(set(g_cams_np.tolist())))
    plain = results["plain"]
    order = np.argsort(np.asarray(plain.AP), kind="stable")
    count = min(num_queries, len(order))
    worst, best = order[:count], order[::-1][:count]
    listed = {int(plain.query_indices[p]): float(plain.AP[p]) for p in (*worst, *best)}

    device = distances.device
    ids = {key: torch.from_numpy(value).to(device) for key, value in
           (("q_pids", q_pids_np), ("g_pids", g_pids_np), ("q_cams", q_cams_np), ("g_cams", g_cams_np))}
    unit_features = metric == "cosine" or normalize
    histogram = _HistogramCounts(qf, gf, unit_features, histogram_bins, device) if histogram_bins > 0 else None
    cells = _CameraCells(labels, device) if camera_pairs else None
    rank1_hit = np.zeros(num_q, dtype=bool)
    lists: dict[int, QueryList] = {}
    rows_per_block = max(1, _BLOCK_ENTRIES // max(num_g, 1))
    # Blocks hold the queries of one camera (so each is ranked once per gallery camera), the queries in order.
    by_camera = np.argsort(q_cams_np, kind="stable")
    for block in _camera_blocks(q_cams_np[by_camera], rows_per_block):
        queries = by_camera[block]
        rows = torch.from_numpy(queries).to(device)
        dist = distances.rows(rows)
        same = ids["q_pids"][rows, None] == ids["g_pids"][None, :]
        ignored = same & (ids["q_cams"][rows, None] == ids["g_cams"][None, :])
        if histogram is not None:
            histogram.add(dist, same, ignored)
        if cells is not None:
            # Rank 1 under the protocol: the nearest image that is not ignored (ties: the lower gallery index).
            nearest = dist.masked_fill(ignored, math.inf).argmin(dim=1)
            rank1_hit[queries] = (ids["g_pids"][nearest] == ids["q_pids"][rows]).cpu().numpy()
            cells.add_block(queries, dist)
        for position, query in enumerate(queries.tolist()):
            if query in listed:
                lists[query] = _query_list(query, listed[query], dist[position].cpu().numpy(), labels, topk)
    report.worst = [lists[int(plain.query_indices[p])] for p in worst]
    report.best = [lists[int(plain.query_indices[p])] for p in best]
    if cells is not None:
        report.camera_cells = cells.result(plain, rank1_hit)
    if histogram is not None:
        report.histogram = histogram.result(num_q)
    return report


@dataclass
class _Labels:
    q_pids: np.ndarray
    g_pids: np.ndarray
    q_cams: np.ndarray
    g_cams: np.ndarray
    q_paths: list[str]
    g_paths: list[str]


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


# ------------------------------------------------------------------------------------ rendering
def _css_color(bgr: tuple[int, int, int]) -> str:
    b, g, r = bgr
    return f"#{r:02x}{g:02x}{b:02x}"


_STYLE = f"""
body {{ font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px; color: #222;
       max-width: 1500px; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 2em; border-bottom: 1px solid #ccc; }} h3 {{ margin-top: 1.4em; }}
table {{ border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; font-variant-numeric: tabular-nums; }}
th {{ background: #f2f2f2; }} td.label, th.label {{ text-align: left; }}
td.na {{ color: #888; text-align: center; }}
.runs {{ display: flex; flex-wrap: wrap; gap: 24px; align-items: flex-start; }}
.run {{ flex: 0 1 auto; }}
.plot {{ max-width: 100%; width: 640px; height: auto; }}
.note {{ color: #555; font-size: 0.9em; max-width: 900px; }}
.ranked {{ display: flex; flex-wrap: nowrap; gap: 6px; align-items: flex-start; margin: 6px 0 14px;
          overflow-x: auto; }}
.tile {{ margin: 0; text-align: center; font-size: 12px; line-height: 1.3; }}
.tile img {{ display: block; width: {THUMBNAIL_SIZE[1]}px; height: {THUMBNAIL_SIZE[0]}px; border: 4px solid;
            margin: 0 auto 2px; }}
.tile figcaption {{ white-space: nowrap; }}
.query img {{ border-color: {_css_color(QUERY_COLOR)}; }} .match img {{ border-color: {_css_color(MATCH_COLOR)}; }}
.mismatch img {{ border-color: {_css_color(MISMATCH_COLOR)}; }}
.ignored img {{ border-color: {_css_color(UNKNOWN_COLOR)}; opacity: 0.6; }}
.sep {{ align-self: center; color: #888; font-size: 20px; padding: 0 4px; }}
.legend {{ display: flex; flex-wrap: wrap; gap: 18px; margin: 8px 0; font-size: 0.9em; }}
.swatch {{ display: inline-block; width: 12px; height: 12px; border: 3px solid; vertical-align: -3px;
          margin-right: 4px; }}
details summary {{ cursor: pointer; font-weight: 600; margin: 8px 0; }}
"""


def render_report_html(runs: Sequence[tuple[str, ReportData]], *, title: str = "", max_rank: int = 20) -> str:
    """The page for one run (``[(label, data)]``) or several side by side; plots and thumbnails inlined."""
    if not runs:
        raise ReIDError("No report data to render.")
    images = _ImageCache()
    single = len(runs) == 1
    title = title or runs[0][1].title
    parts = [f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{_e(title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{_e(title)}</h1>"]
    parts.append(_run_facts(runs))
    datasets = list(dict.fromkeys(d.name for _, data in runs for d in data.datasets))
    parts.append("<h2>Summary</h2>")
    parts.append(_summary_table(runs, datasets, single))
    parts.append('<p class="note">Metrics in percent. R<i>k</i>: fraction of queries whose first true match is '
                 "within the top <i>k</i>; mAP: mean average precision; mINP: mean inverse negative penalty. "
                 "Queries without a true match in the gallery are not counted.</p>")
    for name in datasets:
        entries = [(label, d) for label, data in runs for d in data.datasets if d.name == name]
        parts.append(f'<h2 id="{_e(_anchor(name))}">{_e(name)}</h2>')
        parts.append(_dataset_table(entries, single))
        parts.append(_img(images.figure(_cmc_plot(entries, name, single, max_rank)), f"CMC curves on {name}",
                          "plot"))
        parts.append("<h3>R1 / mAP by camera pair</h3>")
        parts.append('<p class="note">Row: the camera of the queries; column: the camera of the gallery images '
                     "they are ranked against (only those). The diagonal is empty: the protocol discards the "
                     "query identity's images from its own camera, so there is no true match to find there. "
                     "<i>all</i>: the whole gallery. Cameras as in the file names (c1 = camera id 0).</p>")
        parts.append('<div class="runs">' + "".join(
            f'<div class="run">{"" if single else f"<h4>{_e(label)}</h4>"}{_camera_table(d)}</div>'
            for label, d in entries) + "</div>")
        parts.append("<h3>Distances of true and false matches</h3>")
        parts.append('<div class="runs">' + "".join(
            f'<div class="run">{"" if single else f"<h4>{_e(label)}</h4>"}{_histogram_html(d, label, images)}</div>'
            for label, d in entries) + "</div>")
        parts.append("<h3>Worst and best queries</h3>")
        parts.append(_legend_html(entries[0][1].metric))
        for label, d in entries:
            prefix = "" if single else f"{label}: "
            for kind, lists in (("worst", d.worst), ("best", d.best)):
                if not lists:
                    continue
                heading = f"{prefix}{len(lists)} {kind} queries (by AP)"
                body = "".join(_ranked_html(q, images) for q in lists)
                parts.append(f"<details{' open' if single else ''}><summary>{_e(heading)}</summary>{body}</details>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _run_facts(runs: Sequence[tuple[str, ReportData]]) -> str:
    rows = []
    for label, data in runs:
        facts = {"created": data.created, **data.info}
        text = "; ".join(f"{_e(k)}: {_e(v)}" for k, v in facts.items() if v)
        rows.append(f"<li><b>{_e(label)}</b>: {text}</li>" if len(runs) > 1 else f"<li>{text}</li>")
    return f'<ul class="note">{"".join(rows)}</ul>'


def _variant_rows(d: DatasetReport) -> list[tuple[str, dict]]:
    return [(VARIANT_NAMES.get(key, key), row) for key, row in d.results.items()]


def _columns(rows: Sequence[dict]) -> list[str]:
    return [c for c in METRIC_COLUMNS if all(c in row for row in rows)]


def _summary_table(runs: Sequence[tuple[str, ReportData]], datasets: Sequence[str], single: bool) -> str:
    lines, all_rows = [], []
    for label, data in runs:
        for d in data.datasets:
            for variant, row in _variant_rows(d):
                lines.append(([] if single else [label]) + [d.name + (f" ({variant})" if variant else "")])
                all_rows.append(row)
    columns = _columns(all_rows)
    head = ([] if single else ["run"]) + ["dataset"]
    out = ["<table><tr>" + "".join(f'<th class="label">{h}</th>' for h in head)
           + "".join(f"<th>{c}</th>" for c in columns) + "</tr>"]
    for labels, row in zip(lines, all_rows):
        out.append("<tr>" + "".join(f'<td class="label">{_e(x)}</td>' for x in labels)
                   + "".join(f"<td>{_pct(row[c])}</td>" for c in columns) + "</tr>")
    return "".join(out) + "</table>"


def _dataset_table(entries: Sequence[tuple[str, DatasetReport]], single: bool) -> str:
    rows = [(label, variant, row, d) for label, d in entries for variant, row in _variant_rows(d)]
    columns = _columns([row for _, _, row, _ in rows])
    head = ([] if single else ["run"]) + ["ranking"]
    out = ["<table><tr>" + "".join(f'<th class="label">{h}</th>' for h in head)
           + "".join(f"<th>{c}</th>" for c in columns) + "<th>queries counted</th><th>gallery</th></tr>"]
    for label, variant, row, d in rows:
        cells = ([] if single else [label]) + [variant or d.metric + " distance"]
        out.append("<tr>" + "".join(f'<td class="label">{_e(x)}</td>' for x in cells)
                   + "".join(f"<td>{_pct(row[c])}</td>" for c in columns)
                   + f"<td>{row.get('num_valid_queries', '')} of {d.num_query}</td><td>{d.num_gallery}</td></tr>")
    return "".join(out) + "</table>"


def _cmc_plot(entries: Sequence[tuple[str, DatasetReport]], name: str, single: bool, max_rank: int) -> Figure:
    curves = {}
    for label, d in entries:
        for variant, row in _variant_rows(d):
            base = name if single else label
            curves[base + (f" {variant}" if variant else "")] = row["cmc"]
    return cmc_figure(curves, title=f"CMC on {name}", max_rank=max_rank, what=f"the report of {name}")


def _camera_table(d: DatasetReport) -> str:
    if not d.camera_cells:
        return '<p class="note">No camera pairs computed.</p>'
    by_pair = {(c.query_camera, c.gallery_camera): c for c in d.camera_cells}
    columns: list[int | None] = [*d.gallery_cameras, None]
    out = ['<table><tr><th class="label">query \\ gallery</th>'
           + "".join(f"<th>{'all' if g is None else camera_label(g)}</th>" for g in columns) + "</tr>"]
    for q in d.query_cameras:
        cells = []
        for g in columns:
            cell = by_pair.get((q, g))
            if cell is None:
                why = ("same camera: no true match under the protocol" if g == q
                       else "no query of this camera has a true match there")
                cells.append(f'<td class="na" title="{_e(why)}">&mdash;</td>')
            else:
                shade = _shade(cell.R1)
                cells.append(f'<td style="background:{shade}" title="{cell.queries} queries counted">'
                             f"{_pct(cell.R1)} / {_pct(cell.mAP)}</td>")
        out.append(f'<tr><th class="label">{camera_label(q)}</th>' + "".join(cells) + "</tr>")
    return "".join(out) + "</table>"


def _histogram_html(d: DatasetReport, label: str, images: _ImageCache) -> str:
    h = d.histogram
    if h is None:
        return '<p class="note">No histogram computed.</p>'
    fig = Figure(figsize=(6, 3.6), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    edges = np.asarray(h.edges)
    for counts, color, what in ((h.true_match, MATCH_COLOR, "true matches"),
                                (h.false_match, MISMATCH_COLOR, "false matches")):
        counts = np.asarray(counts, dtype=float)
        total = counts.sum()
        if total:
            ax.stairs(counts / total, edges, fill=True, alpha=0.45, color=_css_color(color),
                      label=f"{what} ({int(total):,})")
    ax.set_xlabel(f"{d.metric} distance")
    ax.set_ylabel("fraction of pairs")
    ax.set_title(d.name)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=9)
    fig.tight_layout()
    note = ('<p class="note">Each curve is normalised to its own total. Same identity and same camera as the '
            "query: left out, as in the evaluation.</p>")
    return _img(images.figure(fig), f"distance histogram of {label} on {d.name}", "plot") + note


def _legend_html(metric: str) -> str:
    items = [(QUERY_COLOR, "query (with its AP)"), (MATCH_COLOR, "same identity (true match)"),
             (MISMATCH_COLOR, "other identity"),
             (UNKNOWN_COLOR, "same identity and camera as the query: ignored by the protocol, not ranked")]
    swatches = "".join(f'<span><span class="swatch" style="border-color:{_css_color(c)}"></span>{_e(t)}</span>'
                       for c, t in items)
    text = (f"<span>#k: rank under the protocol; d: {_e(metric)} distance to the query; cN: camera N as in the "
            "file names</span>")
    return f'<div class="legend">{swatches}{text}</div>'


def _ranked_html(q: QueryList, images: _ImageCache) -> str:
    tiles = [_tile_html(q.query, images, [f"query  AP {_pct(q.ap)}%", _identity(q.query)])]
    for tile in q.results:
        tiles.append(_tile_html(tile, images, [_rank_line(tile), _identity(tile)]))
    if q.first_match is not None:
        tiles.append('<span class="sep" title="first true match">&hellip;</span>')
        tiles.append(_tile_html(q.first_match, images, [_rank_line(q.first_match), _identity(q.first_match)]))
    return f'<div class="ranked">{"".join(tiles)}</div>'


def _rank_line(tile: Tile) -> str:
    rank = "ignored" if tile.rank is None else f"#{tile.rank}"
    return f"{rank} d={tile.distance:.3f}"


def _identity(tile: Tile) -> str:
    return f"id {tile.pid} {camera_label(tile.camid)}"


def _tile_html(tile: Tile, images: _ImageCache, lines: Sequence[str]) -> str:
    caption = "<br>".join(_e(line) for line in lines)
    return (f'<figure class="tile {tile.status}" title="{_e(tile.path)}">'
            f'{_img(images.thumbnail(tile.path), Path(tile.path).name)}<figcaption>{caption}</figcaption></figure>')


class _ImageCache:
    """Data URIs of thumbnails (each file encoded once per page) and figures."""

    def __init__(self) -> None:
        self.thumbnails: dict[str, str] = {}

    def thumbnail(self, path: str) -> str:
        if path not in self.thumbnails:
            image = read_tile_image(path, THUMBNAIL_SIZE)  # a grey placeholder naming the file if unreadable
            ok, encoded = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 90])
            if not ok:
                raise ReIDError(f"Could not encode a thumbnail of {path}.")
            self.thumbnails[path] = "data:image/jpeg;base64," + base64.b64encode(encoded.tobytes()).decode("ascii")
        return self.thumbnails[path]

    @staticmethod
    def figure(fig: Figure) -> str:
        buffer = io.BytesIO()
        fig.savefig(buffer, format="png", metadata={"Software": None})
        return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _img(uri: str, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img{cls} src="{uri}" alt="{_e(alt)}">'


def _shade(value: float) -> str:
    """A light background from red (0) through yellow to green (1)."""
    hue = 120 * min(max(value, 0.0), 1.0)
    return f"hsl({hue:.0f}, 70%, 85%)"


def _pct(value: float) -> str:
    return f"{100 * float(value):.1f}"


def _anchor(name: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in name)


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def _max_norm(features, chunk_rows: int = 4096) -> float:
    """The largest L2 norm of the rows of ``features`` (numpy or torch), in float64, a chunk at a time."""
    largest = 0.0
    for start in range(0, len(features), chunk_rows):
        chunk = features[start:start + chunk_rows]
        chunk = chunk.detach() if isinstance(chunk, torch.Tensor) else torch.as_tensor(np.asarray(chunk))
        largest = max(largest, float(torch.linalg.vector_norm(chunk.double(), dim=1).max()))
    return largest
