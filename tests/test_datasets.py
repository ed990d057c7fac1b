"""Dataset parsers, registry, fast checks and image reading, on tiny fake trees written to tmp_path."""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data import (
    DATASET_REGISTRY,
    ImageRecord,
    build_dataset,
    check_datasets,
    read_image,
)
from reid.utils.errors import DatasetError, ReIDError

MARKET_TRAIN_PIDS = (2, 7, 10, 15)  # original ids; relabelled to 0..3
MARKET_TEST_PIDS = (1, 3, 5)


def write_image(path: Path, value: int = 0, size: tuple[int, int] = (16, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = np.full((*size, 3), value, np.uint8)
    image[: size[0] // 2, :, 0] = 255 - value  # not uniform, so a colour-channel swap would be visible
    assert cv2.imwrite(str(path), image)


def make_market_tree(root: Path, folder: str = "market1501", images_per_pid: int = 3) -> Path:
    """Market layout: 4 train ids (+ junk, a Thumbs.db), 3 test ids on 6 cameras, distractors and junk."""
    base = root / folder
    for pid in MARKET_TRAIN_PIDS:
        for i in range(images_per_pid):
            write_image(
                base / "bounding_box_train" / f"{pid:04d}_c{(pid + i) % 6 + 1}s1_{i:06d}_00.jpg", 10 * i
            )
    write_image(base / "bounding_box_train" / "-1_c1s1_000000_00.jpg")
    (base / "bounding_box_train" / "Thumbs.db").write_bytes(b"not an image")
    for pid in MARKET_TEST_PIDS:
        write_image(base / "query" / f"{pid:04d}_c1s1_000001_00.jpg")
        for cam in range(2, 7):
            write_image(base / "bounding_box_test" / f"{pid:04d}_c{cam}s1_000002_00.jpg")
    for i in range(2):
        write_image(base / "bounding_box_test" / f"0000_c{i + 1}s1_00000{i}_00.jpg")  # distractors
        write_image(base / "bounding_box_test" / f"-1_c{i + 1}s1_00000{i}_00.jpg")  # junk
    return base


def make_duke_tree(root: Path, folder: str = "DukeMTMC-reID") -> Path:
    """Duke layout: 3 train ids and 2 test ids over cameras 1..8."""
    base = root / folder
    for pid in (1, 4, 9):
        for cam in (1, 8):
            write_image(base / "bounding_box_train" / f"{pid:04d}_c{cam}_f00{pid}{cam:04d}.jpg")
    for pid in (20, 21):
        write_image(base / "query" / f"{pid:04d}_c7_f0000001.jpg")
        for cam in range(1, 7):
            write_image(base / "bounding_box_test" / f"{pid:04d}_c{cam}_f000000{cam}.jpg")
    return base


def make_msmt_tree(root: Path, folder: str = "MSMT17_V1", with_val: bool = True) -> Path:
    """MSMT17 list layout: train ids 0..2 (+ val), test ids 0..1 on cameras 1..15."""
    base = root / folder
    lists: dict[str, list[str]] = {
        name: [] for name in ("list_train.txt", "list_val.txt", "list_query.txt", "list_gallery.txt")
    }

    def add(list_name: str, image_dir: str, pid: int, cam: int, i: int) -> None:
        rel = f"{pid:04d}/{pid:04d}_{i:03d}_{cam:02d}_0303morning_0015_0.jpg"
        write_image(base / image_dir / rel)
        lists[list_name].append(f"{rel} {pid}")

    for pid in range(3):
        add("list_train.txt", "train", pid, cam=pid + 1, i=0)
        add("list_train.txt", "train", pid, cam=15, i=1)
    add("list_val.txt", "train", 1, cam=2, i=2)
    for pid in range(2):
        add("list_query.txt", "test", pid, cam=3, i=0)
        add("list_gallery.txt", "test", pid, cam=14, i=1)
    for name, lines in lists.items():
        if name != "list_val.txt" or with_val:
            (base / name).write_text("\n".join(lines) + "\n")
    return base


def test_market_counts_relabelling_junk_and_distractors(tmp_path: Path) -> None:
    base = make_market_tree(tmp_path)
    ds = build_dataset("market1501", tmp_path)
    assert ds.name == "market1501" and Path(ds.root) == base
    assert len(ds.train) == 4 * 3 and ds.num_train_pids == 4
    assert sorted({r.pid for r in ds.train}) == [0, 1, 2, 3]  # relabelled in sorted order
    first = min(ds.train, key=lambda r: r.path)
    assert Path(first.path).name.startswith("0002_") and first.pid == 0
    assert all(isinstance(r, ImageRecord) for r in ds.train + ds.query + ds.gallery)
    assert {r.pid for r in ds.query} == set(MARKET_TEST_PIDS)  # original ids kept
    assert len(ds.gallery) == 3 * 5 + 2  # test ids + distractors, no junk
    assert sum(r.pid == 0 for r in ds.gallery) == 2
    everything = ds.train + ds.query + ds.gallery
    assert all(r.pid >= 0 for r in everything)
    assert {r.camid for r in everything} == set(range(6))  # c1..c6 -> 0..5
    assert ds.query[0].camid == 0


def test_market_zip_and_nested_folder_names(tmp_path: Path) -> None:
    make_market_tree(tmp_path / "a", folder="Market-1501-v15.09.15")
    make_market_tree(tmp_path / "b", folder="market1501/Market-1501-v15.09.15")
    assert build_dataset("market1501", tmp_path / "a", verbose=False).num_train_pids == 4
    assert (
        Path(build_dataset("market1501", tmp_path / "b", verbose=False).root).name == "Market-1501-v15.09.15"
    )


def test_summary_is_logged_and_returned(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    make_market_tree(tmp_path)
    with caplog.at_level(logging.INFO, logger="reid.data"):
        ds = build_dataset("market1501", tmp_path)
    table = ds.summary()
    assert table in caplog.text
    rows = {
        line.split("|")[0].strip(): [c.strip() for c in line.split("|")[1:]]
        for line in table.splitlines()[1:]
    }
    assert rows["subset"] == ["identities", "images", "cameras"]
    assert rows["train"] == ["4", "12", "6"]
    assert rows["gallery"] == ["4", "17", "6"]  # 3 ids + the distractor id 0


def test_duke_cameras_and_alias(tmp_path: Path) -> None:
    make_duke_tree(tmp_path)
    ds = build_dataset("dukemtmc", tmp_path, verbose=False)
    assert ds.num_train_pids == 3 and len(ds.train) == 6
    assert {r.camid for r in ds.train} == {0, 7}
    assert {r.camid for r in ds.query} == {6}
    assert build_dataset("DukeMTMCreID", tmp_path, verbose=False).num_gallery == 12


def test_msmt17_lists_val_merged_and_cameras(tmp_path: Path) -> None:
    base = make_msmt_tree(tmp_path)
    ds = build_dataset("msmt17", tmp_path, verbose=False)
    assert len(ds.train) == 7 and ds.num_train_pids == 3  # 6 train + 1 val image
    assert {r.camid for r in ds.train} == {0, 1, 2, 14}
    assert [r.camid for r in ds.query] == [2, 2] and {r.camid for r in ds.gallery} == {13}
    assert all(Path(r.path).is_file() for r in ds.train + ds.query + ds.gallery)
    assert ds.query[0].path.startswith(str(base / "test"))
    (base / "list_val.txt").unlink()  # optional
    assert len(build_dataset("msmt17", tmp_path, verbose=False).train) == 6


def test_msmt17_missing_image_and_bad_line_are_named(tmp_path: Path) -> None:
    base = make_msmt_tree(tmp_path)
    gallery = base / "list_gallery.txt"
    gallery.write_text(gallery.read_text() + "0001/0001_009_05_0303morning_0015_0.jpg 1\n")
    with pytest.raises(DatasetError, match=r"list_gallery.txt lists 1 image.*0001_009_05"):
        build_dataset("msmt17", tmp_path, verbose=False)
    gallery.write_text("0001/0001_001_14_0303morning_0015_0.jpg\n")
    with pytest.raises(DatasetError, match=r"list_gallery.txt, line 1: expected"):
        build_dataset("msmt17", tmp_path, verbose=False)
    gallery.write_text("0001/0001_001_16_0303morning_0015_0.jpg 1\n")
    with pytest.raises(DatasetError, match=r"camera 1..15"):
        build_dataset("msmt17", tmp_path, verbose=False)


def test_missing_dataset_names_expected_folder_and_what_was_found(tmp_path: Path) -> None:
    (tmp_path / "market").mkdir()
    (tmp_path / "notes.txt").write_text("")
    with pytest.raises(DatasetError) as info:
        build_dataset("market1501", tmp_path)
    message = str(info.value)
    assert "market1501/" in message and "Market-1501-v15.09.15/" in message
    assert "market/" in message and "notes.txt" in message
    assert "datasets/README.md" in message
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("msmt17", tmp_path / "nowhere")


def test_missing_synthetic_dataset_says_how_to_generate(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=rf"tools/make_synthetic.py --style duke --root {tmp_path}"):
        build_dataset("synthetic_duke", tmp_path)


def test_synthetic_names_use_their_own_folders(tmp_path: Path) -> None:
    make_market_tree(tmp_path, folder="synthetic_market")
    make_duke_tree(tmp_path, folder="synthetic_duke")
    assert build_dataset("synthetic_market", tmp_path, verbose=False).num_gallery == 17
    assert build_dataset("synthetic_duke", tmp_path, verbose=False).num_train_pids == 3


def test_empty_or_missing_subset_is_named(tmp_path: Path) -> None:
    base = make_market_tree(tmp_path)
    for image in (base / "query").iterdir():
        image.unlink()
    with pytest.raises(DatasetError, match=r"incomplete: query/ holds no images"):
        build_dataset("market1501", tmp_path)
    (base / "query").rmdir()
    with pytest.raises(
        DatasetError, match=r"no query/ folder.*holds: bounding_box_test/, bounding_box_train/"
    ):
        check_datasets(["market1501"], tmp_path)


def test_subset_of_only_junk_is_empty(tmp_path: Path) -> None:
    base = make_market_tree(tmp_path)
    for image in (base / "query").iterdir():
        image.unlink()
    write_image(base / "query" / "-1_c1s1_000001_00.jpg")
    with pytest.raises(DatasetError, match="no usable query images"):
        build_dataset("market1501", tmp_path)


@pytest.mark.parametrize("bad_name", ["img_0001.jpg", "0001_c7s1_000001_00.jpg", "0001_c0s1_000001_00.jpg"])
def test_bad_file_name_or_camera_is_named(tmp_path: Path, bad_name: str) -> None:
    base = make_market_tree(tmp_path)
    write_image(base / "bounding_box_test" / bad_name)
    with pytest.raises(DatasetError, match=bad_name):
        build_dataset("market1501", tmp_path)


def test_unknown_dataset_lists_registered_names(tmp_path: Path) -> None:
    with pytest.raises(ReIDError, match=r"Did you mean 'market1501'.*msmt17"):
        build_dataset("markt1501", tmp_path)
    with pytest.raises(ReIDError, match="Unknown dataset"):
        check_datasets(["nope"], tmp_path)
    assert {"market1501", "dukemtmc", "msmt17", "synthetic_market", "synthetic_duke"} <= set(
        DATASET_REGISTRY.names()
    )


@pytest.mark.parametrize("name", DATASET_REGISTRY.names())
def test_every_registered_dataset_names_what_is_missing(tmp_path: Path, name: str) -> None:
    # The contract of a registered dataset: a missing folder is reported with the name, DATASETS.ROOT and
    # the folder(s) looked for, before anything is parsed.
    with pytest.raises(DatasetError, match=rf"Dataset '{name}' not found: expected .*DATASETS\.ROOT") as info:
        check_datasets([name], tmp_path)
    assert str(tmp_path) in str(info.value)
    with pytest.raises(DatasetError, match=rf"'{name}'"):
        build_dataset(name, tmp_path)


def test_check_datasets_checks_structure_only(tmp_path: Path) -> None:
    base = make_market_tree(tmp_path)
    make_msmt_tree(tmp_path)
    write_image(base / "bounding_box_test" / "badly_named.jpg")  # a full parse would fail on this
    check_datasets(["market1501", "msmt17"], tmp_path)
    with pytest.raises(DatasetError) as info:
        check_datasets(["market1501", "dukemtmc", "synthetic_market"], tmp_path)
    message = str(info.value)
    assert "'dukemtmc' not found" in message and "'synthetic_market' not found" in message
    assert "'market1501'" not in message
    (base.parent / "MSMT17_V1" / "list_query.txt").write_text("")
    with pytest.raises(DatasetError, match="list_query.txt is empty"):
        check_datasets(["msmt17"], tmp_path)


def test_read_image_rgb_and_grayscale(tmp_path: Path) -> None:
    bgr = np.zeros((6, 4, 3), np.uint8)
    bgr[..., 0] = 200  # blue in OpenCV's BGR order
    cv2.imwrite(str(tmp_path / "blue.png"), bgr)
    rgb = read_image(tmp_path / "blue.png")
    assert rgb.dtype == np.uint8 and rgb.shape == (6, 4, 3)
    assert rgb[0, 0].tolist() == [0, 0, 200]
    cv2.imwrite(str(tmp_path / "gray.png"), np.full((5, 3), 77, np.uint8))
    gray = read_image(str(tmp_path / "gray.png"))
    assert gray.shape == (5, 3, 3) and (gray == 77).all()


def test_read_image_corrupt_or_missing_is_named(tmp_path: Path) -> None:
    corrupt = tmp_path / "0001_c1s1_000001_00.jpg"
    corrupt.write_bytes(b"\xff\xd8 definitely not a jpeg")
    with pytest.raises(DatasetError, match=rf"{corrupt}.*cannot be decoded"):
        read_image(corrupt)
    with pytest.raises(DatasetError, match=r"missing.jpg does not exist"):
        read_image(tmp_path / "missing.jpg")


def test_truncated_jpeg_is_decoded_and_reported_once(tmp_path: Path, caplog) -> None:
    rng = np.random.default_rng(0)
    whole = tmp_path / "whole.jpg"
    cv2.imwrite(str(whole), cv2.GaussianBlur(rng.integers(0, 256, (128, 64, 3), dtype=np.uint8), (0, 0), 3))
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with caplog.at_level("WARNING", logger="reid.data"):
        assert read_image(whole).shape == (128, 64, 3)
        assert not caplog.records  # an intact JPEG is not reported
        assert read_image(cut).shape == (128, 64, 3)
        read_image(cut)
    assert [r.getMessage() for r in caplog.records] == [
        f"Image {cut} is a truncated JPEG (no end marker); using the part that decodes."]
