"""Drawing search results: one strip per query (the query, then its top-k with distances), stacked.

The cells are drawn by the evaluator's ranked-list code (:mod:`reid.evaluation.visualize`): same layout
and colours, and an image that cannot be read (deleted or replaced since its features were extracted)
becomes a grey placeholder naming the file instead of stopping the drawing. When the query's and a
match's file names both follow a dataset convention, the match is framed in green (same identity) or red
(another one); otherwise in grey.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from reid.evaluation.visualize import (
    BACKGROUND_COLOR,
    MATCH_COLOR,
    MISMATCH_COLOR,
    PLACEHOLDER_COLOR,
    QUERY_COLOR,
    canvas_size,
)
from reid.evaluation.visualize import draw_cell  # the ranked lists' cell, placeholder included
from reid.export.image_files import UNKNOWN, check_writable_file, parse_identity
from reid.export.search import SearchResult
from reid.utils.errors import ReIDError

_NAME_CHARS = 11  # characters of a file name that fit under a cell
PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")


def check_picture_path(path: str | Path) -> Path:
    """``path`` if a picture can be written there (.jpg/.jpeg/.png, in a folder that exists or can be made and
    is writable); a ReIDError otherwise. Run it before the work whose results it will hold."""
    path = Path(path)
    if path.suffix.lower() not in PICTURE_SUFFIXES or path.is_dir():
        raise ReIDError(f"Cannot draw into {path}: give a file name ending in {', '.join(PICTURE_SUFFIXES)}.")
    return check_writable_file(path)


def draw_search_results(results: Sequence[SearchResult], path: str | Path) -> Path:
    """Write all strips into one image at ``path`` (any OpenCV format: .jpg, .png)."""
    path = check_picture_path(path)
    if not results:
        raise ReIDError(f"No search results to draw into {path}.")
    topk = max(len(r.matches) for r in results)
    strip_height, width = canvas_size(topk)
    canvas = np.full((strip_height * len(results), width, 3), BACKGROUND_COLOR, np.uint8)
    for row, result in enumerate(results):
        strip = canvas[row * strip_height:(row + 1) * strip_height]
        query_pid = parse_identity(result.query)[0]
        draw_cell(strip, 0, str(result.query), QUERY_COLOR, "query", result.query.name[:_NAME_CHARS])
        for position, (match, distance) in enumerate(zip(result.matches, result.distances), start=1):
            match_pid = parse_identity(match)[0]
            known = UNKNOWN not in (query_pid, match_pid)
            color = (MATCH_COLOR if match_pid == query_pid else MISMATCH_COLOR) if known else PLACEHOLDER_COLOR
            draw_cell(strip, position, str(match), color, f"{position}: {distance:.3f}", match.name[:_NAME_CHARS])
    try:
        written = cv2.imwrite(str(path), canvas)
    except (OSError, cv2.error):  # cv2 raises for an unknown extension, returns False for an unwritable file
        written = False
    if not written:
        raise ReIDError(f"Could not write {path}: use a .jpg or .png name in a writable folder.")
    return path
