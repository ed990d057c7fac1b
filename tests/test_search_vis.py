"""Search-result pictures: full captions inside their tiles, frame colours, the legend."""

from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.evaluation import drawing
from reid.export import search_vis
from reid.export.search import SearchResult
from reid.utils.errors import ReIDError

NAMES = ["0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.jpg", "0007_c2s2_001000_02.jpg", "-1_c3s2_000100_00.jpg",
         "IMG_2024.jpg", "0001_c2_f0046182.jpg"]


@pytest.fixture
def images(tmp_path) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for name in NAMES:
        path = tmp_path / name
        cv2.imwrite(str(path), rng.integers(0, 255, (96, 48, 3), dtype=np.uint8))
        paths.append(path)
    return paths


def _result(images: list[Path]) -> SearchResult:
    return SearchResult(images[0], images[1:], [0.1, 0.2, 0.3, 0.45, 0.5])


def test_captions_hold_full_names_identity_and_camera(images):
    captions = search_vis.tile_captions(_result(images))
    assert captions[0] == ["query", "id 2 c1", "0002_c1s1_000451_03.jpg"]
    assert captions[1] == ["#1 d=0.100", "id 2 c3", "0002_c3s1_000551_01.jpg"]
    assert captions[3] == ["#3 d=0.300", "junk c3", "-1_c3s2_000100_00.jpg"]
    assert captions[4] == ["#4 d=0.450", "id ? c?", "IMG_2024.jpg"]
    layout = search_vis.search_layout([_result(images)])
    for lines in captions:  # every caption fits its column at the normal size: nothing cut, nothing shrunk
        for line in lines:
            x0, _, x1, _ = layout.caption_box(0, 0)
            assert drawing.fit_text(line, x1 - x0) == (line, drawing.CAPTION_SCALE)


def test_tiles_are_framed_by_identity_and_nothing_overlaps(images, tmp_path):
    results = [_result(images), SearchResult(images[4], images[:2], [0.25, 0.75])]
    picture = cv2.imread(str(search_vis.draw_search_results(results, tmp_path / "strips.png")))
    layout = search_vis.search_layout(results)
    assert picture.shape[0] > 2 * layout.height and picture.shape[1] >= layout.width

    def frame(row: int, position: int) -> tuple:
        x, y = layout.cell_origin(position)
        return tuple(int(c) for c in picture[row * layout.height + y + drawing.CELL_HEIGHT // 2, x + 1])

    assert frame(0, 0) == drawing.QUERY_COLOR
    assert [frame(0, p) for p in range(1, 6)] == [drawing.MATCH_COLOR, drawing.MISMATCH_COLOR, drawing.UNKNOWN_COLOR,
                                                  drawing.UNKNOWN_COLOR, drawing.MISMATCH_COLOR]
    # the query's name is unknown
    assert [frame(1, p) for p in (1, 2)] == [drawing.UNKNOWN_COLOR, drawing.UNKNOWN_COLOR]
    for row in range(2):
        strip = picture[row * layout.height:(row + 1) * layout.height]
        spans = [layout.column_span(p) for p in range(6)]
        for (_, end), (start, _) in zip(spans, spans[1:]):  # text never crosses into the gap between tiles
            assert (strip[:, end:start] == 255).all()
        x0, _ = spans[0]
        assert (strip[:, :x0] == 255).all()
        for position, (x0, x1) in enumerate(spans[:1 + len(results[row].matches)]):
            for line in range(3):  # each caption line has ink in its own box, none outside the boxes
                bx0, by0, bx1, by1 = layout.caption_box(position, line)
                assert (strip[by0:by1, bx0:bx1] < 128).any(), (row, position, line)
            below_cell = strip[drawing.MARGIN + drawing.CELL_HEIGHT:, x0:x1].copy()
            for line in range(3):
                bx0, by0, bx1, by1 = layout.caption_box(position, line)
                top = drawing.MARGIN + drawing.CELL_HEIGHT
                below_cell[by0 - top:by1 - top, bx0 - x0:bx1 - x0] = 255
            assert (below_cell == 255).all()


def test_legend_explains_every_frame_colour(images, tmp_path):
    picture = search_vis.render_search_results([_result(images)])
    layout = search_vis.search_layout([_result(images)])
    legend = picture[layout.height:].reshape(-1, 3)
    for color in (drawing.QUERY_COLOR, drawing.MATCH_COLOR, drawing.MISMATCH_COLOR, drawing.UNKNOWN_COLOR):
        assert (legend == np.array(color, np.uint8)).all(axis=1).sum() > 20, color
    assert any("unknown" in label for color, label in search_vis.SEARCH_LEGEND if color == drawing.UNKNOWN_COLOR)


def test_very_long_names_keep_their_ends_and_stay_in_the_tile(images, tmp_path):
    long_name = tmp_path / ("0003_c4s1_" + "x" * 120 + "_end.jpg")
    cv2.imwrite(str(long_name), np.zeros((64, 32, 3), np.uint8))
    result = SearchResult(images[0], [long_name], [0.3])
    layout = search_vis.search_layout([result])
    assert layout.column_width == drawing.MAX_COLUMN_WIDTH
    picture = search_vis.render_search_results([result])
    _, end = layout.column_span(1)
    assert (picture[:layout.height, end:] == 255).all()
    with pytest.raises(ReIDError, match="No search results"):
        search_vis.render_search_results([])
