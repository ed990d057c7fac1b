"""The evaluation report: its data (metrics, camera pairs, histograms, ranked lists), the self-contained page, the
comparison page, and (slow) the page rendered by a real headless Chromium."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from reid.evaluation import evaluate_features, evaluate_reranked
from reid.evaluation.report import (
    REPORT_DATA,
    REPORT_HTML,
    ReportData,
    build_dataset_report,
    write_comparison_report,
    write_report,
)
from reid.utils.errors import ReIDError

NUM_IDS, NUM_CAMS = 12, 3


@pytest.fixture(scope="module")
def problem(tmp_path_factory) -> dict:
    """Query and gallery image files (Market-style names) with noisy features around one prototype per identity."""
    root = tmp_path_factory.mktemp("report_images")
    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((NUM_IDS + 1, 16))
    colors = rng.integers(30, 220, (NUM_IDS + 1, 3))

    def image(pid: int, cam: int, k: int, split: str) -> str:
        path = root / split / f"{pid:04d}_c{cam + 1}s1_{k:06d}_00.png"
        path.parent.mkdir(exist_ok=True)
        picture = np.full((96, 48, 3), colors[pid], np.uint8)
        picture[:: 6 + cam] = 255
        cv2.imwrite(str(path), picture)
        return str(path)

    query = [(pid, pid % NUM_CAMS, image(pid, pid % NUM_CAMS, 0, "query")) for pid in range(1, NUM_IDS + 1)]
    gallery = [(pid, cam, image(pid, cam, k + 1, "gallery"))
               for pid in range(1, NUM_IDS + 1) for cam in range(NUM_CAMS) for k in range(2)]
    gallery += [(0, k % NUM_CAMS, image(0, k % NUM_CAMS, 100 + k, "gallery")) for k in range(6)]  # distractors
    qf = np.stack([prototypes[p] + 0.8 * rng.standard_normal(16) for p, _, _ in query]).astype(np.float32)
    gf = np.stack([prototypes[p] + 0.8 * rng.standard_normal(16) for p, _, _ in gallery]).astype(np.float32)
    q_pids, q_cams, q_paths = (list(x) for x in zip(*query))
    g_pids, g_cams, g_paths = (list(x) for x in zip(*gallery))
    results = {"plain": evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, max_rank=20)}
    unit = torch.nn.functional.normalize
    results["rerank"] = evaluate_reranked(unit(torch.from_numpy(qf), dim=1), unit(torch.from_numpy(gf), dim=1),
                                          q_pids, g_pids, q_cams, g_cams, max_rank=20)
    return dict(qf=qf, gf=gf, q_pids=np.array(q_pids), g_pids=np.array(g_pids), q_cams=np.array(q_cams),
                g_cams=np.array(g_cams), q_paths=q_paths, g_paths=g_paths, results=results)


def _report(p: dict, name: str = "synthetic_market", **kwargs):
    return build_dataset_report(name, p["qf"], p["gf"], p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"],
                                p["q_paths"], p["g_paths"], p["results"], **kwargs)


class _Page(HTMLParser):
    """Images, tables (as rows of cell texts), classes and links of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.images: list[dict] = []
        self.tables: list[list[list[str]]] = []
        self.classes: list[str] = []
        self.urls: list[str] = []
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.classes.extend((attrs.get("class") or "").split())
        for key in ("src", "href", "action", "data"):
            if key in attrs:
                self.urls.append(attrs[key])
        if tag == "img":
            self.images.append(attrs)
        elif tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def _decode(uri: str) -> np.ndarray:
    match = re.fullmatch(r"data:image/(png|jpeg);base64,([A-Za-z0-9+/=]+)", uri)
    assert match, uri[:60]
    raw = base64.b64decode(match[2], validate=True)
    magic = b"\x89PNG\r\n\x1a\n" if match[1] == "png" else b"\xff\xd8\xff"
    assert raw.startswith(magic)
    picture = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    assert picture is not None and picture.shape[0] > 0 and picture.shape[1] > 0
    return picture


