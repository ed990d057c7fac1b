"""CMC plots, ranked-list pictures (selection by AP, protocol, frame colours, captions, legend), attack triptychs
and tools/plot_cmc.py."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.cli import plot_cmc as plot_cmc_tool
from reid.evaluation import drawing, triptych, visualize as vis
from reid.utils.errors import ReIDError

ROOT = Path(__file__).resolve().parents[1]

# A tiny problem whose rankings are known by construction.
#   q0 (pid 1, cam 0): g0 is the same identity from the same camera (excluded, though nearest); g1 is rank 1 -> AP 1
#   q1 (pid 2, cam 0): a false match g3 first, the true match g2 second -> AP 1/2
#   q2 (pid 3, cam 1): its true match g3 comes last of 9 -> AP 1/9, the worst
#   q3 (pid 9, cam 0): no true match in the gallery -> never drawn
Q_PIDS, Q_CAMS = [1, 2, 3, 9], [0, 0, 1, 0]
G_PIDS, G_CAMS = [1, 1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 1, 0, 1, 1, 1, 1, 1]
EXCLUDED_COLOR = (0, 255, 255)  # yellow, only g0 has it
G1_COLOR = (255, 0, 255)


def _distmat() -> np.ndarray:
    dist = 0.5 + 0.01 * np.tile(np.arange(9), (4, 1))
    dist[0, 0], dist[0, 1] = 0.0, 0.1
    dist[1, 3], dist[1, 2] = 0.05, 0.2
    dist[2, 3] = 0.99
    return dist


@pytest.fixture
def problem(tmp_path):
    """Query and gallery image files, solid colours, written as PNG so their colours survive exactly."""
    rng = np.random.default_rng(0)
    colors = {"g0": EXCLUDED_COLOR, "g1": G1_COLOR}

    def write(name: str) -> str:
        color = colors.get(name, tuple(int(c) for c in rng.integers(60, 200, 3)))
        path = tmp_path / "images" / f"{name}.png"
        path.parent.mkdir(exist_ok=True)
        cv2.imwrite(str(path), np.full((96, 48, 3), color, np.uint8))  # not the cell size: resizing is exercised
        return str(path)

    q_paths = [write(f"q{i}") for i in range(4)]
    g_paths = [write(f"g{i}") for i in range(9)]
    return q_paths, g_paths, np.array(Q_PIDS), np.array(G_PIDS), np.array(Q_CAMS), np.array(G_CAMS)


def _frame_pixel(image: np.ndarray, position: int) -> np.ndarray:
    x, y = vis.cell_origin(position)
    return image[y + drawing.CELL_HEIGHT // 2, x + drawing.FRAME // 2].astype(int)


def _inner_pixel(image: np.ndarray, position: int) -> np.ndarray:
    x, y = vis.cell_origin(position)
    return image[y + drawing.CELL_HEIGHT // 2, x + drawing.CELL_WIDTH // 2].astype(int)


def _close(pixel: np.ndarray, color) -> bool:
    return bool(np.abs(pixel - np.array(color)).max() <= 30)  # JPEG tolerance


def test_plot_cmc_writes_png(tmp_path):
    curves = {"BoT": np.linspace(0.8, 0.99, 50), "LFM": [0.85 + 0.002 * i for i in range(50)]}
    path = vis.plot_cmc(curves, tmp_path / "sub" / "cmc.png", title="market1501", max_rank=20)
    image = cv2.imread(str(path))
    assert image is not None and image.shape == (600, 840, 3)
    assert image.std() > 10  # something was drawn
    with pytest.raises(ReIDError, match="LFM"):
        vis.plot_cmc({"LFM": [85.0, 90.0]}, tmp_path / "bad.png")  # percentages, not fractions


def test_worst_and_best_ordering_and_frames(problem, tmp_path):
    worst = vis.save_ranked_lists(_distmat(), *problem, tmp_path / "worst", num_queries=10, mode="worst", topk=5)
    assert [p.name for p in worst] == ["q001_q2.jpg", "q002_q1.jpg", "q003_q0.jpg"]  # q3 has no match
    images = [cv2.imread(str(p)) for p in worst]
    assert all(im is not None and im.shape[:2] == vis.canvas_size(5) for im in images)
    q2, q1, q0 = images
    assert _close(_frame_pixel(q2, 0), drawing.QUERY_COLOR)
    assert _close(_frame_pixel(q2, 1), drawing.MISMATCH_COLOR)
    assert _close(_frame_pixel(q1, 1), drawing.MISMATCH_COLOR) and _close(_frame_pixel(q1, 2), drawing.MATCH_COLOR)
    # q0: the nearest gallery image (same pid, same camera) is excluded; rank 1 is g1, a true match.
    assert _close(_frame_pixel(q0, 1), drawing.MATCH_COLOR)
    assert _close(_inner_pixel(q0, 1), G1_COLOR)
    assert not any(_close(_inner_pixel(q0, k), EXCLUDED_COLOR) for k in range(1, 6))

    best = vis.save_ranked_lists(torch.tensor(_distmat()), *problem, tmp_path / "best", num_queries=2, mode="best")
    assert [p.name for p in best] == ["q001_q0.jpg", "q002_q1.jpg"]
    assert cv2.imread(str(best[0])).shape[:2] == vis.canvas_size(10)


def test_given_ap_decides_the_order(problem, tmp_path):
    """The evaluator's AP (aligned with query_indices) is used as given, not recomputed."""
    files = vis.save_ranked_lists(_distmat(), *problem, tmp_path, num_queries=3, mode="worst",
                                  ap=np.array([0.1, 0.9, 0.5]), query_indices=torch.tensor([0, 1, 2]))
    assert [p.name for p in files] == ["q001_q0.jpg", "q002_q2.jpg", "q003_q1.jpg"]


