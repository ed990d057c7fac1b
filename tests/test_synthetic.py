"""The synthetic generator: real-dataset layout, identity/camera structure, domains, determinism, caching."""

from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.experiments.synthetic import (
    MANIFEST_NAME,
    STYLES,
    SUBSETS,
    generate_synthetic,
    get_style,
    make_cameras,
    read_manifest,
    render_person,
    sample_identity,
)
from reid.utils.errors import ReIDError

NAME_PATTERNS = {
    "market": re.compile(r"^(-1|\d{4})_c[1-6]s\d_\d{6}_\d{2}\.jpg$"),
    "duke": re.compile(r"^\d{4}_c[1-8]_f\d{7}\.jpg$"),
}
TINY = dict(num_train_ids=6, num_test_ids=5, images_per_camera=2, workers=1)


def parse(name: str) -> tuple[int, int]:
    """(pid, camera) of a file name, as the real parsers read it."""
    pid, camera = re.match(r"^(-?\d+)_c(\d)", name).groups()
    return int(pid), int(camera)


def listing(folder: Path) -> dict[str, list[tuple[int, int]]]:
    return {subset: [parse(p.name) for p in sorted((folder / subset).iterdir())] for subset in SUBSETS}


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.jpg"))}


@pytest.fixture(scope="module")
def datasets(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("synthetic")
    return {
        "market": generate_synthetic("market", root, num_distractors=4, num_junk=3, **TINY),
        # Enough identities that all eight cameras are used.
        "duke": generate_synthetic("duke", root, **{**TINY, "num_train_ids": 12}),
    }


@pytest.mark.parametrize("style", STYLES)
def test_layout_and_file_names_match_the_real_dataset(datasets, style):
    folder = datasets[style]
    assert folder.name == f"synthetic_{style}"
    assert sorted(p.name for p in folder.iterdir()) == sorted([*SUBSETS, MANIFEST_NAME])
    for subset in SUBSETS:
        names = [p.name for p in (folder / subset).iterdir()]
        assert names, subset
        bad = [name for name in names if not NAME_PATTERNS[style].match(name)]
        assert not bad, bad[:5]


@pytest.mark.parametrize("style", STYLES)
def test_train_and_test_identities_are_disjoint(datasets, style):
    files = listing(datasets[style])
    train = {pid for pid, _ in files["bounding_box_train"]}
    test = {pid for pid, _ in files["query"] + files["bounding_box_test"] if pid > 0}
    assert len(train) == (TINY["num_train_ids"] if style == "market" else 12)
    assert len(test) == TINY["num_test_ids"]
    assert not train & test


@pytest.mark.parametrize("style", STYLES)
def test_every_query_has_a_gallery_match_from_another_camera(datasets, style):
    files = listing(datasets[style])
    gallery_cameras = defaultdict(set)
    for pid, camera in files["bounding_box_test"]:
        gallery_cameras[pid].add(camera)
    for pid, camera in files["query"]:
        assert gallery_cameras[pid] - {camera}, f"query {pid} c{camera} has no cross-camera gallery image"
    test_cameras = defaultdict(set)
    for pid, camera in files["query"] + files["bounding_box_test"]:
        test_cameras[pid].add(camera)
    assert all(len(cameras) >= 2 for pid, cameras in test_cameras.items() if pid > 0)


def test_only_market_gallery_has_distractors_and_junk(datasets):
    market_pids = [pid for pid, _ in listing(datasets["market"])["bounding_box_test"]]
    assert market_pids.count(0) == 4 and market_pids.count(-1) == 3
    duke = listing(datasets["duke"])
    assert all(pid > 0 for subset in SUBSETS for pid, _ in duke[subset])
    with pytest.raises(ReIDError, match="no distractor"):
        generate_synthetic("duke", "unused", num_distractors=5)


def test_camera_counts_and_crop_sizes_follow_the_style(datasets):
    cameras = {style: {camera for subset in listing(datasets[style]).values() for _, camera in subset}
               for style in STYLES}
    assert cameras["duke"] == set(range(1, 9))
    assert cameras["market"] <= set(range(1, 7))
    market_shapes = {cv2.imread(str(p)).shape for p in (datasets["market"] / "query").iterdir()}
    assert market_shapes == {(128, 64, 3)}
    duke_heights = {cv2.imread(str(p)).shape[0] for p in (datasets["duke"] / "query").iterdir()}
    assert len(duke_heights) > 3 and min(duke_heights) >= 120 and max(duke_heights) <= 260


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tmp_path):
    options = dict(TINY, num_distractors=3, num_junk=2)
    serial = file_bytes(generate_synthetic("market", tmp_path / "a", **options))
    parallel = file_bytes(generate_synthetic("market", tmp_path / "b", **{**options, "workers": 2}))
    assert serial == parallel
    other_seed = file_bytes(generate_synthetic("market", tmp_path / "c", **{**options, "seed": 1}))
    assert other_seed != serial
    assert set(other_seed) != set(serial)  # different names too, not only different pixels


