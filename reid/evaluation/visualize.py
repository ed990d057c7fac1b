"""Pictures of ReID results: CMC curves (matplotlib, Agg), ranked lists of queries and attack triptychs (OpenCV).

A ranked list is one image per query: the query on the left, framed in :data:`QUERY_COLOR` with its AP,
then its top-k gallery matches under the standard protocol (gallery images of the query's identity taken
by the query's camera are left out, as in the evaluator), each framed in :data:`MATCH_COLOR` or
:data:`MISMATCH_COLOR` with its rank, distance (``d=0.123``), identity and camera underneath, and a
legend at the bottom. Cameras are written as in the file names, 1-based (``c1`` is camera id 0).

Tiles are laid out by :class:`StripLayout`: every caption line is measured with ``cv2.getTextSize`` and
the columns are widened (up to :data:`MAX_COLUMN_WIDTH`) or the font shrunk so that no caption leaves its
column; the search tool's pictures use the same layout. The layout constants, :func:`cell_origin` and
:func:`canvas_size` are public so that callers (and tests) can find a cell in a ranked list.
"""

from __future__ import annotations

import json
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.evaluation import FeatureDistances, RankResult, evaluate_features, evaluate_rank
from reid.utils.errors import ReIDError

logger = logging.getLogger("reid.evaluation")

# Tile layout, in pixels. A cell is the frame plus the image inside it; a column is a cell with its captions.
CELL_HEIGHT = 128
CELL_WIDTH = 64
FRAME = 5  # frame thickness, inside the cell
MARGIN = 10  # around the picture and between columns
QUERY_GAP = 20  # extra space separating the query from its results
MAX_COLUMN_WIDTH = 240  # captions wider than this shrink their font, then lose their middle ("...")
CAPTION_SCALE = 0.4  # Hershey simplex font scale of captions...
MIN_CAPTION_SCALE = 0.3  # ... and the smallest it shrinks to
CAPTION_PAD = 3  # between a caption and its column's edges
LINE_HEIGHT = 18  # per caption line: 11 px of text at CAPTION_SCALE, its descent and spacing
CAPTION_TOP = 16  # from the bottom of a cell to the first caption's baseline
LEGEND_SCALE = 0.45
SWATCH = 16  # legend colour square

# BGR colours (OpenCV order).
QUERY_COLOR = (200, 120, 40)  # blue-ish, neutral
MATCH_COLOR = (0, 190, 0)  # green: same identity as the query
MISMATCH_COLOR = (0, 0, 220)  # red: another identity
UNKNOWN_COLOR = (160, 160, 160)  # grey: identity unknown, or ignored by the protocol
PLACEHOLDER_COLOR = (128, 128, 128)  # fill of an image that cannot be read
BACKGROUND_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)
LEGEND_RULE_COLOR = (200, 200, 200)

MODES = ("worst", "best", "random")
_FONT = cv2.FONT_HERSHEY_SIMPLEX
# Full-resolution chroma keeps the thin coloured frames crisp.
_JPEG_PARAMS = [cv2.IMWRITE_JPEG_QUALITY, 95, cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]

# Distance rows of the given query indices, shape (len(indices), num_gallery).
DistanceRows = Callable[[np.ndarray], np.ndarray]
# The evaluator's result for every query, computed only when the caller gives no AP.
Evaluate = Callable[[], RankResult]


# ---------------------------------------------------------------------------------------------- CMC
def plot_cmc(curves: Mapping[str, Sequence[float]], path: str | Path, title: str = "", max_rank: int = 20) -> Path:
    """Draw CMC curves (fractions in [0, 1], index 0 = rank 1) as a PNG; one line per label, R1 in the legend.

    The legend reads ``<label>: R1 92.8%``: give labels that say what a curve is (a run, a dataset,
    "market1501 re-ranked"), not how it was computed.
    """
    fig = cmc_figure(curves, title=title, max_rank=max_rank, what=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})
    return path