def _pct(value: float) -> str:
    return f"{100 * value:.1f}"


# ----------------------------------------------------------------------------------------- page
def test_page_is_self_contained_and_shows_the_evaluators_numbers(problem, tmp_path):
    data = ReportData("BoT on synthetic_market", [_report(problem, num_queries=3, topk=5)], info={"weights": "w.pth"})
    page_path = write_report(data, tmp_path / "run")
    assert page_path == tmp_path / "run" / REPORT_HTML and (tmp_path / "run" / REPORT_DATA).is_file()
    text = page_path.read_text(encoding="utf-8")
    page = _Page(text)

    # Every picture is inlined and decodes; nothing is fetched from anywhere.
    assert len(page.images) >= 3 + 2 * 3 * 6  # CMC, histogram, ranked lists (query + 5 results)
    for attrs in page.images:
        _decode(attrs["src"])
    assert all(url.startswith("data:") or url.startswith("#") for url in page.urls)
    assert not re.search(r"https?://|<link|<script|@import|url\(", text)

    # The summary table has the RankResult's metrics, plain and re-ranked.
    summary = page.tables[0]
    header = summary[0]
    assert header[:1] == ["dataset"] and header[1:] == ["R1", "R5", "R10", "mAP", "mINP"]
    for key, label in (("plain", "synthetic_market"), ("rerank", "synthetic_market (re-ranked)")):
        result = problem["results"][key]
        row = next(r for r in summary if r[0] == label)
        assert row[1:] == [_pct(result.cmc[0]), _pct(result.cmc[4]), _pct(result.cmc[9]), _pct(result.mAP),
                           _pct(result.mINP)]
    # The camera table: a header of gallery cameras (1-based) and "all", the diagonal left empty.
    cameras = next(t for t in page.tables if t[0][0] == "query \\ gallery")
    assert cameras[0][1:] == ["c1", "c2", "c3", "all"]
    assert [row[0] for row in cameras[1:]] == ["c1", "c2", "c3"]
    assert all(cameras[i][i] == "\u2014" for i in range(1, 4))
    # The legend explains the four frame colours.
    assert "legend" in page.classes and page.classes.count("swatch") == 4
    for status in ("query", "match", "mismatch"):
        assert status in page.classes
    assert "w.pth" in text


def test_building_the_report_logs_its_progress(problem, caplog):
    with caplog.at_level("INFO", logger="reid.evaluation"):
        _report(problem, num_queries=2)
    num_q = len(problem["q_pids"])
    assert any(r.getMessage().startswith(f"report synthetic_market: {num_q}/{num_q} queries (100%) in ")
               for r in caplog.records)


def test_report_data_is_small_json_that_round_trips(problem, tmp_path):
    data = ReportData("run", [_report(problem)])
    path = data.save(tmp_path / REPORT_DATA)
    assert path.stat().st_size < 100_000
    raw = json.loads(path.read_text())
    assert raw["format"] == "reid-report/1" and "features" not in path.read_text()
    assert ReportData.load(path).to_dict() == data.to_dict()

    with pytest.raises(ReIDError, match="does not exist"):
        ReportData.load(tmp_path / "nowhere.json")
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(ReIDError, match="broken.json"):
        ReportData.load(broken)
    raw["datasets"][0]["worst"][0]["query"]["status"] = "maybe"
    (tmp_path / "odd.json").write_text(json.dumps(raw))
    with pytest.raises(ReIDError, match="odd.json"):
        ReportData.load(tmp_path / "odd.json")
    raw["format"] = "something-else"
    (tmp_path / "old.json").write_text(json.dumps(raw))
    with pytest.raises(ReIDError, match="format"):
        ReportData.load(tmp_path / "old.json")


