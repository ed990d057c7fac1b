"""FeatureExtractor on paths / BGR arrays / grayscale / tensors, folder extraction with parsed identities,
search end to end, every bad-input path, and the tools/extract.py and tools/search.py command lines."""

from __future__ import annotations

import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import reid
from reid.config import config_to_dict, load_config
from reid.data import build_transforms, read_image
from reid.export import (
    FeatureExtractor,
    extract_folder,
    find_images,
    parse_identity,
    rank_images,
    search_folder,
    search_images,
)
from reid.export.search import SearchResult
from reid.export.search_vis import draw_search_results
from reid.modeling import build_model
from reid.utils.checkpoint import atomic_save
from reid.utils.errors import CheckpointError, DatasetError, ReIDError

REPO = Path(__file__).resolve().parents[1]
TINY_OPTS = ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", "INPUT.SIZE_TEST", "(64, 32)",
             "MODEL.REGULARIZER.NAME", "lfm"]
# Market-1501 names (pid, 1-based camera), odd sizes; 0002 appears twice so a search has a true match.
IMAGES = {"0002_c1s1_000451_03.jpg": (97, 41), "0002_c3s1_000551_01.png": (130, 64),
          "0007_c2s2_001000_02.jpg": (64, 32), "sub/0011_c6s1_002001_01.bmp": (33, 77)}


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, torch.nn.Module, Path]:
    """(checkpoint, eval-mode model, folder of images) for the tiny LFM model."""
    tmp = tmp_path_factory.mktemp("extract")
    cfg = load_config(None, TINY_OPTS)
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=5)
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 32))  # training-mode pass: non-trivial BatchNorm statistics
    weights = atomic_save({"model": model.state_dict(), "config": config_to_dict(cfg)}, tmp / "tiny.pth")
    rng = np.random.default_rng(0)
    folder = tmp / "images"
    for name, (h, w) in IMAGES.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        # smooth images survive JPEG: a blurred random field
        image = cv2.GaussianBlur(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), (0, 0), 3)
        assert cv2.imwrite(str(folder / name), image)
    (folder / "notes.txt").write_text("not an image, and not named like one: skipped")
    return weights, model.eval(), folder


@pytest.fixture(scope="module")
def extractor(setup) -> FeatureExtractor:
    return FeatureExtractor(setup[0], device="cpu", batch_size=3)


def test_reid_exposes_the_extractor() -> None:
    assert reid.FeatureExtractor is FeatureExtractor


def test_features_match_the_eval_model_with_the_evaluation_preprocessing(setup, extractor) -> None:
    _, model, folder = setup
    paths = find_images(folder)
    transform = build_transforms(load_config(None, TINY_OPTS), is_train=False)
    with torch.no_grad():
        expected = F.normalize(model(torch.stack([transform(read_image(p)) for p in paths])), dim=1)
    features = extractor(paths)  # 4 images in batches of 3
    assert features.dtype == torch.float32 and features.device.type == "cpu" and features.shape == (4, 512)
    assert torch.allclose(features, expected, atol=1e-5)
    assert torch.allclose(features.norm(dim=1), torch.ones(4), atol=1e-5)


def test_paths_bgr_arrays_and_tensors_agree(setup, extractor) -> None:
    _, _, folder = setup
    path = folder / "0002_c1s1_000451_03.jpg"  # 97 x 41: resized by every route
    bgr = cv2.imread(str(path))
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    reference = extractor(str(path))
    routes = {
        "Path": extractor(path),
        "BGR array": extractor(bgr),
        "BGRA array": extractor(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA)),
        "batch array": extractor(bgr[None])[:1],
        "uint8 RGB tensor": extractor(torch.from_numpy(rgb).permute(2, 0, 1)),
        "float tensor at test size": extractor(build_transforms(extractor.cfg, False)(rgb)[None]),
        "mixed list": extractor([path, bgr])[1:],
    }
    for route, features in routes.items():
        assert features.shape == (1, 512), route
        assert torch.allclose(features, reference, atol=1e-5), route
    assert not torch.allclose(extractor(rgb), reference, atol=1e-3)  # RGB given as numpy is read as BGR


def test_grayscale_inputs_agree(tmp_path, extractor) -> None:
    gray = cv2.GaussianBlur(np.random.default_rng(1).integers(0, 256, (50, 23), dtype=np.uint8), (0, 0), 2)
    path = tmp_path / "gray.png"
    cv2.imwrite(str(path), gray)
    reference = extractor(path)
    for features in (extractor(gray), extractor(gray[:, :, None]), extractor(cv2.cvtColor(gray, cv2.COLOR_GRAY2BGR))):
        assert torch.allclose(features, reference, atol=1e-5)