def cmc_figure(curves: Mapping[str, Sequence[float]], title: str = "", max_rank: int = 20,
               what: str = "the CMC plot") -> Figure:
    """The matplotlib figure of :func:`plot_cmc` (Agg canvas attached); ``what`` names it in error messages."""
    if not curves:
        raise ReIDError(f"No CMC curve to plot into {what}.")
    if isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
        raise ReIDError(f"max_rank must be an integer of at least 1, got {max_rank!r}.")
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot may be using
    ax = fig.add_subplot()
    lowest, longest = 100.0, 1
    for label, cmc in curves.items():
        values = 100 * _cmc_values(cmc, f"CMC curve '{label}' for {what}")[:max_rank]
        if values.min() < 0 or values.max() > 100 + 1e-6:
            raise ReIDError(f"CMC curve '{label}' for {what} must be a non-empty list of fractions in [0, 1].")
        lowest, longest = min(lowest, float(values.min())), max(longest, values.size)
        ax.plot(np.arange(1, values.size + 1), values, marker="o", markersize=3, linewidth=1.8,
                label=f"{label}: R1 {values[0]:.1f}%")
    last = min(max_rank, longest)  # the axis ends with the longest curve, not past it
    ax.set_xlim(0.5, last + 0.5)
    ax.set_xticks(sorted({1, last, *range(5, last + 1, 5)}))
    ax.set_ylim(max(0.0, 10 * math.floor((lowest - 5) / 10)), 101)
    ax.set_xlabel("rank", fontsize=12)
    ax.set_ylabel("matching rate (%)", fontsize=12)
    ax.set_title(title or "CMC", fontsize=13)
    ax.tick_params(labelsize=11)
    ax.grid(True, alpha=0.4)
    ax.legend(loc="lower right", fontsize=10)
    fig.tight_layout()
    return fig


def load_run_results(run_dir: str | Path) -> dict[str, dict]:
    """The ``results`` table of ``RUN_DIR/results.json``: ``{dataset: {"R1": .., "cmc": [..], ...}}``."""
    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise ReIDError(f"{path} does not exist: give run folders written by tools/train.py or tools/test.py.")
    try:
        results = json.loads(path.read_text()).get("results")
    except (json.JSONDecodeError, AttributeError, UnicodeDecodeError) as exc:
        raise ReIDError(f"{path} is not a readable results file ({exc}).") from exc
    if not isinstance(results, dict) or not results:
        raise ReIDError(f"{path} has no 'results' table of datasets.")
    return results


def plot_runs_cmc(run_dirs: Sequence[str | Path], output_dir: str | Path, dataset: str | None = None,
                  max_rank: int = 20, rerank: bool = False) -> list[Path]:
    """One ``cmc_<dataset>.png`` per dataset (or only ``dataset``) with one curve per run, labelled by folder name.

    With ``rerank``, runs that hold re-ranked results also get a "<run> re-ranked" curve.
    """
    names = [Path(d).resolve().name for d in run_dirs]
    labels = [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names)]  # folder names may collide
    runs = {label: (Path(d) / "results.json", load_run_results(d)) for label, d in zip(labels, run_dirs)}
    if dataset is None:
        datasets = list(dict.fromkeys(ds for _, results in runs.values() for ds in results))
    else:
        for file, results in runs.values():
            if dataset not in results:
                raise ReIDError(f"{file} has no results for dataset '{dataset}' (it has: {', '.join(results)}).")
        datasets = [dataset]
    written = []
    for ds in datasets:
        curves: dict[str, Sequence[float]] = {}
        for label, (file, results) in runs.items():
            if ds not in results:
                continue
            curves[label] = _cmc_of(results[ds], file, ds)
            if rerank and "rerank" in results[ds]:
                curves[f"{label} re-ranked"] = _cmc_of(results[ds]["rerank"], file, f"{ds} (rerank)")
        written.append(plot_cmc(curves, Path(output_dir) / f"cmc_{ds}.png", title=f"CMC on {ds}", max_rank=max_rank))
    return written


def _cmc_of(row: object, file: Path, name: str) -> Sequence[float]:
    cmc = row.get("cmc") if isinstance(row, dict) else None
    if not cmc:
        raise ReIDError(f"{file} has no 'cmc' curve for {name}: re-run tools/test.py to write it.")
    _cmc_values(cmc, f"The 'cmc' curve for {name} in {file}")
    return cmc


def _cmc_values(cmc: object, what: str) -> np.ndarray:
    """``cmc`` as a non-empty 1-D float array of finite values, or a ReIDError naming ``what``."""
    try:
        values = np.asarray(cmc, dtype=float)
    except (TypeError, ValueError):
        values = None
    if values is None or values.ndim != 1 or values.size == 0 or not np.all(np.isfinite(values)):
        raise ReIDError(f"{what} must be a non-empty list of fractions in [0, 1], got {str(cmc)[:80]}.")
    return values


# ------------------------------------------------------------------------------------ tile layout
def camera_label(camid: int) -> str:
    """A 0-based camera id written as in the file names: ``c1`` for camera 0; ``c?`` when unknown (< 0)."""
    camid = int(camid)
    return f"c{camid + 1}" if camid >= 0 else "c?"