# ------------------------------------------------------------------------------------ contents
def _brute_force_cell(p: dict, q_cam: int, g_cam: int | None) -> tuple[float, float, int]:
    """R1 and mAP of the queries of ``q_cam`` against the gallery of ``g_cam`` (None: all), computed naively."""
    unit = p["qf"] / np.linalg.norm(p["qf"], axis=1, keepdims=True)
    gunit = p["gf"] / np.linalg.norm(p["gf"], axis=1, keepdims=True)
    hits, aps = [], []
    for qi in np.flatnonzero(p["q_cams"] == q_cam):
        keep = [gi for gi in range(len(p["g_pids"]))
                if (g_cam is None or p["g_cams"][gi] == g_cam)
                and not (p["g_pids"][gi] == p["q_pids"][qi] and p["g_cams"][gi] == q_cam)]
        dist = 1 - gunit[keep] @ unit[qi]
        good = p["g_pids"][keep][np.argsort(dist, kind="stable")] == p["q_pids"][qi]
        if not good.any():
            continue
        hits.append(bool(good[0]))
        positions = np.flatnonzero(good) + 1
        aps.append(np.mean(np.arange(1, len(positions) + 1) / positions))
    return float(np.mean(hits)), float(np.mean(aps)), len(hits)


def test_camera_pairs_rank_each_query_camera_against_each_gallery_camera(problem):
    report = _report(problem, num_queries=1)
    cells = {(c.query_camera, c.gallery_camera): c for c in report.camera_cells}
    assert report.query_cameras == report.gallery_cameras == [0, 1, 2]
    assert set(cells) == {(a, b) for a in range(3) for b in [0, 1, 2, None] if a != b}  # no diagonal
    for (q_cam, g_cam), cell in cells.items():
        r1, mean_ap, count = _brute_force_cell(problem, q_cam, g_cam)
        assert (cell.R1, cell.queries) == (pytest.approx(r1), count)
        assert cell.mAP == pytest.approx(mean_ap, abs=1e-6)
    # The "all" column splits the ordinary evaluation by query camera: weighted by its counts it gives it back.
    plain = problem["results"]["plain"]
    whole = [cells[(c, None)] for c in range(3)]
    assert sum(c.queries for c in whole) == plain.num_valid_queries
    assert sum(c.R1 * c.queries for c in whole) / plain.num_valid_queries == pytest.approx(plain.cmc[0])
    assert sum(c.mAP * c.queries for c in whole) / plain.num_valid_queries == pytest.approx(plain.mAP)


def test_ranked_lists_follow_the_protocol(problem):
    report = _report(problem, num_queries=4, topk=6)
    plain = problem["results"]["plain"]
    assert [q.ap for q in report.worst] == sorted(plain.AP)[:4]
    assert [q.ap for q in report.best] == sorted(plain.AP, reverse=True)[:4]
    for q in report.worst + report.best:
        counted = [t for t in q.results if t.status != "ignored"]
        assert [t.rank for t in counted] == list(range(1, 7))
        distances = [t.distance for t in q.results]
        assert distances == sorted(distances)
        for tile in q.results:
            same = tile.pid == q.query.pid
            if tile.status == "ignored":
                assert same and tile.camid == q.query.camid and tile.rank is None
            else:
                assert tile.status == ("match" if same else "mismatch")
        if not any(t.status == "match" for t in q.results):
            assert q.first_match is not None and q.first_match.status == "match" and q.first_match.rank > 6
        else:
            assert q.first_match is None
        if q.ap == 1.0:
            assert q.results[0].status in ("match", "ignored")