def test_folder_extraction_parses_identities_and_saves_npz(setup, extractor, tmp_path) -> None:
    _, _, folder = setup
    progress = []
    result = extract_folder(extractor, folder, progress=lambda done, total: progress.append((done, total)))
    assert progress == [(3, 4), (4, 4)]
    names = [p.relative_to(folder).as_posix() for p in result.paths]
    assert names == sorted(IMAGES)  # recursive, image files only
    assert result.others == [folder / "notes.txt"] and not result.unreadable  # counted, not read
    assert "1 file(s) are not images" in result.report()[0]
    assert result.pids.tolist() == [2, 2, 7, 11] and result.camids.tolist() == [0, 2, 1, 5]
    saved = np.load(result.save(tmp_path / "feats"), allow_pickle=False)  # exact name, no ".npz" appended
    assert saved["paths"].tolist() == names and saved["features"].shape == (4, 512)
    assert np.array_equal(saved["pids"], result.pids) and str(saved["root"]) == str(folder)


@pytest.fixture
def folder_with_a_broken_image(setup, tmp_path) -> Path:
    """The images of ``setup`` plus a .jpg that does not decode."""
    folder = shutil.copytree(setup[2], tmp_path / "crops")
    (folder / "0005_c1s1_000001_01.jpg").write_bytes(b"\xff\xd8 not really a JPEG")
    return folder


def test_unreadable_images_are_skipped_and_listed_or_stop_a_strict_run(extractor, folder_with_a_broken_image,
                                                                       tmp_path) -> None:
    folder = folder_with_a_broken_image
    result = extract_folder(extractor, folder)
    assert [p.relative_to(folder).as_posix() for p in result.paths] == sorted(IMAGES)
    assert result.features.shape == (4, 512) and result.pids.tolist() == [2, 2, 7, 11]
    ((path, reason),) = result.unreadable
    assert path == folder / "0005_c1s1_000001_01.jpg" and "cannot be decoded" in reason
    assert result.report()[0] == "1 of 5 images could not be read and have no features:"
    saved = np.load(result.save(tmp_path / "feats.npz"))
    assert saved["unreadable"].tolist() == ["0005_c1s1_000001_01.jpg"] and len(saved["paths"]) == 4
    with pytest.raises(DatasetError, match="0005_c1s1_000001_01.jpg"):
        extract_folder(extractor, folder, strict=True)
    only_broken = tmp_path / "only_broken"
    only_broken.mkdir()
    shutil.copy(path, only_broken / "x.jpg")
    with pytest.raises(DatasetError, match="None of the 1 images"):
        extract_folder(extractor, only_broken)


def test_search_skips_unreadable_gallery_images_only_when_asked(extractor, folder_with_a_broken_image) -> None:
    folder = folder_with_a_broken_image
    query = folder / "0002_c1s1_000451_03.jpg"
    with pytest.raises(DatasetError, match="0005_c1s1_000001_01.jpg"):
        search_folder(extractor, query, folder)
    outcome = rank_images(extractor, search_images(query, folder), k=10, strict=False)
    (result,) = outcome.results
    assert len(result.matches) == 4 and folder / "0005_c1s1_000001_01.jpg" not in result.matches
    assert [p.name for p, _ in outcome.unreadable] == ["0005_c1s1_000001_01.jpg"]
    broken = folder / "0005_c1s1_000001_01.jpg"  # the only query, and it cannot be read
    with pytest.raises(DatasetError, match="None of the 1 query images could be read.*0005_c1s1_000001_01.jpg"):
        rank_images(extractor, search_images(broken, folder), k=10, strict=False)
    with pytest.raises(ReIDError, match="topk"):  # checked before any feature is extracted
        search_folder(extractor, query, folder, k=0)
    with pytest.raises(DatasetError, match="nobody.jpg does not exist"):
        search_images(folder / "nobody.jpg", folder)


def test_drawing_survives_an_image_deleted_after_the_search(setup, tmp_path) -> None:
    _, _, folder = setup
    gone = tmp_path / "0002_c3s1_000551_01.png"  # deleted (or moved) after its features were extracted
    result = SearchResult(folder / "0002_c1s1_000451_03.jpg", [gone, folder / "0007_c2s2_001000_02.jpg"], [0.1, 0.2])
    picture = cv2.imread(str(draw_search_results([result], tmp_path / "strip.png")))
    assert picture is not None and picture.shape[1] > 3 * 64  # a grey placeholder stands in for the lost image
    with pytest.raises(ReIDError, match=r"\.jpg, \.jpeg, \.png"):
        draw_search_results([result], tmp_path / "strip.txt")


