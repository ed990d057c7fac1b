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
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.evaluation import FeatureDistances, RankResult, evaluate_features
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

# Gallery rows of distances computed at once for the histograms (a bound on their working memory).
_HISTOGRAM_BLOCK_ENTRIES = 4 * 2**20


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
    queries: int  # queries whose distances are counted
    of_queries: int  # all queries of the dataset


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
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path

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
                         camera_pairs: bool = True, histogram_bins: int = 60,
                         histogram_queries: int = 2000) -> DatasetReport:
    """Summarise one dataset's evaluation for the report.

    Args:
        qf, gf, q_pids, g_pids, q_camids, g_camids: what the evaluator ranked (numpy or torch; features stay
            on their device); camera ids 0-based.
        q_paths, g_paths: the image files, in the same order.
        results: the evaluator's results, ``{"plain": RankResult}`` plus ``"rerank"`` when computed; the
            worst and best queries are chosen by the plain AP.
        metric, normalize: TEST.METRIC and TEST.FEAT_NORM, so the distances are the evaluator's own.
        num_queries: how many worst and how many best queries to list; topk: results shown per query.
        camera_pairs: compute R1/mAP per (query camera, gallery camera) pair (costs about two more
            evaluations' worth of distances).
        histogram_queries: the distance histograms use at most this many queries (evenly spaced) against
            the whole gallery; bins: their number of bins.
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
    rows = {key: _result_row(result) for key, result in results.items()}
    report = DatasetReport(name=name, num_query=num_q, num_gallery=num_g, metric=metric, results=rows,
                           query_cameras=sorted(set(q_cams_np.tolist())),
                           gallery_cameras=sorted(set(g_cams_np.tolist())))
    labels = _Labels(q_pids_np, g_pids_np, q_cams_np, g_cams_np, list(map(str, q_paths)), list(map(str, g_paths)))
    plain = results["plain"]
    order = np.argsort(np.asarray(plain.AP), kind="stable")
    count = min(num_queries, len(order))
    for chosen, into in ((order[:count], report.worst), (order[::-1][:count], report.best)):
        for position in chosen:
            query = int(plain.query_indices[position])
            row = distances.rows([query])[0].cpu().numpy()
            into.append(_query_list(query, float(plain.AP[position]), row, labels, topk))
    if camera_pairs:
        report.camera_cells = _camera_cells(qf, gf, labels, metric, normalize)
    if histogram_queries > 0 and histogram_bins > 0:
        report.histogram = _histogram(distances, labels, histogram_bins, histogram_queries)
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


def _camera_cells(qf, gf, labels: _Labels, metric: str, normalize: bool) -> list[CameraCell]:
    """R1/mAP of each (query camera, gallery camera) pair with a true match, and of each query camera against
    the whole gallery. Each query is ranked once per gallery camera: the cells together cost one evaluation."""
    query, gallery = _as_tensor(qf), _as_tensor(gf)
    cells = []
    for q_cam in sorted(set(labels.q_cams.tolist())):
        q_mask = labels.q_cams == q_cam
        q_pids = labels.q_pids[q_mask]
        for g_cam in [*sorted(set(labels.g_cams.tolist()) - {q_cam}), None]:
            g_mask = np.ones_like(labels.g_cams, dtype=bool) if g_cam is None else labels.g_cams == g_cam
            # A true match: same identity, other camera than the query's (within the chosen gallery images).
            matchable = set(labels.g_pids[g_mask & (labels.g_cams != q_cam)].tolist())
            if not any(pid in matchable for pid in q_pids.tolist()):
                continue
            result = evaluate_features(query[_index(q_mask, query)], gallery[_index(g_mask, gallery)], q_pids,
                                       labels.g_pids[g_mask], labels.q_cams[q_mask], labels.g_cams[g_mask],
                                       metric=metric, normalize=normalize, max_rank=1)
            cells.append(CameraCell(int(q_cam), None if g_cam is None else int(g_cam), float(result.cmc[0]),
                                    float(result.mAP), int(result.num_valid_queries)))
    return cells


def _histogram(distances: FeatureDistances, labels: _Labels, bins: int, max_queries: int) -> DistanceHistogram:
    """Counts of true-match and false-match distances (protocol-ignored pairs left out), in two passes over
    blocks of query rows: the range, then the counts."""
    num_q, num_g = distances.shape
    chosen = np.unique(np.linspace(0, num_q - 1, min(max_queries, num_q)).round().astype(np.int64))
    block = max(1, _HISTOGRAM_BLOCK_ENTRIES // max(num_g, 1))

    def blocks():
        for start in range(0, len(chosen), block):
            rows = chosen[start:start + block]
            dist = distances.rows(rows).cpu().numpy().astype(np.float64)
            same = labels.q_pids[rows, None] == labels.g_pids[None, :]
            ignored = same & (labels.q_cams[rows, None] == labels.g_cams[None, :])
            yield dist, same & ~ignored, ~same

    low, high = math.inf, -math.inf
    for dist, true, false in blocks():
        kept = dist[true | false]
        if kept.size:
            low, high = min(low, float(kept.min())), max(high, float(kept.max()))
    if not math.isfinite(low):
        low, high = 0.0, 1.0
    if high <= low:
        high = low + 1.0
    edges = np.linspace(low, high, bins + 1)
    true_counts = np.zeros(bins, np.int64)
    false_counts = np.zeros(bins, np.int64)
    for dist, true, false in blocks():
        true_counts += np.histogram(dist[true], edges)[0]
        false_counts += np.histogram(dist[false], edges)[0]
    return DistanceHistogram([float(e) for e in edges], true_counts.tolist(), false_counts.tolist(),
                             int(len(chosen)), int(num_q))


# ------------------------------------------------------------------------------------- writing
def write_report(data: ReportData, output_dir: str | Path, *, max_rank: int = 20) -> Path:
    """Write ``report_data.json`` and ``report.html`` into ``output_dir``; returns the page's path."""
    output_dir = Path(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        data.save(output_dir / REPORT_DATA)
        page = output_dir / REPORT_HTML
        page.write_text(render_report_html([(data.title, data)], max_rank=max_rank), encoding="utf-8")
    except OSError as exc:
        raise ReIDError(f"Cannot write the report into {output_dir}: {exc.strerror or exc}.") from exc
    return page


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
    try:
        output_path.parent.mkdir(parents=True, exist_ok=True)
        output_path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise ReIDError(f"Cannot write the report {output_path}: {exc.strerror or exc}.") from exc
    return output_path


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
    sampled = (f" Distances of {h.queries} of the {h.of_queries} queries (evenly spaced) to the whole gallery."
               if h.queries < h.of_queries else "")
    note = ('<p class="note">Each curve is normalised to its own total. Same identity and same camera as the '
            f"query: left out, as in the evaluation.{sampled}</p>")
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


def _as_tensor(x) -> torch.Tensor:
    return x.detach() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))


def _index(mask: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(np.flatnonzero(mask)).to(like.device)
