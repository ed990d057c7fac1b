"""CSV dataset lists: reading (paths, ids, cameras), the up-front checks and their messages, writing from a folder."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from reid.data.datasets import build_dataset
from reid.data.datasets.csv_list import CsvListSource, csv_path_of, is_csv_name, write_market_csv
from reid.utils.errors import DatasetError
from tests.conftest import tiny_train_opts


@pytest.fixture
def images(tmp_path) -> Path:
    """Six tiny images under tmp_path/data/imgs: identities 1 and 2 from cameras 1 and 2, and two more of 1."""
    folder = tmp_path / "data" / "imgs"
    folder.mkdir(parents=True)
    for name in ("a1.jpg", "a2.jpg", "b1.jpg", "b2.jpg", "a3.jpg", "a4.jpg"):
        cv2.imwrite(str(folder / name), np.zeros((8, 4, 3), np.uint8))
    return folder


GOOD = """path,pid,camid,split
imgs/a1.jpg,1,1,train
imgs/a3.jpg,1,2,train
imgs/b1.jpg,2,1,train
imgs/a1.jpg,1,1,query
imgs/a2.jpg,1,2,gallery
imgs/b2.jpg,2,2,gallery
"""


def _write(tmp_path: Path, text: str, name: str = "mine.csv") -> Path:
    path = tmp_path / "data" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _load(path: Path, **kwargs):
    return CsvListSource(f"csv:{path}", "unused_root", **kwargs).load()


def test_reads_paths_relative_to_the_csv_and_one_based_cameras(images, tmp_path):
    path = _write(tmp_path, GOOD)
    dataset = _load(path)
    assert dataset.name == f"csv:{path}"
    train = [(Path(r.path).name, r.pid, r.camid) for r in dataset.train]
    assert train == [("a1.jpg", 0, 0), ("a3.jpg", 0, 1), ("b1.jpg", 1, 0)]  # identities relabelled
    assert [(Path(r.path), r.pid, r.camid) for r in dataset.query] == [(images / "a1.jpg", 1, 0)]
    assert [(Path(r.path).name, r.pid, r.camid) for r in dataset.gallery] == [("a2.jpg", 1, 1), ("b2.jpg", 2, 1)]
    # Columns in any order, extra columns, a byte-order mark, blank lines and absolute paths are fine.
    shuffled = _write(tmp_path, "\ufeffsplit,camid,note,pid,path\n\nquery,1,x,1,imgs/a1.jpg\n"
                      f"gallery,2,,1,{images / 'a2.jpg'}\n", "other.csv")
    dataset = _load(shuffled, needed=("query", "gallery"))
    assert not dataset.train and [r.camid for r in dataset.gallery] == [1]


def test_names(tmp_path):
    assert is_csv_name("csv:/data/mine.csv") and is_csv_name("CSV:x.csv") and not is_csv_name("market1501")
    assert csv_path_of("csv:/data/mine.csv") == Path("/data/mine.csv")
    with pytest.raises(DatasetError, match="names no file"):
        csv_path_of("csv:")


@pytest.mark.parametrize("text, expected", [
    ("", r"is empty: its first line must be the header path,pid,camid,split"),
    ("path,pid,split\nimgs/a1.jpg,1,train\n", r"line 1: the header must name .* missing: camid"),
    (GOOD + "imgs/a1.jpg,1,1,val\n", r"line 8: split 'val' is not one of train, query, gallery"),
    (GOOD + "imgs/a1.jpg,one,0,train\n", r"line 8: pid 'one' is not an integer >= 0; camid '0' is not an integer >= 1"),
    (GOOD + "imgs/a1.jpg,1,1\n", r"line 8: has 3 fields, the header 4"),
    (GOOD + "imgs/a2.jpg,1,2,gallery\n", r"line 8: lists imgs/a2.jpg in gallery again \(as line 6\)"),
    (GOOD + "imgs/gone.jpg,3,1,gallery\nimgs/lost.jpg,3,2,gallery\n",
     r"lists images that do not exist \(2 lines\): line 8: imgs/gone.jpg; line 9: imgs/lost.jpg\. Paths are "
     r"relative to the CSV's folder"),
    (GOOD + "imgs/b1.jpg,2,2,query\nimgs/a4.jpg,5,1,query\n",
     r"has queries whose identity has no gallery image from another camera \(2 lines\): line 8: pid 2, camera 2; "
     r"line 9: pid 5, camera 1"),
    ("path,pid,camid,split\nimgs/a1.jpg,1,1,train\nimgs/a2.jpg,1,2,gallery\n",
     r"has no rows with split query \(a test set needs query and gallery rows\); it has 1 train, 1 gallery"),
])
def test_problems_name_the_file_and_line(images, tmp_path, text, expected):
    path = _write(tmp_path, text)
    with pytest.raises(DatasetError, match=expected) as info:
        _load(path)
    assert str(path) in str(info.value)


def test_many_problems_are_listed_then_counted(images, tmp_path):
    path = _write(tmp_path, GOOD + "".join(f"imgs/x{i}.jpg,{i},1,gallery\n" for i in range(20)))
    with pytest.raises(DatasetError, match=r"\(20 lines\): line 8: imgs/x0.jpg; .* and 12 more\.") as info:
        _load(path)
    assert "line 16" not in str(info.value)


def test_most_identities_with_too_few_images_for_a_pk_batch(images, tmp_path):
    path = _write(tmp_path, GOOD)
    assert _load(path, num_instances=2).train  # identity 1 has 2 images, identity 2 one: half, not most
    with pytest.raises(DatasetError, match=r"2 of the 2 training identities have fewer than DATALOADER.NUM_INSTANCE "
                                           r"= 4 images \(median 1\), e\.g\. pid 1 \(2 images, line 2\), "
                                           r"pid 2 \(1 image, line 4\).*lower DATALOADER.NUM_INSTANCE"):
        _load(path, num_instances=4)
    assert _load(path, num_instances=4, needed=("query", "gallery")).query  # a test set is not checked for it


def test_missing_file_and_quick_header_check(tmp_path):
    source = CsvListSource("csv:" + str(tmp_path / "nope.csv"), tmp_path)
    with pytest.raises(DatasetError, match=r"nope.csv does not exist"):
        source.locate()
    assert "does not exist" in source.structure_problems(tmp_path)[0]
    header_only = _write(tmp_path, "path,pid,camid,split\n")
    assert CsvListSource(f"csv:{header_only}", tmp_path).structure_problems(tmp_path) == []


def test_written_from_a_market_folder_gives_the_same_dataset(synthetic_root, tmp_path):
    folder = synthetic_root / "synthetic_market"
    csv_path = write_market_csv(folder, tmp_path / "lists" / "market.csv")
    lines = csv_path.read_text().splitlines()
    assert lines[0] == "path,pid,camid,split" and lines[1].startswith("../")  # relative to the CSV's folder
    from_csv = _load(csv_path)
    from_folder = build_dataset("synthetic_market", synthetic_root, verbose=False)
    for split in ("train", "query", "gallery"):
        expected = [(str(Path(r.path).resolve()), r.pid, r.camid) for r in getattr(from_folder, split)]
        assert [(str(Path(r.path).resolve()), r.pid, r.camid) for r in getattr(from_csv, split)] == expected
    assert any(r.pid == 0 for r in from_csv.gallery)  # distractors kept in the gallery
    assert not any("-1_" in r for r in lines)  # junk left out
    with pytest.raises(DatasetError, match="no bounding_box_train"):
        write_market_csv(tmp_path)


@pytest.mark.slow
def test_a_csv_list_trains_and_evaluates_from_the_config_alone(synthetic_root, tmp_path):
    """``csv:PATH`` in DATASETS.TRAIN / DATASETS.TEST, as the README shows: no Python, the name keeps its case."""
    folder = tmp_path / "Mine"
    shutil.copytree(synthetic_root / "synthetic_market", folder)
    listed = write_market_csv(folder)  # Mine/dataset.csv
    name = f"csv:{listed}"
    repo = Path(__file__).resolve().parents[1]
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, str(repo / "tools" / "train.py"), "--config", "bot_synthetic.yml",
                           *tiny_train_opts(synthetic_root, out, "SOLVER.MAX_EPOCHS", "1", "DATASETS.TRAIN",
                                            f"('{name}',)", "DATASETS.TEST", f"('{name}',)")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    expected = build_dataset("synthetic_market", synthetic_root, verbose=False)
    assert list(results) == [name] and results[name]["images"]["query"] == len(expected.query)


def test_make_synthetic_format_csv_writes_a_list_that_loads(tmp_path, capsys):
    from reid.cli.make_synthetic import main

    main(["--style", "duke", "--root", str(tmp_path), "--train-ids", "4", "--test-ids", "3",
          "--images-per-camera", "1", "--workers", "1", "--format", "csv"])
    listed = tmp_path / "synthetic_duke" / "dataset.csv"
    assert f"DATASETS.TRAIN/TEST \"('csv:{tmp_path / 'synthetic_duke'}/dataset.csv',)\"" in capsys.readouterr().out
    from_csv = build_dataset(f"csv:{listed}", tmp_path, verbose=False)
    from_folder = build_dataset("synthetic_duke", tmp_path, verbose=False)
    for split in ("train", "query", "gallery"):
        assert len(getattr(from_csv, split)) == len(getattr(from_folder, split)) > 0


def test_a_list_longer_than_the_line_cap_is_refused_at_that_line(images, tmp_path, monkeypatch):
    from reid.data.datasets import csv_list

    monkeypatch.setattr(csv_list, "MAX_CSV_LINES", 4)
    with pytest.raises(DatasetError, match=r"mine\.csv has more than 4 lines: that is not a dataset list"):
        _load(_write(tmp_path, GOOD))  # 7 lines
    monkeypatch.setattr(csv_list, "MAX_CSV_LINES", 7)
    assert len(_load(_write(tmp_path, GOOD)).gallery) == 2