def test_torch_files_that_are_not_models_are_refused(tmp_path) -> None:
    tensor_file = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor_file)
    state_dict_file = tmp_path / "state_dict.pth"  # a plain torchvision state dict, no "model" or config
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7), "fc.bias": torch.zeros(2)}, state_dict_file)
    for path in (tensor_file, state_dict_file):
        with pytest.raises(CheckpointError, match=rf"{path.name} is not a model checkpoint"):
            FeatureExtractor(path, device="cpu")


def test_parse_identity_conventions() -> None:
    assert parse_identity("0002_c1s1_000451_03.jpg") == (2, 0)  # Market-1501
    assert parse_identity("-1_c3s2_000100_00.jpg") == (-1, 2)  # Market junk
    assert parse_identity("0001_c2_f0046182.jpg") == (1, 1)  # DukeMTMC-reID
    assert parse_identity("dir/0042_013_05_0303morning_0015_0.jpg") == (42, 4)  # MSMT17
    assert parse_identity("IMG_2024.jpg") == (-1, -1) and parse_identity("person.png") == (-1, -1)


def test_search_ranks_the_gallery_and_draws_strips(setup, extractor, tmp_path) -> None:
    _, _, folder = setup
    query = folder / "0002_c1s1_000451_03.jpg"
    (result,) = search_folder(extractor, query, folder, k=3)
    assert result.matches[0] == query and result.distances[0] == pytest.approx(0, abs=1e-5)
    assert len(result.matches) == 3 and result.distances == sorted(result.distances)
    gallery = extractor(find_images(folder))
    expected = (1 - gallery @ extractor(query).T).squeeze(1).sort()  # cosine distance by hand
    assert result.distances == pytest.approx(expected.values[:3].tolist(), abs=1e-5)
    every = search_folder(extractor, folder, folder, k=10, metric="euclidean")
    assert len(every) == 4 and all(len(r.matches) == 4 and r.matches[0] == r.query for r in every)
    picture = cv2.imread(str(draw_search_results(every, tmp_path / "strips.jpg")))
    assert picture is not None and picture.shape[0] > 4 * 128 and picture.shape[1] > 5 * 64


def test_bad_inputs_name_the_culprit(setup, extractor, tmp_path) -> None:
    weights, _, _ = setup
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    with pytest.raises(DatasetError, match="broken.jpg"):
        extractor([broken])
    with pytest.raises(DatasetError, match="nobody.jpg does not exist: check the path"):
        extractor([tmp_path / "nobody.jpg"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DatasetError, match="empty"):
        extract_folder(extractor, empty)
    with pytest.raises(ReIDError, match="folder"):
        extractor(empty)
    with pytest.raises(CheckpointError, match="broken.jpg"):
        FeatureExtractor(broken)
    with pytest.raises(CheckpointError, match="tiny.pth"):
        FeatureExtractor(weights, opts=["MODEL.BACKBONE", "resnet50"])
    with pytest.raises(ReIDError, match="in \\[0, 1\\]"):
        extractor(torch.rand(1, 3, 64, 32) * 255)
    with pytest.raises(ReIDError, match="uint8"):
        extractor(np.zeros((64, 32, 3), np.float32))
    with pytest.raises(ReIDError, match="RGB"):
        extractor(torch.rand(1, 64, 32))
    with pytest.raises(ReIDError, match="device"):
        FeatureExtractor(weights, device="gpu")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(setup, extractor) -> None:
    _, _, folder = setup
    paths = find_images(folder)
    exact = FeatureExtractor(setup[0], device="cuda", opts=["TEST.AMP", "False"])
    assert torch.allclose(exact(paths), extractor(paths), atol=1e-3)
    on_gpu = FeatureExtractor(setup[0], device="cuda")  # bf16 autocast, as evaluation on CUDA
    assert F.cosine_similarity(on_gpu(paths), extractor(paths)).min() > 0.99
    assert torch.allclose(on_gpu(torch.rand(2, 3, 64, 32, device="cuda")).cpu().norm(dim=1), torch.ones(2), atol=1e-4)


def run_tool(*args: str, tool: str = "extract.py") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "tools" / tool), *args], check=False, capture_output=True,
                          text=True, cwd=REPO, timeout=120)


def run_in_process(capsys, monkeypatch, tool: str, *args: str) -> tuple[int, str]:
    """A tool run in this process, without an interpreter start-up per run: (exit code, its stderr)."""
    monkeypatch.setattr(sys, "argv", [tool, *args])
    try:
        runpy.run_path(str(REPO / "tools" / tool), run_name="__main__")
    except SystemExit as exc:
        return exc.code, capsys.readouterr().err
    return 0, capsys.readouterr().err


