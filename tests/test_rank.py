"""CMC / mAP / mINP end to end: evaluate_rank and evaluate_features against the per-query numpy reference.

The parts have their own tests: the protocol and inputs (test_protocol.py), the ranking paths
(test_ranking.py), feature distances (test_distances.py) and the memory budget (test_memory.py).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.rank import RankResult, compute_distance_matrix, evaluate_features, evaluate_rank
from reid.evaluation.reference import evaluate_rank_reference
from reid.utils.errors import ReIDError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def random_problem(rng: np.random.Generator, ties: bool, dtype=np.float32):
    """Small query/gallery split with distractors (pid 0), same-camera junk and often unmatched queries."""
    num_q, num_g, num_ids = rng.integers(1, 12), rng.integers(1, 40), rng.integers(1, 6)
    q_pids = rng.integers(1, num_ids + 1, num_q)
    g_pids = rng.integers(0, num_ids + 1, num_g)
    q_camids, g_camids = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    if ties:  # few distinct integer values: many exact ties, some negative
        distmat = rng.integers(-2, 4, (num_q, num_g)).astype(dtype)
    else:
        distmat = rng.standard_normal((num_q, num_g)).astype(dtype)
    return distmat, q_pids, g_pids, q_camids, g_camids


def has_valid_query(q_pids, g_pids, q_camids, g_camids) -> bool:
    same_id = q_pids[:, None] == g_pids[None, :]
    return bool((same_id & (q_camids[:, None] != g_camids[None, :])).any())


def assert_matches_reference(result: RankResult, reference: dict, max_rank: int) -> None:
    assert result.cmc.shape == (max_rank,)
    np.testing.assert_allclose(result.cmc, reference["cmc"], atol=1e-6, rtol=0)
    np.testing.assert_array_equal(result.query_indices, reference["query_indices"])
    np.testing.assert_allclose(result.AP, reference["AP"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(result.INP, reference["INP"], atol=1e-6, rtol=0)
    assert result.mAP == pytest.approx(reference["mAP"], abs=1e-6)
    assert result.mINP == pytest.approx(reference["mINP"], abs=1e-6)
    assert result.num_valid_queries == len(reference["query_indices"])


def test_float64_input_is_compared_in_float32():
    rng = np.random.default_rng(3)
    distmat, *ids = random_problem(rng, ties=False, dtype=np.float64)
    while not has_valid_query(*ids):
        distmat, *ids = random_problem(rng, ties=False, dtype=np.float64)
    reference = evaluate_rank_reference(distmat.astype(np.float32), *ids, max_rank=10)
    assert_matches_reference(evaluate_rank(distmat, *ids, max_rank=10), reference, 10)


def feature_problem(rng, num_q=25, num_g=90, dim=12, integer=False):
    ids = rng.integers(0, 8, num_q + num_g)
    centres = rng.standard_normal((8, dim))
    feats = centres[ids] + 0.7 * rng.standard_normal((num_q + num_g, dim))
    if integer:  # small integers: every dot product is exact whatever the summation order
        feats = rng.integers(-2, 3, (num_q + num_g, dim)).astype(np.float64)
    feats = feats.astype(np.float32)
    cams = rng.integers(0, 4, num_q + num_g)
    q_pids, g_pids = ids[:num_q] + 1, np.where(rng.random(num_g) < 0.1, 0, ids[num_q:] + 1)
    return feats[:num_q], feats[num_q:], q_pids, g_pids, cams[:num_q], cams[num_q:]


@pytest.mark.parametrize("metric, normalize", [("cosine", False), ("euclidean", False), ("euclidean", True)])
def test_evaluate_features_matches_reference_on_its_distances(metric, normalize):
    rng = np.random.default_rng(4)
    for _ in range(5):
        qf, gf, *ids = feature_problem(rng)
        distmat = compute_distance_matrix(qf, gf, metric=metric, normalize=normalize).numpy()
        reference = evaluate_rank_reference(distmat, *ids, max_rank=20)
        result = evaluate_features(torch.from_numpy(qf), torch.from_numpy(gf), *ids, metric=metric,
                                   max_rank=20, normalize=normalize)
        assert_matches_reference(result, reference, 20)
        assert 0 < result.peak_memory_bytes


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_block_splitting_gives_identical_results(metric):
    rng = np.random.default_rng(6)
    qf, gf, *ids = feature_problem(rng, integer=True)
    one_block = evaluate_features(qf, gf, *ids, metric=metric, max_rank=30)
    # float16 features and a tiny budget: one query per block, gallery multiplied in 1-row blocks.
    tiny = evaluate_features(torch.from_numpy(qf).half(), torch.from_numpy(gf).half(), *ids, metric=metric,
                             max_rank=30, memory_budget_bytes=1)
    np.testing.assert_array_equal(tiny.cmc, one_block.cmc)
    np.testing.assert_array_equal(tiny.AP, one_block.AP)
    np.testing.assert_array_equal(tiny.INP, one_block.INP)
    reference = evaluate_rank_reference(compute_distance_matrix(qf, gf, metric).numpy(), *ids, max_rank=30)
    assert_matches_reference(tiny, reference, 30)


def test_float16_features_match_reference_on_widened_features():
    rng = np.random.default_rng(7)
    qf, gf, *ids = feature_problem(rng)
    qh, gh = torch.from_numpy(qf).half(), torch.from_numpy(gf).half()
    distmat = compute_distance_matrix(qh.float(), gh.float(), "cosine").numpy()
    assert_matches_reference(evaluate_features(qh, gh, *ids, max_rank=15),
                             evaluate_rank_reference(distmat, *ids, max_rank=15), 15)


def test_unknown_metric_and_bad_features():
    qf, gf = np.zeros((2, 4), np.float32), np.zeros((3, 5), np.float32)
    with pytest.raises(ReIDError, match="metric"):
        evaluate_features(qf, qf, [1, 2], [1, 2], [0, 0], [1, 1], metric="manhattan")
    with pytest.raises(ReIDError, match="same width"):
        evaluate_features(qf, gf, [1, 2], [1, 2, 3], [0, 0], [1, 1, 1])


@CUDA
@pytest.mark.cuda
def test_cuda_matches_reference_and_measures_memory():
    rng = np.random.default_rng(9)
    qf, gf, *ids = feature_problem(rng, integer=True)  # exact dot products whatever the GEMM shape
    device = torch.device("cuda")
    qt, gt = torch.from_numpy(qf).to(device), torch.from_numpy(gf).to(device)
    distmat = compute_distance_matrix(qt, gt, "euclidean")
    assert distmat.device.type == "cuda"
    reference = evaluate_rank_reference(distmat.cpu().numpy(), *ids, max_rank=20)
    assert_matches_reference(evaluate_rank(distmat, *ids, max_rank=20), reference, 20)
    cuda_ids = [torch.as_tensor(a, device=device) for a in ids]
    result = evaluate_features(qt.half(), gt.half(), *cuda_ids, metric="euclidean", max_rank=20,
                               memory_budget_bytes=1)
    assert_matches_reference(result, reference, 20)
    assert result.peak_memory_bytes > 0


def test_public_api_is_importable_from_the_package():
    import reid.evaluation as evaluation

    assert evaluation.evaluate_features is evaluate_features
    assert evaluation.evaluate_rank is evaluate_rank
    assert evaluation.RankResult is RankResult
    assert callable(evaluation.re_ranking)
    # The split modules keep the old import paths: the package and reid.evaluation.rank give the same objects.
    from reid.evaluation import distances, protocol, rank, rerank

    assert evaluation.METRICS is rank.METRICS is protocol.METRICS == ("cosine", "euclidean")
    assert evaluation.FeatureDistances is rank.FeatureDistances is distances.FeatureDistances
    assert evaluation.compute_distance_matrix is compute_distance_matrix is distances.compute_distance_matrix
    assert RankResult is protocol.RankResult
    assert evaluation.evaluate_reranked is rerank.evaluate_reranked
    assert set(evaluation.__all__) >= {"METRICS", "FeatureDistances", "RankResult", "compute_distance_matrix",
                                       "evaluate_features", "evaluate_rank", "evaluate_reranked", "re_ranking"}


def test_evaluator_modules_import_only_public_names_from_each_other():
    # Issue 12: the modules of reid.evaluation share public names only, so a private helper can change freely.
    import ast
    from pathlib import Path

    import reid.evaluation as evaluation

    for module in ("rank", "rerank", "ranking", "memory", "distances", "protocol"):
        path = Path(evaluation.__file__).parent / f"{module}.py"
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("reid.evaluation"):
                private = [alias.name for alias in node.names if alias.name.startswith("_")]
                assert not private, f"{path.name}:{node.lineno} imports private names {private} from {node.module}"


def test_duplicated_gallery_rows_give_bit_identical_results_for_every_budget():
    # Many exact duplicates among non-integer features, several queries per block or one block per
    # 16 queries, float32 or float16 gallery: every budget gives the very same per-query numbers, equal
    # to evaluate_rank on compute_distance_matrix (the same distances, computed whole).
    rng = np.random.default_rng(10)
    base = rng.standard_normal((7, 40)).astype(np.float32)
    gf = base[rng.integers(0, 7, 230)]
    qf = np.concatenate([rng.standard_normal((30, 40)).astype(np.float32), base[:5]])
    ids = rng.integers(1, 4, 35), rng.integers(0, 4, 230), rng.integers(0, 3, 35), rng.integers(0, 3, 230)
    for gallery in (gf, torch.from_numpy(gf).half()):
        expected = evaluate_rank(compute_distance_matrix(qf, gallery, "euclidean"), *ids)
        for budget in (1, 30_000, 400_000, None):
            result = evaluate_features(qf, gallery, *ids, metric="euclidean", memory_budget_bytes=budget)
            for field in ("AP", "INP", "cmc", "query_indices"):
                np.testing.assert_array_equal(getattr(result, field), getattr(expected, field))


def test_empty_sets_and_overflowing_features_are_refused():
    with pytest.raises(ReIDError, match="query set is empty"):
        evaluate_rank(np.zeros((0, 3), np.float32), [], [1, 2, 3], [], [0, 0, 0])
    with pytest.raises(ReIDError, match="gallery is empty"):
        evaluate_features(np.ones((2, 4), np.float32), np.ones((0, 4), np.float32), [1, 2], [], [0, 0], [])
    # A float32 norm of 1e20 overflows; cosine distances would silently all become 1.
    qf = np.array([[1e20, 1.0]], np.float32)
    gf = np.array([[0.0, 1.0], [1e20, 0.0]], np.float32)
    for metric in ("cosine", "euclidean"):
        with pytest.raises(ReIDError, match="norm overflows"):
            evaluate_features(qf, gf, [1], [2, 1], [0], [1, 1], metric=metric)
