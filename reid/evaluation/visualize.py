"""Pictures of ReID results: CMC curves (matplotlib, Agg) and ranked lists of queries (OpenCV).

A ranked list is one image per query: the query on the left, framed in :data:`QUERY_COLOR` with its AP,
then its top-k gallery matches under the standard protocol (gallery images of the query's identity taken
by the query's camera are left out, as in the evaluator), each framed in :data:`MATCH_COLOR` or
:data:`MISMATCH_COLOR` with its distance underneath. The layout constants and :func:`cell_origin` are
public so that callers (and tests) can find a cell in the picture.
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

from reid.evaluation.rank import METRICS, FeatureDistances, RankResult, evaluate_features, evaluate_rank
from reid.utils.errors import ReIDError

logger = logging.getLogger("reid.evaluation")

# Ranked-list layout, in pixels. A cell is the frame plus the image inside it.
CELL_HEIGHT = 128
CELL_WIDTH = 64
FRAME = 5  # frame thickness, inside the cell
MARGIN = 10  # around the picture and between cells
QUERY_GAP = 20  # extra space separating the query from its results
TEXT_HEIGHT = 34  # two caption lines under each cell

# BGR colours (OpenCV order).
QUERY_COLOR = (200, 120, 40)  # blue-ish, neutral
MATCH_COLOR = (0, 190, 0)
MISMATCH_COLOR = (0, 0, 220)
PLACEHOLDER_COLOR = (128, 128, 128)
BACKGROUND_COLOR = (255, 255, 255)
TEXT_COLOR = (0, 0, 0)

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
    """Draw CMC curves (fractions in [0, 1], index 0 = rank 1) as a PNG; one line per label, R1 in the legend."""
    if not curves:
        raise ReIDError(f"No CMC curve to plot into {path}.")
    if isinstance(max_rank, bool) or not isinstance(max_rank, numbers.Integral) or max_rank < 1:
        raise ReIDError(f"max_rank must be an integer of at least 1, got {max_rank!r}.")
    fig = Figure(figsize=(7, 5), dpi=120)
    FigureCanvasAgg(fig)  # render with Agg whatever backend pyplot may be using
    ax = fig.add_subplot()
    lowest, longest = 100.0, 1
    for label, cmc in curves.items():
        values = 100 * _cmc_values(cmc, f"CMC curve '{label}' for {path}")[:max_rank]
        if values.min() < 0 or values.max() > 100 + 1e-6:
            raise ReIDError(f"CMC curve '{label}' for {path} must be a non-empty list of fractions in [0, 1].")
        lowest, longest = min(lowest, float(values.min())), max(longest, values.size)
        ax.plot(np.arange(1, values.size + 1), values, marker="o", markersize=3, linewidth=1.8,
                label=f"{label} (R1 {values[0]:.1f}%)")
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


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
def cell_origin(position: int) -> tuple[int, int]:
    """Top-left ``(x, y)`` of a cell: position 0 is the query, 1..k the ranked gallery results."""
    x = MARGIN + position * (CELL_WIDTH + MARGIN) + (QUERY_GAP if position > 0 else 0)
    return x, MARGIN


def canvas_size(topk: int) -> tuple[int, int]:
    """``(height, width)`` of a ranked-list picture with ``topk`` results."""
    return 2 * MARGIN + CELL_HEIGHT + TEXT_HEIGHT, cell_origin(topk)[0] + CELL_WIDTH + MARGIN


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
    if metric not in METRICS:
        raise ReIDError(f"Unknown metric '{metric}' for ranked lists: use one of {', '.join(METRICS)}.")
    distances = FeatureDistances(qf, gf, metric, normalize)

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


def _render(q_path: str, q_ap: float, q_pid, q_camid, results: list, topk: int) -> np.ndarray:
    canvas = np.full((*canvas_size(topk), 3), BACKGROUND_COLOR, np.uint8)
    draw_cell(canvas, 0, q_path, QUERY_COLOR, f"AP {100 * q_ap:.1f}%", f"q id{q_pid} c{q_camid}")
    for position, (path, dist, is_match, pid, camid) in enumerate(results, start=1):
        color = MATCH_COLOR if is_match else MISMATCH_COLOR
        draw_cell(canvas, position, path, color, f"{dist:.3f}", f"id{pid} c{camid}")
    return canvas


def draw_cell(canvas: np.ndarray, position: int, path: str, color: tuple, line1: str, line2: str) -> None:
    """Draw one framed image with two lines of text into ``canvas``; an unreadable image becomes a placeholder."""
    x, y = cell_origin(position)
    canvas[y:y + CELL_HEIGHT, x:x + CELL_WIDTH] = color
    inner = (CELL_HEIGHT - 2 * FRAME, CELL_WIDTH - 2 * FRAME)
    canvas[y + FRAME:y + CELL_HEIGHT - FRAME, x + FRAME:x + CELL_WIDTH - FRAME] = _read_cell_image(path, inner)
    for i, text in enumerate((line1, line2)):
        cv2.putText(canvas, text, (x, y + CELL_HEIGHT + 14 + 14 * i), _FONT, 0.38, TEXT_COLOR, 1, cv2.LINE_AA)


def _read_cell_image(path: str, size: tuple[int, int]) -> np.ndarray:
    """The image resized to ``size`` (h, w), or a grey placeholder naming the file when it cannot be read."""
    height, width = size
    image = cv2.imread(str(path), cv2.IMREAD_COLOR) if Path(path).is_file() else None
    if image is not None:
        return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    logger.warning(f"Cannot read image {path}; drawing a placeholder in the ranked list.")
    cell = np.full((height, width, 3), PLACEHOLDER_COLOR, np.uint8)
    name = Path(path).name
    per_line = 8  # characters that fit the cell width at this font size
    for i in range(0, min(len(name), 6 * per_line), per_line):
        cv2.putText(cell, name[i:i + per_line], (2, 14 + 12 * (i // per_line)), _FONT, 0.3, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return cell


def _to_numpy(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
