"""Drawing search results: one strip per query (the query, then its top-k with distances), stacked.

The cell layout and colours are those of the evaluator's ranked lists (:mod:`reid.evaluation.visualize`).
When the query's and a match's file names both follow a dataset convention, the match is framed in
green (same identity) or red (another one); otherwise in grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from reid.evaluation.visualize import (
    BACKGROUND_COLOR,
    CELL_HEIGHT,
    CELL_WIDTH,
    FRAME,
    MATCH_COLOR,
    MISMATCH_COLOR,
    PLACEHOLDER_COLOR,
    QUERY_COLOR,
    TEXT_COLOR,
    canvas_size,
    cell_origin,
)
from reid.export.image_files import UNKNOWN, parse_identity
from reid.export.search import SearchResult
from reid.utils.errors import ReIDError

_FONT = cv2.FONT_HERSHEY_SIMPLEX
_NAME_CHARS = 11  # characters of a file name that fit under a cell


def draw_search_results(results: Sequence[SearchResult], path: str | Path) -> Path:
    """Write all strips into one image at ``path`` (any OpenCV format: .jpg, .png)."""
    if not results:
        raise ReIDError(f"No search results to draw into {path}.")
    topk = max(len(r.matches) for r in results)
    strip_height, width = canvas_size(topk)
    canvas = np.full((strip_height * len(results), width, 3), BACKGROUND_COLOR, np.uint8)
    for row, result in enumerate(results):
        strip = canvas[row * strip_height:(row + 1) * strip_height]
        query_pid = parse_identity(result.query)[0]
        _draw_cell(strip, 0, result.query, QUERY_COLOR, "query", result.query.name)
        for position, (match, distance) in enumerate(zip(result.matches, result.distances), start=1):
            match_pid = parse_identity(match)[0]
            known = UNKNOWN not in (query_pid, match_pid)
            color = (MATCH_COLOR if match_pid == query_pid else MISMATCH_COLOR) if known else PLACEHOLDER_COLOR
            _draw_cell(strip, position, match, color, f"{position}: {distance:.3f}", match.name)
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        written = cv2.imwrite(str(path), canvas)
    except (OSError, cv2.error):  # cv2 raises for an unknown extension, returns False for an unwritable file
        written = False
    if not written:
        raise ReIDError(f"Could not write {path}: use a .jpg or .png name in a writable folder.")
    return path


def _draw_cell(strip: np.ndarray, position: int, image_path: Path, color: tuple, line1: str, line2: str) -> None:
    x, y = cell_origin(position)
    strip[y:y + CELL_HEIGHT, x:x + CELL_WIDTH] = color
    image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)  # readable: features were extracted from it
    inner = (CELL_WIDTH - 2 * FRAME, CELL_HEIGHT - 2 * FRAME)
    strip[y + FRAME:y + CELL_HEIGHT - FRAME, x + FRAME:x + CELL_WIDTH - FRAME] = cv2.resize(
        image, inner, interpolation=cv2.INTER_AREA)
    for i, text in enumerate((line1, line2[:_NAME_CHARS])):
        cv2.putText(strip, text, (x, y + CELL_HEIGHT + 14 + 14 * i), _FONT, 0.38, TEXT_COLOR, 1, cv2.LINE_AA)
