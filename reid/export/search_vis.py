"""Drawing search results: one strip per query (the query, then its top-k with distances), stacked, with a legend.

Tiles are laid out by the evaluator's ranked-list code (:class:`reid.evaluation.visualize.StripLayout`):
every caption is measured and the columns widened (or the font shrunk) so that each tile's full file
name, identity and camera fit under it, one line each, never running into a neighbour. An image that
cannot be read (deleted or replaced since its features were extracted) becomes a grey placeholder naming
the file instead of stopping the drawing. When the query's and a match's file names both follow a dataset
convention, the match is framed in green (same identity) or red (another one); otherwise in grey, and the
legend under the strips says so. Cameras are written as in the file names (``c1`` is camera id 0).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reid.data.io import save_picture
from reid.evaluation.drawing import (
    BACKGROUND_COLOR,
    MATCH_COLOR,
    MISMATCH_COLOR,
    QUERY_COLOR,
    UNKNOWN_COLOR,
    LegendEntry,
    StripLayout,
    camera_label,
    compose_with_legend,
)
from reid.export.image_files import UNKNOWN, check_writable_file, parse_identity
from reid.export.search import SearchResult
from reid.utils.errors import ReIDError

PICTURE_SUFFIXES = (".jpg", ".jpeg", ".png")
SEARCH_LEGEND: list[LegendEntry] = [
    (QUERY_COLOR, "query"),
    (MATCH_COLOR, "same identity"),
    (MISMATCH_COLOR, "other identity"),
    (UNKNOWN_COLOR, "identity unknown (name follows no Market/Duke/MSMT17 convention) or junk"),
    (None, "#rank, d=distance; cN: camera N as in file names"),
]


def check_picture_path(path: str | Path) -> Path:
    """``path`` if a picture can be written there (.jpg/.jpeg/.png, in a folder that exists or can be made and
    is writable); a ReIDError otherwise. Run it before the work whose results it will hold."""
    path = Path(path)
    if path.suffix.lower() not in PICTURE_SUFFIXES or path.is_dir():
        raise ReIDError(f"Cannot draw into {path}: give a file name ending in {', '.join(PICTURE_SUFFIXES)}.")
    return check_writable_file(path)


def identity_caption(path: str | Path) -> str:
    """``id 2 c1`` from a file name that follows a dataset convention, ``junk c3`` for Market's junk
    (identity -1), ``id ? c?`` otherwise."""
    pid, camid = parse_identity(path)
    if pid == UNKNOWN:
        return f"junk {camera_label(camid)}" if camid != UNKNOWN else "id ? c?"
    return f"id {pid} {camera_label(camid)}"


def tile_captions(result: SearchResult) -> list[list[str]]:
    """The caption lines of each tile of ``result``'s strip: the query's, then each match's."""
    captions = [["query", identity_caption(result.query), result.query.name]]
    for position, (match, distance) in enumerate(zip(result.matches, result.distances), start=1):
        captions.append([f"#{position} d={distance:.3f}", identity_caption(match), Path(match).name])
    return captions


def search_layout(results: Sequence[SearchResult]) -> StripLayout:
    """The layout shared by all strips of ``results``: columns wide enough for every caption."""
    captions = [lines for result in results for lines in tile_captions(result)]
    return StripLayout.fit(captions, positions=1 + max(len(r.matches) for r in results))


def frame_color(query: str | Path, match: str | Path) -> tuple[int, int, int]:
    """Green when both names carry the same identity, red for different ones, grey when either is unknown
    or junk."""
    query_pid, match_pid = parse_identity(query)[0], parse_identity(match)[0]
    if UNKNOWN in (query_pid, match_pid):
        return UNKNOWN_COLOR
    return MATCH_COLOR if match_pid == query_pid else MISMATCH_COLOR


def render_search_results(results: Sequence[SearchResult]) -> np.ndarray:
    """The picture of :func:`draw_search_results` as a BGR array (strips, then the legend)."""
    if not results:
        raise ReIDError("No search results to draw.")
    layout = search_layout(results)
    strips = []
    for result in results:
        strip = np.full((layout.height, layout.width, 3), BACKGROUND_COLOR, np.uint8)
        captions = tile_captions(result)
        layout.draw(strip, 0, str(result.query), QUERY_COLOR, captions[0])
        for position, match in enumerate(result.matches, start=1):
            layout.draw(strip, position, str(match), frame_color(result.query, match), captions[position])
        strips.append(strip)
    return compose_with_legend(strips, SEARCH_LEGEND)


def draw_search_results(results: Sequence[SearchResult], path: str | Path) -> Path:
    """Write all strips and their legend into one image at ``path`` (.jpg, .jpeg or .png)."""
    path = check_picture_path(path)
    if not results:
        raise ReIDError(f"No search results to draw into {path}.")
    return save_picture(path, render_search_results(results), "search results picture")