def test_random_mode_is_seeded_and_skips_queries_without_match(problem, tmp_path):
    names = [[p.name[5:] for p in vis.save_ranked_lists(_distmat(), *problem, tmp_path / f"r{i}",
                                                        num_queries=2, mode="random", seed=seed)]
             for i, seed in enumerate((3, 3))]
    assert names[0] == names[1] and len(names[0]) == 2
    everything = vis.save_ranked_lists(_distmat(), *problem, tmp_path / "all", num_queries=10, mode="random")
    assert sorted(p.name[5:] for p in everything) == ["q0.jpg", "q1.jpg", "q2.jpg"]
    with pytest.raises(ReIDError, match="mode"):
        vis.save_ranked_lists(_distmat(), *problem, tmp_path, mode="median")


def test_missing_image_draws_placeholder(problem, tmp_path, caplog):
    q_paths, g_paths, *labels = problem
    g_paths = list(g_paths)
    g_paths[1] = str(tmp_path / "gone.jpg")
    files = vis.save_ranked_lists(_distmat(), q_paths, g_paths, *labels, tmp_path / "out", num_queries=1,
                                  mode="best", topk=3)
    image = cv2.imread(str(files[0]))
    assert _close(_frame_pixel(image, 1), drawing.MATCH_COLOR)
    x, y = vis.cell_origin(1)
    d = drawing
    inner = image[y + d.FRAME + 40:y + d.CELL_HEIGHT - d.FRAME - 2, x + d.FRAME:x + d.CELL_WIDTH - d.FRAME]
    assert _close(np.median(inner.reshape(-1, 3), axis=0), drawing.PLACEHOLDER_COLOR)
    assert "gone.jpg" in caplog.text


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_features_variant_matches_distmat(problem, tmp_path, metric):
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(4, 16, generator=gen), torch.randn(9, 16, generator=gen)
    if metric == "cosine":
        n = torch.nn.functional.normalize
        dist = 1 - n(qf, dim=1) @ n(gf, dim=1).T
    else:
        dist = torch.cdist(qf, gf)
    from_dist = vis.save_ranked_lists(dist, *problem, tmp_path / "d", num_queries=3, mode="worst", topk=4)
    from_feat = vis.save_ranked_lists_from_features(qf, gf, *problem, tmp_path / "f", num_queries=3, mode="worst",
                                                    topk=4, metric=metric)
    assert [p.name for p in from_dist] == [p.name for p in from_feat] and len(from_dist) == 3
    for a, b in zip(from_dist, from_feat):
        assert np.array_equal(cv2.imread(str(a)), cv2.imread(str(b)))