@pytest.mark.parametrize("metric, normalize", [("cosine", False), ("euclidean", False), ("euclidean", True)])
def test_distance_histograms_count_every_true_and_false_pair(problem, metric, normalize):
    p = problem
    histogram = _report(p, num_queries=0, camera_pairs=False, histogram_bins=20, metric=metric,
                        normalize=normalize).histogram
    same = p["q_pids"][:, None] == p["g_pids"][None, :]
    ignored = same & (p["q_cams"][:, None] == p["g_cams"][None, :])
    assert histogram.queries == len(p["q_pids"])
    assert sum(histogram.true_match) == int((same & ~ignored).sum()) and sum(histogram.false_match) == int(
        (~same).sum())
    edges = np.array(histogram.edges)
    assert 10 < len(edges) <= 21 and np.all(np.diff(edges) > 0)
    qf, gf = p["qf"].astype(np.float64), p["gf"].astype(np.float64)
    if metric == "cosine" or normalize:
        qf, gf = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    dist = 1 - qf @ gf.T if metric == "cosine" else np.sqrt(((qf[:, None] - gf[None]) ** 2).sum(-1))
    assert edges[0] <= dist.min() and dist.max() <= edges[-1]
    # Only pairs within float32 rounding of an edge may land in the neighbouring bin.
    for counts, pairs in ((histogram.true_match, same & ~ignored), (histogram.false_match, ~same)):
        assert np.abs(np.histogram(dist[pairs], edges)[0] - counts).sum() <= 2


def test_mismatched_inputs_are_user_errors(problem):
    p = problem
    with pytest.raises(ReIDError, match="same query/gallery split"):
        build_dataset_report("x", p["qf"], p["gf"], p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"],
                             p["q_paths"][:-1], p["g_paths"], p["results"])
    with pytest.raises(ReIDError, match="plain"):
        build_dataset_report("x", p["qf"], p["gf"], p["q_pids"], p["g_pids"], p["q_cams"], p["g_cams"],
                             p["q_paths"], p["g_paths"], {})


def test_comparison_page_puts_runs_side_by_side(problem, tmp_path):
    bot, lfm = tmp_path / "bot_market", tmp_path / "lfm_market"
    write_report(ReportData("BoT", [_report(problem, num_queries=2)]), bot)
    shifted = dict(problem, qf=problem["qf"] + 0.5 * np.random.default_rng(1).standard_normal(problem["qf"].shape)
                   .astype(np.float32))
    shifted["results"] = {"plain": evaluate_features(shifted["qf"], shifted["gf"], shifted["q_pids"],
                                                     shifted["g_pids"], shifted["q_cams"], shifted["g_cams"])}
    write_report(ReportData("LFM", [_report(shifted, num_queries=2),
                                    _report(shifted, name="synthetic_duke", num_queries=2)]), lfm)
    page_path = write_comparison_report([bot, lfm], tmp_path / "plots")
    assert page_path == tmp_path / "plots" / REPORT_HTML
    page = _Page(page_path.read_text())
    summary = page.tables[0]
    assert summary[0][:2] == ["run", "dataset"]
    rows = [row[:2] for row in summary[1:]]
    assert rows == [["bot_market", "synthetic_market"], ["bot_market", "synthetic_market (re-ranked)"],
                    ["lfm_market", "synthetic_market"], ["lfm_market", "synthetic_duke"]]
    lfm_row = summary[3]
    assert lfm_row[2] == _pct(shifted["results"]["plain"].cmc[0])
    for attrs in page.images:
        _decode(attrs["src"])
    named = write_comparison_report([bot, lfm], tmp_path / "cmp.html", labels=["BoT", "LFM"])
    assert named.name == "cmp.html" and ">LFM<" in named.read_text()
    with pytest.raises(ReIDError, match=rf"{re.escape(str(tmp_path / 'empty' / REPORT_DATA))} does not exist"):
        write_comparison_report([bot, tmp_path / "empty"], tmp_path / "x.html")
    with pytest.raises(ReIDError, match="one label per run"):
        write_comparison_report([bot, lfm], tmp_path / "x.html", labels=["only one"])


