"""Dataset fingerprints: a subset that changed between two checks is named, an unchanged one passes."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reid.data import build_dataset
from reid.data.datasets.base import check_fingerprints, fingerprint_dataset
from reid.utils.errors import DatasetError
from tests.test_datasets import make_market_tree


@pytest.fixture
def market(tmp_path: Path) -> tuple[Path, dict]:
    """A tiny Market tree and the fingerprints a run would record at its start (through JSON, as in a file)."""
    make_market_tree(tmp_path)
    recorded = json.loads(json.dumps(fingerprint_dataset(build_dataset("market1501", tmp_path, verbose=False))))
    return tmp_path, recorded


def _check(root: Path, recorded: dict, **kwargs) -> list[str]:
    return check_fingerprints(build_dataset("market1501", root, verbose=False), recorded, **kwargs)


def test_unchanged_dataset_passes_also_when_moved(market, tmp_path_factory) -> None:
    root, recorded = market
    assert recorded["gallery"]["images"] == 17 and recorded["query"]["images"] == 3
    assert _check(root, recorded) == []
    moved = tmp_path_factory.mktemp("moved")
    shutil.copytree(root / "market1501", moved / "market1501")  # copy2 keeps sizes and times
    assert _check(moved, recorded) == []  # paths are recorded relative to the dataset's folder


def test_deleted_gallery_images_are_counted(market) -> None:
    root, recorded = market
    gallery = sorted((root / "market1501" / "bounding_box_test").glob("0005_*.jpg"))
    for path in gallery:
        path.unlink()
    with pytest.raises(DatasetError) as error:
        _check(root, recorded)
    message = str(error.value)
    assert f"Dataset market1501 at {root / 'market1501'} changed since the run started: " in message
    assert "gallery: 17 -> 12 images, 4 -> 3 identities" in message  # three test ids and the distractors
    assert "query" not in message.split("changed since")[1].split(". ")[0]  # the query is unchanged
    assert "accept the change explicitly with DATASETS.ALLOW_CHANGES True" in message


def test_replaced_renamed_or_rewritten_files_are_detected(market) -> None:
    root, recorded = market
    folder = root / "market1501" / "bounding_box_test"
    first = sorted(folder.glob("0001_*.jpg"))[0]
    first_bytes = first.read_bytes()
    first.write_bytes(first_bytes + b"\0")  # replaced by a different file of another size
    with pytest.raises(DatasetError, match="gallery: the same 17 files, but some have another size"):
        _check(root, recorded)
    first.write_bytes(first_bytes)
    stat = first.stat()
    os.utime(first, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # same bytes, written again later
    with pytest.raises(DatasetError, match="gallery: the same 17 files and sizes, but other modification times"):
        _check(root, recorded)
    record_time = recorded["gallery"]["mtimes"]
    recorded["gallery"]["mtimes"] = fingerprint_dataset(build_dataset("market1501", root, verbose=False),
                                                        ["gallery"])["gallery"]["mtimes"]
    assert record_time != recorded["gallery"]["mtimes"] and _check(root, recorded) == []
    first.rename(folder / first.name.replace("_000002_", "_000009_"))  # same count and labels, another name
    with pytest.raises(DatasetError, match="gallery: the same 17 images by count, but other files or labels"):
        _check(root, recorded)


def test_change_only_warns_when_allowed(market, caplog) -> None:
    root, recorded = market
    next((root / "market1501" / "query").glob("*.jpg")).unlink()
    with caplog.at_level("WARNING", logger="reid.data"):
        changes = _check(root, recorded, allow_changes=True, recorded_in="results.json was written",
                         override="--allow-changed-data")
    assert changes == ["query: 3 -> 2 images, 3 -> 2 identities"]
    assert "changed since results.json was written" in caplog.text and "as --allow-changed-data allows" in caplog.text


def test_malformed_record_is_named(market) -> None:
    root, recorded = market
    del recorded["gallery"]["listing"]
    with pytest.raises(DatasetError, match="fingerprint in the record of market1501 gallery is malformed"):
        _check(root, recorded)


def test_other_fingerprint_version_compares_counts_only(market) -> None:
    root, recorded = market
    recorded["gallery"].update(version=0, listing="x", sizes="y", mtimes="z")
    assert _check(root, recorded) == []
    recorded["gallery"]["images"] = 99
    with pytest.raises(DatasetError, match="gallery: 99 -> 17 images"):
        _check(root, recorded)
