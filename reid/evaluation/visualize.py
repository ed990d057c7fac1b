"""Pictures of ReID results: CMC curves (matplotlib, Agg) and ranked lists of queries (OpenCV).

A ranked list is one image per query: the query on the left, framed in :data:`QUERY_COLOR` with its AP,
then its top-k gallery matches under the standard protocol (gallery images of the query's identity taken
by the query's camera are left out, as in the evaluator), each framed in :data:`MATCH_COLOR` or
:data:`MISMATCH_COLOR` with its rank, distance (``d=0.123``), identity and camera underneath, and a
legend at the bottom. Cameras are written as in the file names, 1-based (``c1`` is camera id 0).

Tiles are laid out by :class:`reid.evaluation.drawing.StripLayout` (captions measured, never leaving their
column). :func:`cell_origin` and :func:`canvas_size` are public so that callers (and tests) can find a cell
in a ranked list. Attack triptychs are drawn by :mod:`reid.evaluation.triptych`.
"""

from __future__ import annotations

import io
import json
import logging
import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import cv2
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from reid.data.io import save_picture
from reid.evaluation.distances import FeatureDistances
from reid.evaluation.drawing import (
    BACKGROUND_COLOR,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    LegendEntry,
    StripLayout,
    camera_label,
    compose_with_legend,
    legend_height,
    legend_min_width,
)
from reid.evaluation.protocol import RankResult, as_numpy
from reid.evaluation.rank import evaluate_features, evaluate_rank
from reid.utils.errors import ReIDError
from reid.utils.fsio import atomic_write_bytes

logger = logging.getLogger("reid.evaluation")

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
    return save_figure(fig, path, format="png", metadata={"Software": None})


def save_figure(fig: Figure, path: str | Path, **savefig_kwargs) -> Path:
    """Render a matplotlib figure in memory and write it atomically (a full disk is one clear message)."""
    buffer = io.BytesIO()
    savefig_kwargs.setdefault("format", Path(path).suffix.lstrip(".") or "png")
    fig.savefig(buffer, **savefig_kwargs)
    return atomic_write_bytes(path, buffer.getvalue())


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
    dist = as_numpy(distmat).astype(np.float32, copy=False)

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
    q_pids, g_pids, q_camids, g_camids = (as_numpy(a) for a in (q_pids, g_pids, q_camids, g_camids))
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
        written.append(save_picture(file, picture, "ranked list", _JPEG_PARAMS))
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
        ap = as_numpy(ap).astype(float)
        candidates = np.arange(len(ap)) if query_indices is None else as_numpy(query_indices).astype(int)
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