def test_plot_cmc_report_option_writes_the_comparison_page(problem, tmp_path, capsys):
    # `tools/plot_cmc.py RUN ... --report page.html`: the CMC plots from results.json, the page from report_data.json.
    from reid.cli import plot_cmc as plot_cmc_tool

    runs = []
    for name in ("bot_synthetic", "lfm_synthetic"):
        run = tmp_path / name
        write_report(ReportData(name, [_report(problem, num_queries=2)]), run)
        cmc = [float(v) for v in problem["results"]["plain"].cmc]
        (run / "results.json").write_text(json.dumps({"results": {"synthetic_market": {
            "R1": cmc[0], "R5": cmc[4], "R10": cmc[9], "mAP": 0.5, "mINP": 0.2, "cmc": cmc}}}))
        runs.append(str(run))
    plot_cmc_tool.main([*runs, "-o", str(tmp_path / "plots"), "--report", str(tmp_path / "demo_report.html")])
    printed = capsys.readouterr().out
    assert f"Wrote {tmp_path / 'plots' / 'cmc_synthetic_market.png'}" in printed
    assert f"Wrote {tmp_path / 'demo_report.html'}" in printed
    summary = _Page((tmp_path / "demo_report.html").read_text()).tables[0]
    assert [row[0] for row in summary[1:] if not row[1].endswith("(re-ranked)")] == ["bot_synthetic", "lfm_synthetic"]


def test_unreadable_images_become_placeholders(problem, tmp_path, caplog):
    report = _report(problem, num_queries=1, topk=3, camera_pairs=False)
    report.worst[0].results[0].path = str(tmp_path / "moved_away.jpg")
    page = write_report(ReportData("run", [report]), tmp_path / "run").read_text()
    for attrs in _Page(page).images:
        _decode(attrs["src"])
    assert "moved_away.jpg" in caplog.text


# ------------------------------------------------------------------------------- real browser
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--mute-audio"]
_PROBE = """<script>
window.addEventListener('load', function () {
  var widths = Array.prototype.map.call(document.images, function (image) {
    return image.complete ? image.naturalWidth : -1;
  });
  document.body.setAttribute('data-image-widths', widths.join(','));
});
</script>"""


def _chromium() -> str | None:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def _run_chromium(binary: str, profile: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HOME": str(profile)}  # nothing of the user's profile is read or written
    return subprocess.run([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                          text=True, timeout=180, check=False, env=env)


@pytest.mark.slow
def test_page_renders_in_headless_chromium_with_every_image_loaded(problem, tmp_path):
    binary = _chromium()
    if binary is None:
        pytest.skip(f"no Chromium binary found (looked for {', '.join(CHROMIUM_NAMES)} on PATH); "
                    "install Debian's chromium package (.ci/run does) to run the browser test")
    page = write_report(ReportData("BoT", [_report(problem, num_queries=2, topk=5)]), tmp_path / "run")
    num_images = len(_Page(page.read_text()).images)

    # The DOM after load, with a probe that records each image's natural width (0: it did not decode).
    probed = page.with_name("probed.html")
    probed.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _run_chromium(binary, tmp_path / "profile1", "--virtual-time-budget=10000", "--dump-dom",
                        probed.as_uri())
    match = re.search(r'data-image-widths="([^"]*)"', dom.stdout)
    assert match, f"the page did not finish loading in Chromium: {dom.stderr[-2000:]}"
    widths = [int(w) for w in match[1].split(",")]
    assert len(widths) == num_images and all(w > 0 for w in widths), widths

    # A screenshot of the page itself (not the probe): not blank, with the frames' colours in it.
    screenshot = tmp_path / "page.png"
    shot = _run_chromium(binary, tmp_path / "profile2", "--window-size=1280,4000", f"--screenshot={screenshot}",
                         page.as_uri())
    picture = cv2.imread(str(screenshot))
    assert picture is not None, f"Chromium wrote no screenshot: {shot.stderr[-2000:]}"
    assert picture.shape[:2] == (4000, 1280) and picture.std() > 20
    rgb = picture[:, :, ::-1].reshape(-1, 3).astype(int)
    for color in ((0, 190, 0), (220, 0, 0), (40, 120, 200)):  # match, mismatch, query frames
        assert (np.abs(rgb - np.array(color)).max(axis=1) <= 8).sum() > 200, color