def text_width(text: str, scale: float = CAPTION_SCALE) -> int:
    """Width in pixels of ``text`` drawn with the captions' font at ``scale``."""
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def fit_text(text: str, width: int, scale: float = CAPTION_SCALE) -> tuple[str, float]:
    """``(text, scale)`` that fits ``width`` pixels: the font shrinks down to :data:`MIN_CAPTION_SCALE`, then
    the middle of the text is replaced by "..." (the start and the end of a file name say the most)."""
    if text_width(text, scale) <= width:
        return text, scale
    # Glyph widths are rounded to pixels, so the proportional guess may still be a pixel too wide: step down.
    smaller = math.floor(100 * scale * width / text_width(text, scale)) / 100
    while smaller >= MIN_CAPTION_SCALE:
        if text_width(text, smaller) <= width:
            return text, smaller
        smaller = round(smaller - 0.01, 2)
    for keep in range(len(text) - 1, 0, -1):
        head = (keep + 1) // 2
        elided = text[:head] + "..." + text[len(text) - (keep - head):]
        if text_width(elided, MIN_CAPTION_SCALE) <= width:
            return elided, MIN_CAPTION_SCALE
    return "...", MIN_CAPTION_SCALE


class StripLayout:
    """Columns of one strip: position 0 (the query), a gap, then positions 1..n (its results).

    Each column holds a cell (:data:`CELL_WIDTH` x :data:`CELL_HEIGHT`, centred) and ``caption_lines`` lines
    of text under it. ``column_width`` fits the widest caption measured by :meth:`fit` (at most
    :data:`MAX_COLUMN_WIDTH`); a caption is always drawn inside :meth:`caption_box`, never across columns.
    """

    def __init__(self, positions: int, column_width: int, caption_lines: int) -> None:
        self.positions = positions
        self.column_width = max(int(column_width), CELL_WIDTH)
        self.caption_lines = caption_lines

    @classmethod
    def fit(cls, captions: Sequence[Sequence[str]], positions: int | None = None) -> StripLayout:
        """The layout whose columns fit ``captions`` (one list of lines per tile, of any strips sharing it)."""
        widest = max((text_width(line) for lines in captions for line in lines), default=0)
        width = min(max(CELL_WIDTH, widest + 2 * CAPTION_PAD), MAX_COLUMN_WIDTH)
        lines = max((len(lines) for lines in captions), default=0)
        return cls(positions if positions is not None else len(captions), width, lines)

    def column_span(self, position: int) -> tuple[int, int]:
        """``(x0, x1)``: the column's pixels are ``x0 <= x < x1``."""
        x0 = MARGIN + position * (self.column_width + MARGIN) + (QUERY_GAP if position > 0 else 0)
        return x0, x0 + self.column_width

    def cell_origin(self, position: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of the cell (frame and image) of ``position``."""
        x0, _ = self.column_span(position)
        return x0 + (self.column_width - CELL_WIDTH) // 2, MARGIN

    def caption_box(self, position: int, line: int) -> tuple[int, int, int, int]:
        """``(x0, y0, x1, y1)`` that caption line ``line`` of ``position`` is drawn within."""
        x0, x1 = self.column_span(position)
        baseline = MARGIN + CELL_HEIGHT + CAPTION_TOP + line * LINE_HEIGHT
        return x0 + CAPTION_PAD, baseline - 12, x1 - CAPTION_PAD, baseline + 5

    @property
    def height(self) -> int:
        return MARGIN + CELL_HEIGHT + (CAPTION_TOP - LINE_HEIGHT + 6 if self.caption_lines else 0) \
            + self.caption_lines * LINE_HEIGHT + MARGIN

    @property
    def width(self) -> int:
        return self.column_span(max(self.positions - 1, 0))[1] + MARGIN

    def draw(self, canvas: np.ndarray, position: int, path: str, color: tuple, lines: Sequence[str]) -> None:
        """Draw one framed image (a placeholder when unreadable) and its caption lines into ``canvas``."""
        x, y = self.cell_origin(position)
        canvas[y:y + CELL_HEIGHT, x:x + CELL_WIDTH] = color
        inner = (CELL_HEIGHT - 2 * FRAME, CELL_WIDTH - 2 * FRAME)
        canvas[y + FRAME:y + CELL_HEIGHT - FRAME, x + FRAME:x + CELL_WIDTH - FRAME] = read_tile_image(path, inner)
        for line, text in enumerate(lines[:self.caption_lines]):
            x0, _, x1, y1 = self.caption_box(position, line)
            text, scale = fit_text(text, x1 - x0)
            left = x0 + (x1 - x0 - text_width(text, scale)) // 2
            cv2.putText(canvas, text, (left, y1 - 5), _FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)


# --------------------------------------------------------------------------------------- legends
#: One legend entry: a frame colour (``None``: text only) and what it means.
LegendEntry = tuple[tuple[int, int, int] | None, str]

_LEGEND_ROW = 26
_LEGEND_SPACING = 18


def _legend_rows(entries: Sequence[LegendEntry], width: int) -> list[list[tuple[int, LegendEntry]]]:
    """Entries with their x, flowed into rows no wider than ``width`` (an entry wider than a row gets its own)."""
    rows: list[list[tuple[int, LegendEntry]]] = [[]]
    x = MARGIN
    for entry in entries:
        entry_width = _legend_entry_width(entry)
        if rows[-1] and x + entry_width > width - MARGIN:
            rows.append([])
            x = MARGIN
        rows[-1].append((x, entry))
        x += entry_width + _LEGEND_SPACING
    return rows


def _legend_entry_width(entry: LegendEntry) -> int:
    color, label = entry
    return (SWATCH + 6 if color is not None else 0) + text_width(label, LEGEND_SCALE)


def legend_min_width(entries: Sequence[LegendEntry]) -> int:
    """Width a picture needs so that every legend entry fits on a row."""
    return max((_legend_entry_width(e) for e in entries), default=0) + 2 * MARGIN


def legend_height(entries: Sequence[LegendEntry], width: int) -> int:
    return len(_legend_rows(entries, width)) * _LEGEND_ROW + MARGIN if entries else 0


def draw_legend(canvas: np.ndarray, top: int, entries: Sequence[LegendEntry]) -> None:
    """Draw ``entries`` (frame-colour squares and their meaning) in rows from ``top``, under a thin rule."""
    width = canvas.shape[1]
    canvas[top:top + 1, MARGIN:width - MARGIN] = LEGEND_RULE_COLOR
    for row, placed in enumerate(_legend_rows(entries, width)):
        y = top + MARGIN // 2 + row * _LEGEND_ROW + (_LEGEND_ROW - SWATCH) // 2
        for x, (color, label) in placed:
            if color is not None:
                canvas[y:y + SWATCH, x:x + SWATCH] = color
                canvas[y + 4:y + SWATCH - 4, x + 4:x + SWATCH - 4] = BACKGROUND_COLOR  # a frame, as on the tiles
                x += SWATCH + 6
            cv2.putText(canvas, label, (x, y + SWATCH - 3), _FONT, LEGEND_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)


def compose_with_legend(strips: Sequence[np.ndarray], entries: Sequence[LegendEntry]) -> np.ndarray:
    """Strips stacked top to bottom (left-aligned), then the legend; as wide as the widest of them."""
    width = max([s.shape[1] for s in strips] + [legend_min_width(entries)])
    strips_height = sum(s.shape[0] for s in strips)
    canvas = np.full((strips_height + legend_height(entries, width), width, 3), BACKGROUND_COLOR, np.uint8)
    y = 0
    for strip in strips:
        canvas[y:y + strip.shape[0], :strip.shape[1]] = strip
        y += strip.shape[0]
    if entries:
        draw_legend(canvas, y, entries)
    return canvas


# ------------------------------------------------------------------------------------- ranked lists
#: Widest captions a ranked list expects; its columns fit them, so every ranked list has the same geometry.
_RANKED_CAPTION_TEMPLATE = ("#100 d=-0.000", "id 00000 c00", "AP 100.0%")
RANKED_LAYOUT_LINES = 2
RANKED_LEGEND: list[LegendEntry] = [
    (QUERY_COLOR, "query (AP: its average precision)"),
    (MATCH_COLOR, "same identity"),
    (MISMATCH_COLOR, "other identity"),
    (None, "#rank, d=distance; cN: camera N as in file names; same identity + same camera: left out"),
]


def ranked_layout(topk: int) -> StripLayout:
    """The geometry of a ranked list with ``topk`` results (the same for every list of that length)."""
    width = StripLayout.fit([_RANKED_CAPTION_TEMPLATE]).column_width
    return StripLayout(topk + 1, width, RANKED_LAYOUT_LINES)


def cell_origin(position: int) -> tuple[int, int]:
    """Top-left ``(x, y)`` of a ranked list's cell: position 0 is the query, 1..k the ranked gallery results."""
    return ranked_layout(max(position, 1)).cell_origin(position)


def canvas_size(topk: int) -> tuple[int, int]:
    """``(height, width)`` of a ranked-list picture with ``topk`` results, legend included."""
    layout = ranked_layout(topk)
    width = max(layout.width, legend_min_width(RANKED_LEGEND))
    return layout.height + legend_height(RANKED_LEGEND, width), width


def save_ranked_lists(distmat, q_paths: Sequence[str], g_paths: Sequence[str], q_pids, g_pids, q_camids, g_camids,
                      out_dir: str | Path, *, num_queries: int = 10, mode: str = "worst", topk: int = 10,
                      ap=None, query_indices=None, seed: int = 0) -> list[Path]:
    """Draw the ranked lists of ``num_queries`` queries chosen by AP from a (q x g) distance matrix.

    ``mode``: "worst" (lowest AP first), "best" (highest first) or "random" (seeded). ``ap`` and
    ``query_indices`` are the evaluator's per-query AP and the queries it belongs to (those with a true
    match); without them the evaluator (:func:`reid.evaluation.rank.evaluate_rank`) computes them.
    ``distmat`` and the label arrays may be numpy or torch. Returns the written files,
    ``q{n:03d}_{query name}.jpg`` in selection order.
    """
    # Ranked in float32, as the evaluator compares distances, so the drawn order agrees with its AP.
    dist = _to_numpy(distmat).astype(np.float32, copy=False)

    def evaluate() -> RankResult:
        return evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=1)

    return _save_ranked_lists(lambda idx: dist[idx], dist.shape, evaluate, q_paths, g_paths, q_pids, g_pids,
                              q_camids, g_camids, out_dir, num_queries, mode, topk, ap, query_indices, seed)


