"""White-box attacks: budgets, objectives, reproducibility, the model left untouched, and the end-to-end run."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch
from torchvision.transforms.v2.functional import to_dtype

from reid.config import config_to_dict, load_config
from reid.data import build_dataset, build_transforms, read_image
from reid.evaluation.attacks import (
    ATTACKS,
    OBJECTIVES,
    AttackRun,
    attack_images,
    attack_settings,
    embed,
    feature_disruption,
    image_generators,
    metric_attack,
    pairwise_distance,
    plan_runs,
    quantize_to_8bit,
    true_match_mask,
)
from reid.experiments.attack import attack, results_document, run_attacks
from reid.modeling import build_model, load_model
from reid.utils.checkpoint import atomic_save
from reid.utils.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
TINY = ["MODEL.BACKBONE", "resnet18", "MODEL.PRETRAINED", "False", "INPUT.SIZE_TEST", "(64, 32)"]
EPS = 8 / 255
STEPS = 4


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model(load_config(None, TINY), num_classes=0).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    x = torch.rand(3, 3, 64, 32, generator=torch.Generator().manual_seed(1))
    x[:, :, :8] = 0.0  # saturated regions: the [0, 1] clipping must hold there too
    x[:, :, -8:] = 1.0
    return x


@pytest.fixture(scope="module")
def clean_features(model, images) -> torch.Tensor:
    with torch.no_grad():
        return model(images)


@pytest.fixture(scope="module")
def feature_attacks(model, images, clean_features):
    """Every attack once with the feature objective; the model's state before and after."""
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainable = [p.requires_grad for p in model.parameters()]
    objective = feature_disruption(clean_features)
    adv = {name: attack_images(model, images, name, EPS, STEPS, objective, generator=torch.Generator().manual_seed(0))
           for name in ATTACKS}
    with torch.no_grad():
        losses = {name: objective(model(x)) for name, x in adv.items()}
    return adv, losses, (before, trainable)