def _write_run(run_dir: Path, datasets: dict) -> Path:
    run_dir.mkdir(parents=True)
    results = {name: {"R1": cmc[0], "R5": cmc[4], "R10": cmc[9], "mAP": 0.5, "mINP": 0.2, "cmc": cmc}
               for name, cmc in datasets.items()}
    (run_dir / "results.json").write_text(json.dumps({"results": results, "weights": "best.pth"}))
    return run_dir


def test_plot_cmc_tool_compares_runs(tmp_path):
    curve = [0.6 + 0.01 * i for i in range(30)]
    bot = _write_run(tmp_path / "bot_market", {"market1501": curve, "dukemtmc": curve})
    lfm = _write_run(tmp_path / "lfm_market", {"market1501": [v + 0.05 for v in curve]})
    plot_cmc_tool.main([str(bot), str(lfm), "--output-dir", str(tmp_path / "plots")])
    written = sorted(p.name for p in (tmp_path / "plots").iterdir())
    assert written == ["cmc_dukemtmc.png", "cmc_market1501.png"]
    assert cv2.imread(str(tmp_path / "plots" / "cmc_market1501.png")) is not None

    plot_cmc_tool.main([str(bot), str(lfm), "-o", str(tmp_path / "one"), "--dataset", "market1501", "--max-rank", "5"])
    assert [p.name for p in (tmp_path / "one").iterdir()] == ["cmc_market1501.png"]
    with pytest.raises(ReIDError, match="dukemtmc"):  # lfm has no dukemtmc results
        plot_cmc_tool.main([str(bot), str(lfm), "--dataset", "dukemtmc"])


def test_plot_cmc_tool_errors(tmp_path):
    no_cmc = tmp_path / "no_cmc"
    no_cmc.mkdir()
    (no_cmc / "results.json").write_text(json.dumps({"results": {"market1501": {"R1": 0.9}}}))
    with pytest.raises(ReIDError, match="cmc"):
        plot_cmc_tool.main([str(no_cmc)])

    empty = tmp_path / "empty_run"
    empty.mkdir()
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plot_cmc.py"), str(empty)], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    assert proc.returncode == 2
    assert "results.json" in proc.stderr and "empty_run" in proc.stderr and "Traceback" not in proc.stderr


def test_non_numeric_cmc_is_a_user_error(tmp_path):
    run = tmp_path / "bad_cmc"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"results": {"market1501": {"R1": 0.9, "cmc": ["high", "low"]}}}))
    with pytest.raises(ReIDError, match="market1501"):
        plot_cmc_tool.main([str(run), "-o", str(tmp_path / "plots")])
    with pytest.raises(ReIDError, match="fractions"):
        vis.plot_cmc({"run": [[0.5, 0.6], [0.7, 0.8]]}, tmp_path / "nested.png")
    with pytest.raises(ReIDError, match="max_rank"):
        vis.plot_cmc({"run": [0.5, 0.6]}, tmp_path / "x.png", max_rank=None)


def test_cmc_axis_ends_with_the_longest_curve(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    limits = []
    original = Axes.set_xlim
    monkeypatch.setattr(Axes, "set_xlim", lambda self, *args, **kw: (limits.append(args), original(self, *args, **kw)))
    vis.plot_cmc({"short": [0.5, 0.7, 0.9], "shorter": [0.6, 0.8]}, tmp_path / "short.png", max_rank=20)
    vis.plot_cmc({"long": np.linspace(0.5, 1.0, 50)}, tmp_path / "long.png", max_rank=20)
    assert [args for args in limits if len(args) == 2] == [(0.5, 3.5), (0.5, 20.5)]  # ours, not autoscaling's


def test_mismatched_inputs_are_user_errors(problem, tmp_path):
    with pytest.raises(ReIDError, match="query_indices"):
        vis.save_ranked_lists(_distmat(), *problem, tmp_path, ap=np.array([0.1, 0.9]), query_indices=[0, 1, 2])
    q_paths, g_paths, *labels = problem
    with pytest.raises(ReIDError, match="same query/gallery split"):
        vis.save_ranked_lists(_distmat(), q_paths[:3], g_paths, *labels, tmp_path)


def test_features_variant_ranks_and_scores_as_the_evaluator(problem, tmp_path):
    # Exact duplicates among non-integer gallery features: the drawn order and the AP used to choose the
    # queries are the evaluator's (same distances bit for bit), ties going to the lower gallery index.
    from reid.evaluation.rank import evaluate_features

    rng = np.random.default_rng(3)
    base = rng.standard_normal((3, 16)).astype(np.float32)
    gf = base[[0, 1, 0, 2, 1, 0, 2, 1, 0]]
    qf = base[[0, 1, 2, 1]] + 0.01 * rng.standard_normal((4, 16)).astype(np.float32)
    q_paths, g_paths, q_pids, g_pids, q_cams, g_cams = problem
    result = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric="euclidean", max_rank=1)
    files = vis.save_ranked_lists_from_features(qf, gf, *problem, tmp_path, num_queries=3, mode="worst",
                                                metric="euclidean")
    expected = result.query_indices[np.argsort(result.AP, kind="stable")]
    assert [p.name for p in files] == [f"q{n:03d}_q{qi}.jpg" for n, qi in enumerate(expected, start=1)]