def save_ranked_lists_from_features(qf, gf, q_paths: Sequence[str], g_paths: Sequence[str], q_pids, g_pids,
                                    q_camids, g_camids, out_dir: str | Path, *, num_queries: int = 10,
                                    mode: str = "worst", topk: int = 10, ap=None, query_indices=None,
                                    seed: int = 0, metric: str = "cosine", normalize: bool = False) -> list[Path]:
    """:func:`save_ranked_lists` from features, computing distance rows only for the queries it needs.

    ``metric``: "cosine" (1 - cosine similarity) or "euclidean"; ``normalize`` L2-normalises features first
    (pass the evaluator's TEST.METRIC and TEST.FEAT_NORM). The distances are the evaluator's own
    (:class:`reid.evaluation.rank.FeatureDistances`, bit for bit), so the drawn order agrees with its AP
    even in near ties; rows are computed only for the drawn queries, on the features' device. Without
    ``ap``, :func:`reid.evaluation.rank.evaluate_features` computes it.
    """
    distances = FeatureDistances(qf, gf, metric, normalize)  # an unknown metric is a ReIDError naming the choices

    def evaluate() -> RankResult:
        return evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=metric, max_rank=1,
                                 normalize=normalize)

    return _save_ranked_lists(lambda idx: distances.rows(idx).cpu().numpy(), distances.shape, evaluate, q_paths,
                              g_paths, q_pids, g_pids, q_camids, g_camids, out_dir, num_queries, mode, topk, ap,
                              query_indices, seed)