def test_extract_cli(setup, folder_with_a_broken_image, tmp_path, capsys, monkeypatch) -> None:
    weights, _, _ = setup
    output = tmp_path / "feats.npz"
    ok = run_tool("--weights", str(weights), "--images", str(folder_with_a_broken_image), "--output", str(output),
                  "--batch-size", "2")
    assert ok.returncode == 0, ok.stderr
    assert np.load(output)["features"].shape == (4, 512) and "5/5 images" in ok.stderr
    assert "1 of 5 images could not be read" in ok.stderr and "0005_c1s1_000001_01.jpg" in ok.stderr
    assert "1 file(s) are not images" in ok.stderr and "notes.txt" in ok.stderr

    def fails(*args: str) -> str:
        code, err = run_in_process(capsys, monkeypatch, "extract.py", "--weights", *args)
        assert code != 0 and "Traceback" not in err
        return err

    strict = tmp_path / "strict.npz"
    assert "0005_c1s1_000001_01.jpg" in fails(str(weights), "--images", str(folder_with_a_broken_image),
                                              "--output", str(strict), "--strict")
    assert not strict.exists()
    empty = tmp_path / "nothing_here"
    empty.mkdir()
    assert "nothing_here" in fails(str(weights), "--images", str(empty), "--output", str(output))
    state_dict = tmp_path / "resnet_state_dict.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 7, 7)}, state_dict)
    refused = fails(str(state_dict), "--images", str(empty), "--output", str(output))
    assert "resnet_state_dict.pth is not a model checkpoint" in refused
    assert "is a folder" in fails(str(weights), "--images", str(empty), "--output", str(tmp_path))


def test_search_cli(setup, tmp_path) -> None:
    weights, _, folder = setup
    query = folder / "0002_c1s1_000451_03.jpg"
    picture = tmp_path / "ranks.jpg"
    ok = run_tool("--weights", str(weights), "--query", str(query), "--gallery", str(folder), "--topk", "2",
                  "--vis", str(picture), tool="search.py")
    assert ok.returncode == 0, ok.stderr
    assert "0002_c1s1_000451_03.jpg" in ok.stdout and cv2.imread(str(picture)) is not None
    assert "1 file(s) are not images" in ok.stderr
    assert "extract gallery: 4/4 images (100%) in " in ok.stderr  # the gallery's progress, then its total time


def test_search_cli_checks_every_argument_before_loading_the_model(setup, tmp_path, capsys, monkeypatch) -> None:
    _, _, folder = setup
    # The weights do not exist: an error about anything else proves it came before the model was loaded.
    weights = ["--weights", str(tmp_path / "not_loaded_yet.pth")]
    query = ["--query", str(folder / "0002_c1s1_000451_03.jpg")]

    def error(*args: str) -> str:
        code, err = run_in_process(capsys, monkeypatch, "search.py", *args)
        assert code != 0 and "Traceback" not in err
        return err

    assert "topk must be between 1 and 1000" in error(*weights, *query, "--gallery", str(folder), "--topk", "0")
    assert "topk must be between 1 and 1000" in error(*weights, *query, "--gallery", str(folder), "--topk", "1001")
    assert "ranks.txt" in error(*weights, *query, "--gallery", str(folder), "--vis", str(tmp_path / "ranks.txt"))
    assert "no_gallery" in error(*weights, *query, "--gallery", str(tmp_path / "no_gallery"))
    assert "nobody.jpg" in error(*weights, "--query", str(tmp_path / "nobody.jpg"), "--gallery", str(folder))
    assert "not_loaded_yet.pth" in error(*weights, *query, "--gallery", str(folder))


def test_the_pixel_cap_of_the_config_applies_to_extraction(setup) -> None:
    # `INPUT.MAX_IMAGE_PIXELS N` after extract.py / search.py reaches the extractor's image reading.
    weights, _, folder = setup
    capped = FeatureExtractor(weights, device="cpu", opts=["INPUT.MAX_IMAGE_PIXELS", "3000"])
    result = capped.extract_paths(sorted(folder.rglob("*.*")))
    refused = {Path(path).name: reason for path, reason in result.unreadable}
    assert set(refused) >= {"0002_c1s1_000451_03.jpg", "0002_c3s1_000551_01.png"}  # 41x97 and 64x130 pixels
    assert "more than the 0.003 megapixels allowed (INPUT.MAX_IMAGE_PIXELS)" in refused["0002_c3s1_000551_01.png"]
    assert "0007_c2s2_001000_02.jpg" not in refused and len(result.features) == 2  # 64x32 and 33x77: within