# ---------------------------------------------------------------------------- captions and legends
def _is_background(region: np.ndarray, tolerance: int = 40) -> bool:
    return bool((np.abs(region.astype(int) - 255) <= tolerance).all())  # JPEG ringing stays near white


def test_ranked_list_captions_stay_in_their_columns_and_legend_is_drawn(problem, tmp_path):
    (path,) = vis.save_ranked_lists(_distmat(), *problem, tmp_path, num_queries=1, mode="worst", topk=5)
    image = cv2.imread(str(path))
    layout = vis.ranked_layout(5)
    assert image.shape[:2] == vis.canvas_size(5) and image.shape[0] > layout.height
    captions_top, captions_bottom = drawing.MARGIN + drawing.CELL_HEIGHT + 2, layout.height
    for position in range(6):
        x0, x1 = layout.column_span(position)
        assert not _is_background(image[captions_top:captions_bottom, x0:x1])  # its captions are drawn
        if position < 5:  # nothing between two columns: no caption runs into its neighbour
            gap_end = layout.column_span(position + 1)[0]
            assert _is_background(image[:captions_bottom, x1:gap_end])
    legend = image[layout.height:].reshape(-1, 3).astype(int)
    for color in (drawing.QUERY_COLOR, drawing.MATCH_COLOR, drawing.MISMATCH_COLOR):
        assert (np.abs(legend - np.array(color)).max(axis=1) <= 30).sum() > 20, color


def test_ranked_captions_use_file_name_cameras_and_labelled_distances():
    captions = vis.ranked_captions(0.25, 7, 0, [(0.1234, 7, 5), (0.5, 3, 1)])
    assert captions == [["AP 25.0%", "id 7 c1"], ["#1 d=0.123", "id 7 c6"], ["#2 d=0.500", "id 3 c2"]]
    assert drawing.camera_label(0) == "c1" and drawing.camera_label(-1) == "c?"


def test_long_captions_shrink_then_lose_their_middle():
    name = "0002_c1s1_000451_03.jpg"
    assert drawing.fit_text(name, 200) == (name, drawing.CAPTION_SCALE)  # fits: full name, normal size
    text, scale = drawing.fit_text(name, 130)
    assert text == name and drawing.MIN_CAPTION_SCALE <= scale < drawing.CAPTION_SCALE
    assert drawing.text_width(text, scale) <= 130
    long_name = "holiday_" * 12 + "17.jpg"
    text, scale = drawing.fit_text(long_name, 120)
    assert "..." in text and text.startswith("holiday") and text.endswith("17.jpg")
    assert drawing.text_width(text, scale) <= 120


