"""Broken and looping symbolic links are named as such, not as files that "do not exist"."""

from __future__ import annotations

from pathlib import Path

import pytest

from reid.data import build_dataset, read_image
from reid.data.datasets.base import describe_folder
from reid.export.image_files import scan_images
from reid.utils.checkpoint import load_checkpoint
from reid.utils.errors import CheckpointError, DatasetError
from reid.utils.paths import describe_path_problem
from tests.test_datasets import make_market_tree, write_image


@pytest.fixture
def links(tmp_path: Path) -> Path:
    """tmp_path/broken.jpg -> missing.jpg, tmp_path/a.jpg -> b.jpg -> a.jpg, tmp_path/gone -> nowhere/."""
    (tmp_path / "broken.jpg").symlink_to(tmp_path / "missing.jpg")
    (tmp_path / "a.jpg").symlink_to("b.jpg")
    (tmp_path / "b.jpg").symlink_to("a.jpg")
    (tmp_path / "gone").symlink_to(tmp_path / "nowhere")
    return tmp_path


def test_describe_path_problem(links: Path) -> None:
    assert describe_path_problem(links / "missing.jpg") == ("missing", f"{links / 'missing.jpg'} does not exist")
    broken = describe_path_problem(links / "broken.jpg")
    assert broken.kind == "broken_link"
    assert broken.text == f"{links / 'broken.jpg'} is a broken symbolic link to {links / 'missing.jpg'} " \
                          "(the target does not exist)"
    assert describe_path_problem(links / "a.jpg").text == f"{links / 'a.jpg'} is a symbolic link loop " \
                                                          f"({links / 'a.jpg'} -> b.jpg -> a.jpg)"
    inside = describe_path_problem(links / "gone" / "query" / "x.jpg")
    assert inside.kind == "broken_link" and inside.text.startswith(
        f"{links / 'gone'} (on the way to {links / 'gone' / 'query' / 'x.jpg'}) is a broken symbolic link")
    write_image(links / "real.jpg")
    assert describe_path_problem(links / "real.jpg", expect="file") is None
    assert describe_path_problem(links, expect="folder") is None
    assert describe_path_problem(links, expect="file").text == f"{links} is a folder, not a file"
    assert describe_path_problem(links / "real.jpg", expect="folder").kind == "not_a_folder"


def test_read_image_names_broken_and_looping_links(links: Path) -> None:
    with pytest.raises(DatasetError, match=r"broken.jpg is a broken symbolic link to .*missing.jpg .*Fix the link"):
        read_image(links / "broken.jpg")
    with pytest.raises(DatasetError, match=r"a.jpg is a symbolic link loop \(.*a.jpg -> b.jpg -> a.jpg\)"):
        read_image(links / "a.jpg")
    with pytest.raises(DatasetError, match=r"missing.jpg does not exist: check the path"):
        read_image(links / "missing.jpg")


def test_describe_folder_and_dataset_root_name_links(links: Path) -> None:
    assert describe_folder(links / "gone").startswith(f"{links / 'gone'} is a broken symbolic link")
    assert describe_folder(links / "a.jpg").startswith(f"{links / 'a.jpg'} is a symbolic link loop")
    listing = describe_folder(links)
    assert "a.jpg (a symbolic link loop)" in listing and f"gone (a broken link to {links / 'nowhere'})" in listing
    (links / "market1501").symlink_to(links / "unmounted" / "market1501")
    with pytest.raises(DatasetError, match=r"market1501 \(a broken link to .*unmounted/market1501\)"):
        build_dataset("market1501", links)


def test_scan_images_names_links(links: Path, tmp_path_factory) -> None:
    with pytest.raises(DatasetError, match=r"Image folder .*gone is a broken symbolic link"):
        scan_images(links / "gone")
    with pytest.raises(DatasetError, match=r"holds 3 image link\(s\) that lead nowhere: .*a.jpg is a symbolic link "
                                           r"loop .*; .*b.jpg is a symbolic link loop .*; .*broken.jpg is a broken "):
        scan_images(links)
    folder = tmp_path_factory.mktemp("ok")
    write_image(folder / "x.jpg")
    (folder / "notes.txt").symlink_to(folder / "missing.txt")  # not an image: not a problem for a scan
    assert scan_images(folder).images == [folder / "x.jpg"]


def test_checkpoint_link_is_named(links: Path) -> None:
    (links / "best.pth").symlink_to("/mnt/gone/best.pth")
    with pytest.raises(CheckpointError, match=r"best.pth is a broken symbolic link to /mnt/gone/best.pth"):
        load_checkpoint(links / "best.pth")


def test_dataset_image_replaced_by_a_broken_link_is_named(tmp_path: Path) -> None:
    base = make_market_tree(tmp_path)
    ds = build_dataset("market1501", tmp_path, verbose=False)
    target = Path(ds.query[0].path)
    target.unlink()
    target.symlink_to(base / "elsewhere.jpg")
    with pytest.raises(DatasetError, match=rf"{target.name} is a broken symbolic link"):
        read_image(target)