@pytest.fixture(scope="module")
def gallery_features(model) -> torch.Tensor:
    gallery = torch.rand(4, 3, 64, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        return model(gallery)


@pytest.fixture(scope="module")
def match_mask() -> torch.Tensor:
    # Query 0 matches gallery 0 and 1 (other camera) but not 2 (same camera); query 2 has no true match.
    return true_match_mask(torch.tensor([7, 8, 9]), torch.tensor([0, 0, 0]),
                           torch.tensor([7, 7, 7, 8]), torch.tensor([1, 2, 0, 3]))


@pytest.fixture(scope="module")
def metric_attacks(model, images, clean_features, gallery_features, match_mask):
    """Every attack once with the metric objective: (adversarial images, objective before, after)."""
    objective = metric_attack(gallery_features, match_mask, clean_features)
    adv = {name: attack_images(model, images, name, EPS, STEPS, objective, generator=torch.Generator().manual_seed(0))
           for name in ATTACKS}
    with torch.no_grad():
        return adv, objective(model(images)), {name: objective(model(x)) for name, x in adv.items()}


def test_settings_turn_one_loop_into_each_attack():
    assert attack_settings("fgsm", EPS, 10) == attack_settings("fgsm", EPS, 1)  # FGSM ignores steps
    fgsm = attack_settings("fgsm", EPS, 10)
    assert (fgsm.steps, fgsm.alpha, fgsm.momentum, fgsm.random_start) == (1, EPS, 0.0, False)
    assert attack_settings("ifgsm", EPS, 10).alpha == pytest.approx(EPS / 10)
    assert attack_settings("mifgsm", EPS, 10).momentum == 1.0
    pgd = attack_settings("pgd", EPS, 10)
    assert pgd.random_start and pgd.alpha == pytest.approx(2.5 * EPS / 10)
    with pytest.raises(ConfigError, match="Unknown attack"):
        attack_settings("cw", EPS, 10)
    with pytest.raises(ConfigError, match="at least one step"):
        attack_settings("pgd", EPS, 0)
    assert [run.eps for run in plan_runs(["fgsm"], ["feature"], [0, 2.0, 8])] == [0.0, 2.0, 8.0]
    for budgets in ([0.5], [4, 2.5], [256], []):  # 8-bit images: a fraction of a level would be no attack
        with pytest.raises(ConfigError, match="whole numbers of 1/255"):
            plan_runs(["fgsm"], ["feature"], budgets)


def test_each_attack_increases_its_objective_within_the_budget(feature_attacks, images):
    adv, losses, _ = feature_attacks
    for name in ATTACKS:
        assert (losses[name] > 1e-6).all(), name  # the clean images have loss 0
        assert (adv[name] - images).abs().max() <= EPS + 1e-6, name
        assert adv[name].min() >= 0 and adv[name].max() <= 1, name
        assert (adv[name] - images).abs().max() > EPS / 2, name  # the budget is used, not ignored


@pytest.mark.parametrize("name", ATTACKS)
def test_each_attack_increases_the_metric_objective_within_the_budget(metric_attacks, images, name):
    adv, before, after = metric_attacks
    assert (after[name] > before).all(), name  # every query, the one without a true match included
    assert (adv[name] - images).abs().max() <= EPS + 1e-6, name
    assert adv[name].min() >= 0 and adv[name].max() <= 1, name


def test_iterative_attacks_reach_at_least_fgsm(feature_attacks):
    # Deterministic on CPU (fixed model, images and seeds); more steps should not do worse on average.
    _, losses, _ = feature_attacks
    for name in ("ifgsm", "pgd"):
        assert losses[name].mean() >= losses["fgsm"].mean(), name


def test_model_is_left_untouched(feature_attacks, model):
    _, _, (before, trainable) = feature_attacks
    assert not model.training
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # BN running statistics included
    assert [p.requires_grad for p in model.parameters()] == trainable
    assert all(p.grad is None for p in model.parameters())


def test_a_model_in_train_mode_is_attacked_in_eval_mode_and_restored(model, images, clean_features):
    objective = feature_disruption(clean_features)
    expected = attack_images(model, images[:1], "fgsm", EPS, 1, objective, generator=torch.Generator().manual_seed(3))
    model.train()
    try:
        got = attack_images(model, images[:1], "fgsm", EPS, 1, objective, generator=torch.Generator().manual_seed(3))
        assert model.training
    finally:
        model.eval()
    assert torch.equal(got, expected)


def test_zero_budget_changes_nothing(model, images, clean_features):
    objective = feature_disruption(clean_features)
    for name in ATTACKS:
        assert torch.equal(attack_images(model, images, name, 0.0, 1, objective), images), name


def test_seed_fixes_the_adversarial_images(model, images, clean_features):
    objective = feature_disruption(clean_features, metric="euclidean")

    def pgd(seed: int) -> torch.Tensor:
        return attack_images(model, images, "pgd", EPS, 1, objective, generator=torch.Generator().manual_seed(seed))

    first = pgd(0)
    assert torch.equal(first, pgd(0))
    assert not torch.equal(first, pgd(1))


def test_metric_attack_pushes_queries_away_from_their_true_matches(metric_attacks, clean_features, gallery_features,
                                                                   match_mask, model):
    assert match_mask.tolist() == [[True, True, False, False], [False, False, False, True], [False] * 4]
    assert metric_attack(gallery_features, match_mask, clean_features).flat_at_clean.tolist() == [False, False, True]
    adv, _, _ = metric_attacks
    for name in ATTACKS:
        with torch.no_grad():
            adv_features = model(adv[name])
        before = pairwise_distance(clean_features, gallery_features)
        after = pairwise_distance(adv_features, gallery_features)
        assert after[0, :2].mean() > before[0, :2].mean(), name
        assert after[1, 3] > before[1, 3], name
        # The query without a true match falls back to feature disruption instead of staying clean.
        assert feature_disruption(clean_features[2:])(adv_features[2:]).item() > 1e-6, name


def test_random_draws_depend_on_the_image_not_on_its_batch(model, images, clean_features, gallery_features,
                                                           match_mask):
    """Per-image generators: splitting a batch changes nothing. With one generator for the batch it would, as
    only batches holding a query without a true match draw a first gradient point for it."""
    objective = metric_attack(gallery_features, match_mask, clean_features)
    whole = attack_images(model, images, "fgsm", EPS, 1, objective, generator=image_generators(5, [0, 1, 2]))
    parts = [attack_images(model, images[rows], "fgsm", EPS, 1,
                           metric_attack(gallery_features, match_mask[rows], clean_features[rows]),
                           generator=image_generators(5, rows)) for rows in ([0, 1], [2])]
    assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(whole, attack_images(model, images, "fgsm", EPS, 1, objective,
                                                generator=image_generators(6, [0, 1, 2])))  # the seed matters
    with pytest.raises(ValueError, match="one per image"):
        attack_images(model, images, "pgd", EPS, 1, objective, generator=image_generators(5, [0, 1]))


def test_embed_is_float32_and_differentiable(model, images):
    x = images[:1].clone().requires_grad_(True)
    features = embed(model, x, flip=True)
    assert features.dtype == torch.float32
    with torch.no_grad():
        expected = (model(images[:1]) + model(images[:1].flip(3))) / 2
    assert torch.allclose(features, expected, atol=1e-6)
    assert torch.autograd.grad(features.sum(), x)[0].abs().sum() > 0


def test_quantize_to_8bit_rounds_inside_the_ball():
    def from_uint8(levels: torch.Tensor) -> torch.Tensor:  # as the test transform and a PNG read back give them
        return to_dtype(levels.to(torch.uint8), torch.float32, scale=True)

    clean = from_uint8(torch.tensor([0, 10, 100, 250, 255]).view(1, 1, 1, 5))
    adversarial = clean + torch.tensor([-0.7, 8.4, -9.0, 3.6, 2.0]).view(1, 1, 1, 5) / 255
    quantized = quantize_to_8bit(adversarial, clean, 8 / 255)
    levels = (quantized * 255).round()
    assert torch.equal(quantized, from_uint8(levels))  # on the grid, bit for bit: what a PNG stores
    # rounded (10 + 8.4 -> 18), clipped into the ball (100 - 9 -> 92) and into [0, 255] (250 + 3.6 -> 254)
    assert levels.flatten().tolist() == [0, 18, 92, 254, 255]
    assert (quantized - clean).abs().max() <= 8 / 255 + 1e-7  # 8 whole levels (k / 255 in float: up to an ulp)
    # A budget between two levels allows the lower one: |result - clean| <= eps holds.
    assert ((quantize_to_8bit(adversarial, clean, 7.5 / 255) - clean) * 255).abs().max().round() == 7
    assert torch.equal(quantize_to_8bit(clean, clean, 0.0), clean)
    divided = torch.tensor([0, 10, 100, 250, 255]).float().div(255).view(1, 1, 1, 5)  # another float rounding
    assert torch.equal(quantize_to_8bit(divided, divided, 8 / 255), divided)
    with pytest.raises(ValueError, match="8-bit grid"):
        quantize_to_8bit(adversarial, adversarial, 8 / 255)


def run_opts(root: Path, out: Path, *extra: str) -> list[str]:
    """A tiny model at 32x16 attacking the queries of the tiny synthetic market domain on the CPU."""
    return [*TINY, "INPUT.SIZE_TEST", "(32, 16)", "DATASETS.ROOT", str(root), "DATASETS.TEST", "('synthetic_market',)",
            "OUTPUT_DIR", str(out), "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "64", "DEVICE", "cpu", *extra]


@pytest.fixture(scope="module")
def tiny_weights(synthetic_root, tmp_path_factory) -> Path:
    cfg = load_config(None, run_opts(synthetic_root, tmp_path_factory.mktemp("unused")))
    torch.manual_seed(0)
    return atomic_save({"model": build_model(cfg, num_classes=0).state_dict(), "config": config_to_dict(cfg)},
                       tmp_path_factory.mktemp("weights") / "model.pth")


def metrics(row: dict) -> dict:
    return {key: row[key] for key in ("R1", "R5", "R10", "mAP", "mINP", "cmc")}


def check_zero_budget_reproduces_the_clean_row(cfg, weights: Path, device: str, out: Path) -> None:
    model, _ = load_model(weights, cfg, device=device)
    table = run_attacks(cfg, model, ["synthetic_market"], list(ATTACKS), [0], list(OBJECTIVES), 2, out,
                        device=device)["synthetic_market"]
    assert len(table["attacks"]) == len(ATTACKS) * len(OBJECTIVES)
    for key, row in table["attacks"].items():
        assert metrics(row) == metrics(table), key  # exactly: same precision, same batches, same evaluation
        assert row["linf_255"] == 0, key


def test_zero_budget_reproduces_the_clean_row(synthetic_root, tiny_weights, tmp_path):
    cfg = load_config(None, run_opts(synthetic_root, tmp_path))
    check_zero_budget_reproduces_the_clean_row(cfg, tiny_weights, "cpu", tmp_path)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_zero_budget_reproduces_the_clean_row(synthetic_root, tiny_weights, tmp_path):
    cfg = load_config(None, run_opts(synthetic_root, tmp_path, "DEVICE", "cuda"))
    assert cfg.TEST.AMP  # the attack must not follow it: bf16 would separate clean from attacked features
    check_zero_budget_reproduces_the_clean_row(cfg, tiny_weights, "cuda", tmp_path)


def test_run_writes_results_pictures_and_an_evaluable_adversarial_set(synthetic_root, tiny_weights, tmp_path):
    cfg = load_config(None, run_opts(synthetic_root, tmp_path / "out"))
    table = attack(cfg, tiny_weights, ["pgd"], [8], ["feature", "metric"], steps=2, vis=2,
                   save_adv=tmp_path / "adv")
    log = (tmp_path / "out" / "log.txt").read_text()
    assert re.search(r"attack synthetic_market: (\d+)/\1 queries \(100%\) in ", log)  # progress, closed

    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    entry = saved["results"]["synthetic_market"]
    assert entry == json.loads(json.dumps(results_document(table)["synthetic_market"]))
    assert saved["units"] == "metrics are fractions in [0, 1]; the tools print them as percentages; eps in 1/255"
    # Structured records: attack, objective and eps as fields, not a string to parse back.
    assert {(row["attack"], row["objective"], row["eps"]) for row in entry["attacks"]} == {
        ("pgd", "feature", 8.0), ("pgd", "metric", 8.0)}
    for row in entry["attacks"]:
        assert {"R1", "mAP", "mINP", "cmc"} <= set(row)
        assert row["mAP"] <= entry["mAP"] + 0.02
        assert 0 < row["linf_255"] <= 8
    assert saved["attack"]["steps"] == 2 and saved["attack"]["precision"] == "float32"

    pictures = sorted((tmp_path / "out" / "attacks" / "synthetic_market").glob("pgd_metric_eps8_*.png"))
    assert len(pictures) == 2
    picture = cv2.imread(str(pictures[0]))
    # Readable: the 32x16 query upscaled (nearest neighbour) to at least 256 px high, three labelled panels.
    assert picture is not None and picture.shape[0] >= 256 and picture.shape[1] >= 3 * 128

    # The saved set parses like the original, with PNG queries within the budget of the clean ones.
    original = build_dataset("synthetic_market", synthetic_root, verbose=False)
    attacked = build_dataset("synthetic_market", tmp_path / "adv" / "pgd_feature_eps8", verbose=False)
    assert [r[1:] for r in attacked.query] == [r[1:] for r in original.query]
    assert len(attacked.gallery) == len(original.gallery)
    transform = build_transforms(cfg, is_train=False)
    clean = transform(read_image(original.query[0].path))
    adv = transform(read_image(attacked.query[0].path))
    assert attacked.query[0].path.endswith(".png")
    assert 0 < (adv - clean).abs().max() <= 8 / 255 + 1e-7  # whole levels inside the ball: none rounded beyond eps

    # Read back from disk, the saved queries give exactly the reported numbers: the evaluated images are the
    # 8-bit ones that were saved (an eps-0 run evaluates a query set as it is, by the attack's own code).
    model, _ = load_model(tiny_weights, cfg, device="cpu")
    for objective in ("feature", "metric"):
        reread_cfg = load_config(None, run_opts(tmp_path / "adv" / f"pgd_{objective}_eps8", tmp_path / "reread"))
        reread = run_attacks(reread_cfg, model, ["synthetic_market"], ["fgsm"], [0], ["feature"], 1,
                             tmp_path / "reread")["synthetic_market"]
        attacked_row = table["synthetic_market"]["attacks"][AttackRun("pgd", objective, 8.0)]
        assert metrics(reread) == metrics(attacked_row), objective


def test_adversarial_set_does_not_depend_on_the_batch_size(synthetic_root, tiny_weights, tmp_path):
    sets = {}
    for batch in (64, 5):
        cfg = load_config(None, run_opts(synthetic_root, tmp_path / f"out{batch}", "TEST.IMS_PER_BATCH", str(batch)))
        model, _ = load_model(tiny_weights, cfg, device="cpu")
        table = run_attacks(cfg, model, ["synthetic_market"], ["pgd"], [8], ["metric"], 2, tmp_path,
                            save_adv=tmp_path / f"adv{batch}")
        files = sorted((tmp_path / f"adv{batch}" / "pgd_metric_eps8").rglob("query/*.png"))
        sets[batch] = ([cv2.imread(str(f)).tobytes() for f in files], table["synthetic_market"]["attacks"])
    assert len(sets[64][0]) > 5  # several batches of 5
    assert sets[64] == sets[5]


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_attack_is_reproducible_and_within_budget(model, images):
    cuda_model, x = build_model(load_config(None, TINY), num_classes=0).cuda().eval(), images.cuda()
    cuda_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        objective = metric_attack(cuda_model(x), torch.eye(3, dtype=torch.bool), cuda_model(x).float())
    runs = [attack_images(cuda_model, x, name, EPS, 2, objective, generator=torch.Generator().manual_seed(0))
            for name in ("pgd", "pgd", "mifgsm")]
    assert torch.equal(runs[0], runs[1])
    for adv in runs:
        assert adv.device == x.device and (adv - x).abs().max() <= EPS + 1e-6 and 0 <= adv.min() <= adv.max() <= 1


def test_cli_reports_missing_weights_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, str(REPO / "tools" / "attack.py"), "--weights", str(tmp_path / "missing.pth"),
         "--attack", "pgd", "--eps", "2", "4", "OUTPUT_DIR", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=REPO, timeout=120, check=False)
    assert result.returncode != 0
    message = " ".join(result.stderr.split())  # the paragraph is wrapped wherever the temporary path ends
    assert "missing.pth does not exist" in message
    assert "Traceback" not in result.stderr


def test_euclidean_distance_matches_cdist():
    a, b = torch.randn(5, 16), torch.randn(7, 16)
    expected = torch.cdist(a, b) ** 2
    assert torch.allclose(pairwise_distance(a, b, "euclidean", normalize=False), expected, atol=1e-4)
    unit = torch.cdist(torch.nn.functional.normalize(a), torch.nn.functional.normalize(b)) ** 2
    assert torch.allclose(pairwise_distance(a, b, "euclidean", normalize=True), unit, atol=1e-5)
