"""Drawing tiles of images with captions, frames and legends (OpenCV): the primitives of every picture.

Tiles are laid out by :class:`StripLayout`: every caption line is measured with ``cv2.getTextSize`` and the
columns are widened (up to :data:`MAX_COLUMN_WIDTH`) or the font shrunk so that no caption leaves its column;
ranked lists (:mod:`reid.evaluation.visualize`), search results (:mod:`reid.export.search_vis`) and the report
use them. Cameras are written as in the file names, 1-based (``c1`` is camera id 0).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

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

FONT = cv2.FONT_HERSHEY_SIMPLEX


# ------------------------------------------------------------------------------------ tile layout
def camera_label(camid: int) -> str:
    """A 0-based camera id written as in the file names: ``c1`` for camera 0; ``c?`` when unknown (< 0)."""
    camid = int(camid)
    return f"c{camid + 1}" if camid >= 0 else "c?"


def text_width(text: str, scale: float = CAPTION_SCALE) -> int:
    """Width in pixels of ``text`` drawn with the captions' font at ``scale``."""
    return cv2.getTextSize(text, FONT, scale, 1)[0][0]


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
            cv2.putText(canvas, text, (left, y1 - 5), FONT, scale, TEXT_COLOR, 1, cv2.LINE_AA)


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
            cv2.putText(canvas, label, (x, y + SWATCH - 3), FONT, LEGEND_SCALE, TEXT_COLOR, 1, cv2.LINE_AA)


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
        cv2.putText(cell, name[i:i + per_line], (2, 14 + 12 * (i // per_line)), FONT, 0.3, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return cell