def _save_ranked_lists(rows: DistanceRows, shape: tuple[int, int], evaluate: Evaluate, q_paths, g_paths, q_pids,
                       g_pids, q_camids, g_camids, out_dir, num_queries: int, mode: str, topk: int, ap,
                       query_indices, seed: int) -> list[Path]:
    if mode not in MODES:
        raise ReIDError(f"Unknown ranked-list mode '{mode}': use one of {', '.join(MODES)}.")
    q_pids, g_pids, q_camids, g_camids = (_to_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids))
    sizes = {"query paths": len(q_paths), "query pids": len(q_pids), "query camids": len(q_camids)}
    g_sizes = {"gallery paths": len(g_paths), "gallery pids": len(g_pids), "gallery camids": len(g_camids)}
    if set(sizes.values()) != {shape[0]} or set(g_sizes.values()) != {shape[1]}:
        raise ReIDError(f"Ranked lists: the distances are {shape[0]} x {shape[1]} but got {sizes} and "
                        f"{g_sizes}; paths, ids and features must come from the same query/gallery split.")
    protocol = _Protocol(g_pids, g_camids)
    if ap is None and not any(protocol.has_match(p, c) for p, c in zip(q_pids.tolist(), q_camids.tolist())):
        logger.warning(f"No query has a true match in the gallery: no ranked list drawn in {out_dir}.")
        return []
    chosen = _choose_queries(evaluate, num_queries, mode, ap, query_indices, seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for n, (qi, q_ap) in enumerate(chosen, start=1):
        dist_row = rows(np.array([qi]))[0]
        order = protocol.ranking(dist_row, q_pids[qi], q_camids[qi])
        results = [(g_paths[gi], float(dist_row[gi]), bool(g_pids[gi] == q_pids[qi]), g_pids[gi], g_camids[gi])
                   for gi in order[:topk]]
        picture = _render(q_paths[qi], q_ap, q_pids[qi], q_camids[qi], results, topk)
        file = out_dir / f"q{n:03d}_{Path(q_paths[qi]).stem}.jpg"
        if not cv2.imwrite(str(file), picture, _JPEG_PARAMS):
            raise ReIDError(f"Could not write the ranked list {file}: check that the folder is writable.")
        written.append(file)
    return written


class _Protocol:
    """The standard ReID ranking: a query never sees gallery images of its own identity from its own camera.

    Only what drawing needs (the ordered list of one query); AP always comes from the evaluator.
    """

    def __init__(self, g_pids: np.ndarray, g_camids: np.ndarray):
        self.g_pids, self.g_camids = g_pids, g_camids
        self.cameras_of: dict = {}
        for pid, cam in zip(g_pids.tolist(), g_camids.tolist()):
            self.cameras_of.setdefault(pid, set()).add(cam)

    def has_match(self, q_pid, q_camid) -> bool:
        return bool(self.cameras_of.get(q_pid, set()) - {q_camid})

    def ranking(self, dist_row: np.ndarray, q_pid, q_camid) -> np.ndarray:
        kept = np.flatnonzero(~((self.g_pids == q_pid) & (self.g_camids == q_camid)))
        return kept[np.argsort(dist_row[kept], kind="stable")]


def _choose_queries(evaluate: Evaluate, num_queries: int, mode: str, ap, query_indices,
                    seed: int) -> list[tuple[int, float]]:
    """``(query index, AP)`` in drawing order, from the given AP or from ``evaluate()``."""
    if ap is None:
        result = evaluate()
        ap, candidates = result.AP, result.query_indices
    else:
        ap = _to_numpy(ap).astype(float)
        candidates = np.arange(len(ap)) if query_indices is None else _to_numpy(query_indices).astype(int)
        if len(candidates) != len(ap):
            raise ReIDError(f"Ranked lists: ap has {len(ap)} entries but query_indices has {len(candidates)}; "
                            "pass both from the same RankResult.")
        valid = np.isfinite(ap)  # NaN marks a query without a match when AP covers every query
        candidates, ap = candidates[valid], ap[valid]
    count = min(num_queries, len(candidates))
    if mode == "random":
        picked = np.random.default_rng(seed).choice(len(candidates), size=count, replace=False)
    else:
        picked = np.argsort(ap if mode == "worst" else -ap, kind="stable")[:count]
    return [(int(candidates[p]), float(ap[p])) for p in picked]


def ranked_captions(q_ap: float, q_pid: int, q_camid: int,
                    results: Sequence[tuple[float, int, int]]) -> list[list[str]]:
    """Caption lines of a ranked list: the query's (AP, identity, camera), then for each ``(distance, pid,
    camid)`` result its rank, distance, identity and camera (1-based, as in file names)."""
    captions = [[f"AP {100 * q_ap:.1f}%", f"id {q_pid} {camera_label(q_camid)}"]]
    for position, (dist, pid, camid) in enumerate(results, start=1):
        captions.append([f"#{position} d={dist:.3f}", f"id {pid} {camera_label(camid)}"])
    return captions


def _render(q_path: str, q_ap: float, q_pid, q_camid, results: list, topk: int) -> np.ndarray:
    layout = ranked_layout(topk)
    strip = np.full((layout.height, layout.width, 3), BACKGROUND_COLOR, np.uint8)
    captions = ranked_captions(q_ap, q_pid, q_camid, [(dist, pid, camid) for _, dist, _, pid, camid in results])
    layout.draw(strip, 0, q_path, QUERY_COLOR, captions[0])
    for position, (path, _, is_match, _, _) in enumerate(results, start=1):
        layout.draw(strip, position, path, MATCH_COLOR if is_match else MISMATCH_COLOR, captions[position])
    return compose_with_legend([strip], RANKED_LEGEND)


def read_tile_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """The image resized to ``size`` (h, w), or a grey placeholder naming the file when it cannot be read."""
    height, width = size
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if image is not None:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    logger.warning(f"Cannot read image {path}; drawing a grey placeholder instead.")
    cell = np.full((height, width, 3), PLACEHOLDER_COLOR, np.uint8)
    name = Path(path).name
    per_line = 8  # characters that fit the cell width at this font size
    for i in range(0, min(len(name), 6 * per_line), per_line):
        cv2.putText(cell, name[i:i + per_line], (2, 14 + 12 * (i // per_line)), _FONT, 0.3, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return cell


# ------------------------------------------------------------------------------- attack triptychs
TRIPTYCH_HEIGHT = 256  # images are upscaled (nearest neighbour, a whole factor) to about this height
TRIPTYCH_COLORMAP = cv2.COLORMAP_VIRIDIS  # |difference| / eps: 0 dark blue ... eps and above yellow
_TRIPTYCH_MIN_WIDTH = 440  # room for the title
_TITLE_SCALE = 0.5
_TITLE_LINE = 22
_LABEL_LINE = 20
_COLORBAR = 10


class TriptychLayout:
    """Geometry of an attack triptych: a two-line title, then clean | adversarial | difference, each labelled
    above, and a colour bar (0 .. eps) under the difference."""

    def __init__(self, image_height: int, image_width: int, height: int = TRIPTYCH_HEIGHT) -> None:
        self.factor = max(1, round(height / image_height))
        self.panel_height, self.panel_width = image_height * self.factor, image_width * self.factor
        panels_width = 3 * self.panel_width + 2 * MARGIN
        self.width = max(panels_width, _TRIPTYCH_MIN_WIDTH) + 2 * MARGIN
        self.left = (self.width - panels_width) // 2
        self.panels_top = MARGIN + 2 * _TITLE_LINE + _LABEL_LINE
        self.colorbar_top = self.panels_top + self.panel_height + 6
        self.height = self.colorbar_top + _COLORBAR + 18 + MARGIN

    def panel_origin(self, index: int) -> tuple[int, int]:
        """Top-left ``(x, y)`` of panel ``index``: 0 clean, 1 adversarial, 2 difference."""
        return self.left + index * (self.panel_width + MARGIN), self.panels_top


def difference_map(clean, adversarial, eps: float, scale: float | None = None) -> np.ndarray:
    """Per pixel, the largest absolute change over the colour channels times ``scale`` (default ``1 / eps``),
    clipped to [0, 1]: with the default, 1 means the pixel moved by the whole budget."""
    clean_hwc, adversarial_hwc = _triptych_images(clean, adversarial)
    scale = _difference_scale(eps, scale)
    return np.clip(np.abs(adversarial_hwc - clean_hwc).max(axis=2) * scale, 0.0, 1.0)


def colorize_difference(difference: np.ndarray) -> np.ndarray:
    """A [0, 1] map as a BGR image with :data:`TRIPTYCH_COLORMAP`."""
    levels = np.round(np.clip(difference, 0, 1) * 255).astype(np.uint8)
    return cv2.applyColorMap(levels, TRIPTYCH_COLORMAP)


def format_eps(eps: float) -> str:
    """``8/255`` for a whole number of 8-bit levels, else the value (``0.01``)."""
    levels = eps * 255
    return f"{round(levels)}/255" if abs(levels - round(levels)) < 1e-6 else f"{eps:.4g}"


def ap_of(result: RankResult, query: int) -> float | None:
    """The AP of query ``query`` (its index in the query set) in ``result``; ``None`` when it has no true
    match (the evaluator leaves it out). For the triptych's ``ap_before`` / ``ap_after``."""
    found = np.flatnonzero(np.asarray(result.query_indices) == query)
    return float(result.AP[found[0]]) if len(found) else None


def draw_attack_triptych(clean, adversarial, eps: float, path: str | Path, *, attack: str, objective: str,
                         ap_before: float | None, ap_after: float | None, scale: float | None = None,
                         height: int = TRIPTYCH_HEIGHT) -> Path:
    """Write clean | adversarial | |difference| of one attacked query, upscaled and labelled, to ``path``.

    ``clean``, ``adversarial``: RGB images in [0, 1], (3, H, W) tensors or arrays, as the attacks produce.
    ``eps``: the attack budget in the same [0, 1] units. The difference panel shows, per pixel, the largest
    change over the channels times ``scale`` (default ``1 / eps``, so the budget is the top of the colour
    map; a sign attack that moves nearly every pixel by eps is then uniformly bright, not a white panel)
    through :data:`TRIPTYCH_COLORMAP`, with a colour bar from 0 to eps underneath. The title names the attack,
    its objective and eps, and the query's AP before and after (fractions, shown in percent; ``None``:
    n/a). Images are upscaled by a whole factor with nearest-neighbour sampling to about ``height`` pixels so
    the perturbation's pixels stay visible. Use a .png path: JPEG would blur the difference.
    """
    clean_hwc, adversarial_hwc = _triptych_images(clean, adversarial)
    scale = _difference_scale(eps, scale)
    layout = TriptychLayout(clean_hwc.shape[0], clean_hwc.shape[1], height)
    canvas = np.full((layout.height, layout.width, 3), BACKGROUND_COLOR, np.uint8)
    difference = colorize_difference(difference_map(clean, adversarial, eps, scale))
    panels = [_to_bgr8(clean_hwc), _to_bgr8(adversarial_hwc), difference]
    labels = ["clean", "adversarial", f"|difference| x {scale:.3g}"]
    size = (layout.panel_width, layout.panel_height)
    for index, (panel, label) in enumerate(zip(panels, labels)):
        x, y = layout.panel_origin(index)
        canvas[y:y + layout.panel_height, x:x + layout.panel_width] = cv2.resize(
            panel, size, interpolation=cv2.INTER_NEAREST)
        text, text_scale = fit_text(label, layout.panel_width)
        cv2.putText(canvas, text, (x, y - 6), _FONT, text_scale, TEXT_COLOR, 1, cv2.LINE_AA)
    _draw_colorbar(canvas, layout, format_eps(1 / scale if scale > 0 else eps))

    title = f"{attack} ({objective}), eps {format_eps(eps)}"
    ap_line = f"query AP {_percent(ap_before)} clean -> {_percent(ap_after)} adversarial"
    for line, text in enumerate((title, ap_line)):
        text, text_scale = fit_text(text, layout.width - 2 * MARGIN, _TITLE_SCALE)
        cv2.putText(canvas, text, (MARGIN, MARGIN + 15 + line * _TITLE_LINE), _FONT, text_scale, TEXT_COLOR, 1,
                    cv2.LINE_AA)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        written = cv2.imwrite(str(path), canvas)
    except cv2.error:  # an extension OpenCV does not know
        written = False
    if not written:
        raise ReIDError(f"Could not write the attack triptych {path}: use a .png name in a writable folder.")
    return path


def _draw_colorbar(canvas: np.ndarray, layout: TriptychLayout, top_label: str) -> None:
    x, _ = layout.panel_origin(2)
    ramp = np.linspace(0, 1, layout.panel_width)[None, :].repeat(_COLORBAR, axis=0)
    canvas[layout.colorbar_top:layout.colorbar_top + _COLORBAR, x:x + layout.panel_width] = colorize_difference(ramp)
    baseline = layout.colorbar_top + _COLORBAR + 14
    cv2.putText(canvas, "0", (x, baseline), _FONT, CAPTION_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)
    right = x + layout.panel_width - text_width(top_label)
    cv2.putText(canvas, top_label, (right, baseline), _FONT, CAPTION_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)


def _triptych_images(clean, adversarial) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float32 (H, W, 3) RGB arrays, checked to be the same size."""
    images = []
    for name, image in (("clean", clean), ("adversarial", adversarial)):
        array = _to_numpy(image).astype(np.float32)
        if array.ndim != 3 or array.shape[0] != 3:
            raise ReIDError(f"The {name} image of a triptych must be a (3, H, W) RGB image in [0, 1], got shape "
                            f"{tuple(array.shape)}.")
        images.append(array.transpose(1, 2, 0))
    if images[0].shape != images[1].shape:
        raise ReIDError(f"The clean and adversarial images differ in size: {images[0].shape[:2]} vs "
                        f"{images[1].shape[:2]}.")
    return images[0], images[1]


def _difference_scale(eps: float, scale: float | None) -> float:
    if scale is None:
        if not eps > 0:
            raise ReIDError(f"A triptych needs eps > 0 to scale its difference panel, got {eps!r}; or pass scale.")
        return 1.0 / eps
    if not scale > 0:
        raise ReIDError(f"The difference scale must be positive, got {scale!r}.")
    return float(scale)


def _to_bgr8(rgb: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray((np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)[:, :, ::-1])


def _percent(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}%"


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