def test_manifest_skips_unchanged_runs_and_regenerates_changed_ones(tmp_path, caplog):
    with caplog.at_level("INFO", logger="reid"):
        folder = generate_synthetic("duke", tmp_path, **TINY)
    rendered = [r.getMessage() for r in caplog.records if r.getMessage().startswith("render synthetic_duke: ")]
    assert rendered and " in " in rendered[-1]  # the rendering's progress, closed with its total time
    assert read_manifest(folder)["params"]["seed"] == 0
    marker = folder / "bounding_box_train" / "marker.txt"
    keep = folder / "notes.txt"  # not ours: must survive regeneration
    marker.touch()
    keep.touch()

    generate_synthetic("duke", tmp_path, **TINY)
    assert marker.exists(), "an up-to-date folder was regenerated"

    generate_synthetic("duke", tmp_path, **TINY, force=True)
    assert not marker.exists(), "force=True did not regenerate"

    marker.touch()
    next((folder / "query").iterdir()).unlink()  # a matching manifest no longer matches the files
    generate_synthetic("duke", tmp_path, **TINY)
    assert not marker.exists()

    generate_synthetic("duke", tmp_path, **{**TINY, "seed": 3})
    manifest = read_manifest(folder)
    assert manifest["params"]["seed"] == 3 and keep.exists()
    for subset in SUBSETS:
        assert len(list((folder / subset).iterdir())) == manifest["subsets"][subset]["images"]


def _hue_saturation_histogram(image: np.ndarray) -> np.ndarray:
    """Colour histogram of the crop's centre, where the person stands."""
    height, width = image.shape[:2]
    centre = image[int(0.15 * height):int(0.95 * height), int(0.3 * width):int(0.7 * width)]
    hsv = cv2.cvtColor(centre, cv2.COLOR_BGR2HSV)
    histogram = cv2.calcHist([hsv], [0, 1], None, [12, 8], [0, 180, 0, 256])
    return cv2.normalize(histogram, None, 1, 0, cv2.NORM_L1)


@pytest.mark.parametrize("style", STYLES)
def test_a_person_is_closer_to_themself_in_another_camera_than_to_others(style):
    domain, rng = get_style(style), np.random.default_rng(0)
    cameras = make_cameras(domain, seed=0)
    people = [sample_identity(rng, domain) for _ in range(24)]
    first = [_hue_saturation_histogram(render_person(p, cameras[0], rng)) for p in people]
    second = [_hue_saturation_histogram(render_person(p, cameras[1], rng)) for p in people]
    distance = np.array([[cv2.compareHist(a, b, cv2.HISTCMP_BHATTACHARYYA) for b in second] for a in first])
    same = np.diag(distance).mean()
    different = distance[~np.eye(len(people), dtype=bool)].mean()
    assert same < different - 0.05, (same, different)


def test_the_two_domains_differ_in_background_and_crop_statistics():
    rng = np.random.default_rng(0)
    stats = {}
    for style in STYLES:
        domain = get_style(style)
        cameras = make_cameras(domain, seed=0)
        borders, shapes = [], set()
        for index in range(32):
            image = render_person(sample_identity(rng, domain), cameras[index % len(cameras)], rng)
            strip = max(1, image.shape[1] // 7)  # left and right edges: mostly background
            edges = np.hstack([image[:, :strip], image[:, -strip:]])
            borders.append(cv2.cvtColor(edges, cv2.COLOR_BGR2HSV).reshape(-1, 3).mean(0))
            shapes.add(image.shape)
        stats[style] = (np.mean(borders, axis=0), shapes)
    (market_hsv, market_shapes), (duke_hsv, duke_shapes) = stats["market"], stats["duke"]
    assert market_hsv[2] - duke_hsv[2] > 40, "duke backgrounds should be darker"
    assert duke_hsv[1] - market_hsv[1] > 40, "duke backgrounds should be more saturated"
    assert market_shapes == {(128, 64, 3)} and len(duke_shapes) > 10
    assert get_style("duke").occlusion_rate > get_style("market").occlusion_rate


def test_invalid_options_are_user_errors(tmp_path):
    with pytest.raises(ReIDError, match="Unknown synthetic dataset style"):
        generate_synthetic("cuhk03", tmp_path)
    with pytest.raises(ReIDError, match="num_test_ids"):
        generate_synthetic("market", tmp_path, num_test_ids=0)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow  # a fresh interpreter importing torch through reid.data takes a few seconds
def test_command_line_writes_both_styles(tmp_path):
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_synthetic.py"
    result = subprocess.run(
        [sys.executable, str(tool), "--style", "both", "--root", str(tmp_path), "--train-ids", "3",
         "--test-ids", "2", "--images-per-camera", "2", "--distractors", "2", "--junk", "1",
         "--workers", "1"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bounding_box_test" in result.stdout
    market = read_manifest(tmp_path / "synthetic_market")["subsets"]["bounding_box_test"]
    duke = read_manifest(tmp_path / "synthetic_duke")["subsets"]["bounding_box_test"]
    assert (market["distractors"], market["junk"]) == (2, 1)
    assert (duke["distractors"], duke["junk"]) == (0, 0)  # the flags only reach the style that has them