def test_cmc_legend_names_the_curve_not_the_method(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    labels = []
    original = Axes.plot

    def plot(self, *args, **kwargs):
        labels.append(kwargs.get("label"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Axes, "plot", plot)
    vis.plot_cmc({"market1501": [0.928, 0.95], "market1501 re-ranked": [0.94, 0.96]}, tmp_path / "cmc.png")
    assert labels == ["market1501: R1 92.8%", "market1501 re-ranked: R1 94.0%"]


# --------------------------------------------------------------------------------- attack triptychs
def test_attack_triptych_is_upscaled_labelled_and_colour_maps_the_difference(tmp_path):
    gen = torch.Generator().manual_seed(0)
    clean = 0.2 + 0.6 * torch.rand(3, 64, 32, generator=gen)  # away from 0 and 1: nothing is clipped
    eps = 8 / 255
    sign = torch.where(torch.rand(3, 64, 32, generator=gen) < 0.5, -1.0, 1.0)
    adversarial = clean + eps * sign
    adversarial[:, :16, :] = clean[:, :16, :]  # the top quarter untouched
    path = triptych.draw_attack_triptych(clean, adversarial, eps, tmp_path / "t.png", attack="pgd",
                                         objective="push_away", ap_before=0.9, ap_after=0.1)
    image = cv2.imread(str(path))
    layout = triptych.TriptychLayout(64, 32)
    assert layout.factor == 4 and layout.panel_height == 256 and image.shape[:2] == (layout.height, layout.width)
    # The clean panel is the image upscaled with nearest neighbour (each pixel a 4x4 block).
    x, y = layout.panel_origin(0)
    expected = np.repeat(np.repeat(triptych._to_bgr8(clean.permute(1, 2, 0).numpy()), 4, axis=0), 4, axis=1)
    assert np.array_equal(image[y:y + 256, x:x + 128], expected)
    # The difference: eps is the top of the colour map (not white), no change is its bottom.
    top = triptych.colorize_difference(np.ones((1, 1)))[0, 0]
    bottom = triptych.colorize_difference(np.zeros((1, 1)))[0, 0]
    x, y = layout.panel_origin(2)
    moved, still = image[y + 64:y + 256, x:x + 128], image[y:y + 64, x:x + 128]
    assert (np.abs(moved.astype(int) - top).max(axis=2) <= 2).mean() > 0.99
    assert (np.abs(still.astype(int) - bottom).max(axis=2) <= 2).all()
    assert not (moved > 240).all()  # not a white panel
    # Labels and title are drawn (dark pixels above the panels), and the colour bar under the difference.
    assert (image[:layout.panels_top] < 100).any()
    bar = image[layout.colorbar_top:layout.colorbar_top + 5, x:x + 128].astype(int)
    assert np.abs(bar[:, 0] - bottom).max() <= 2 and np.abs(bar[:, -1] - top).max() <= 2


def test_ap_of_a_query(problem):
    result = evaluate_rank_of(problem)
    assert triptych.ap_of(result, 0) == pytest.approx(1.0) and triptych.ap_of(result, 1) == pytest.approx(0.5)
    assert triptych.ap_of(result, 3) is None  # no true match: not in the result


def evaluate_rank_of(problem):
    from reid.evaluation import evaluate_rank

    _, _, q_pids, g_pids, q_cams, g_cams = problem
    return evaluate_rank(_distmat(), q_pids, g_pids, q_cams, g_cams)


def test_attack_triptych_scale_and_errors(tmp_path):
    clean = torch.full((3, 8, 4), 0.5)
    adversarial = clean + 0.01
    half = triptych.difference_map(clean, adversarial, eps=0.04)
    assert np.allclose(half, 0.25, atol=1e-5)
    assert np.allclose(triptych.difference_map(clean, adversarial, eps=0.04, scale=50), 0.5, atol=1e-5)
    assert triptych.format_eps(8 / 255) == "8/255" and triptych.format_eps(0.01) == "0.01"
    image = cv2.imread(str(triptych.draw_attack_triptych(clean, adversarial, 0.04, tmp_path / "small.png",
                                                         attack="fgsm", objective="x", ap_before=None, ap_after=0.5)))
    assert image.shape[0] >= 256 and image.shape[1] >= 440  # readable even for a tiny image
    with pytest.raises(ReIDError, match="differ in size"):
        triptych.draw_attack_triptych(clean, clean[:, :4], 0.04, tmp_path / "x.png", attack="a", objective="o",
                                      ap_before=0.5, ap_after=0.5)
    with pytest.raises(ReIDError, match="eps > 0"):
        triptych.difference_map(clean, adversarial, eps=0)
    with pytest.raises(ReIDError, match=r"\(3, H, W\)"):
        triptych.difference_map(clean.permute(1, 2, 0), adversarial.permute(1, 2, 0), eps=0.04)
