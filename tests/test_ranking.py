"""The ranking paths (candidates only, whole-row searchsorted, gallery-chunked) and their ordered keys."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import distances, ranking
from reid.evaluation.rank import compute_distance_matrix, evaluate_features, evaluate_rank
from reid.evaluation.reference import evaluate_rank_reference
from tests.test_rank import assert_matches_reference, has_valid_query, random_problem


@pytest.fixture(params=["auto", "candidates", "searchsorted"])
def ranking_path(request, monkeypatch):
    """Run a test with the automatic choice, or forcing one of the two ranking strategies."""
    factors = {"auto": ranking._SPARSE_CANDIDATE_FACTOR, "candidates": 0.0, "searchsorted": float("inf")}
    monkeypatch.setattr(ranking, "_SPARSE_CANDIDATE_FACTOR", factors[request.param])
    return request.param


@pytest.mark.parametrize("ties", [False, True], ids=["continuous", "integer-ties"])
def test_evaluate_rank_matches_reference_on_many_random_problems(ties, ranking_path):
    rng = np.random.default_rng(1 if ties else 2)
    checked = 0
    for _ in range(150):
        problem = random_problem(rng, ties)
        if not has_valid_query(*problem[1:]):
            continue
        max_rank = int(rng.integers(1, 60))  # often larger than the gallery
        reference = evaluate_rank_reference(*problem, max_rank=max_rank)
        assert_matches_reference(evaluate_rank(*problem, max_rank=max_rank), reference, max_rank)
        # One query per block and torch inputs: identical numbers.
        tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in problem]
        blocked = evaluate_rank(*tensors, max_rank=max_rank, memory_budget_bytes=1)
        assert_matches_reference(blocked, reference, max_rank)
        checked += 1
    assert checked > 100


def test_stable_tie_break_by_gallery_order_hand_computed(ranking_path):
    # All distances equal: the ranking is the gallery order. True matches (pid 1, camera 1) at
    # gallery indices 1 and 3; index 2 is pid 1 in the query's camera (discarded).
    distmat = np.zeros((1, 5), dtype=np.float32)
    result = evaluate_rank(distmat, np.array([1]), np.array([7, 1, 1, 1, 0]), np.array([0]),
                           np.array([1, 1, 0, 1, 1]), max_rank=4)
    # Kept order: 7, 1(match), 1(match), 0 -> matches at 0-based ranks 1 and 2.
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1])
    assert result.AP[0] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert result.INP[0] == pytest.approx(2 / 3)


def test_negative_zero_ties_with_zero(ranking_path):
    # -0.0 == 0.0, so gallery order decides: the distractor at index 0 ranks first.
    distmat = np.array([[0.0, -0.0]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [0, 1], [0], [1, 1])
    assert result.AP[0] == pytest.approx(0.5)


def test_negative_distances_are_ordered(ranking_path):
    distmat = np.array([[0.5, -2.0, -1.0, 3.0]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [1, 2, 1, 3], [0], [1, 1, 1, 1], max_rank=4)
    # Order: -2 (pid 2), -1 (match), 0.5 (match), 3 -> matches at ranks 1 and 2.
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1])


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_chunks_when_whole_rows_do_not_fit(monkeypatch, metric):
    # Gallery chunks of 48 images (the last one ragged), a budget far below 16 whole gallery rows, many
    # exact duplicates: the gallery-chunked ranking gives the very numbers of the whole-row path.
    monkeypatch.setattr(distances, "_MAX_GALLERY_CHUNK_ROWS", 48)
    rng = np.random.default_rng(15)
    base = rng.standard_normal((9, 20)).astype(np.float32)
    gf = base[rng.integers(0, 9, 500)] + (rng.random((500, 1)) < 0.5) * rng.standard_normal((500, 20)).astype(
        np.float32)
    qf = np.concatenate([rng.standard_normal((40, 20)).astype(np.float32), base[:4]])
    ids = rng.integers(0, 6, 44) + 1, rng.integers(0, 7, 500), rng.integers(0, 3, 44), rng.integers(0, 3, 500)
    used = []
    original = distances.FeatureDistances.column_chunks

    def recording_column_chunks(self, rows, buffer):
        for first, dist in original(self, rows, buffer):
            used.append((rows.start, first, dist.shape))
            yield first, dist

    monkeypatch.setattr(distances.FeatureDistances, "column_chunks", recording_column_chunks)
    for gallery in (gf, torch.from_numpy(gf).half()):  # multiplied in place, or converted chunk by chunk
        expected = evaluate_rank(compute_distance_matrix(qf, gallery, metric), *ids)
        reference = evaluate_rank_reference(compute_distance_matrix(qf, gallery, metric).numpy(), *ids)
        used.clear()
        result = evaluate_features(qf, gallery, *ids, metric=metric, memory_budget_bytes=60_000)
        assert {shape[1] for _, _, shape in used} == {48, 500 % 48}  # every chunk, the ragged last one too
        assert len({start for start, _, _ in used}) == 3  # 44 queries in blocks of 16 rows
        assert len(used) == 2 * 3 * 11  # two passes over 11 chunks per block
        for field in ("AP", "INP", "cmc", "query_indices"):
            np.testing.assert_array_equal(getattr(result, field), getattr(expected, field))
        assert_matches_reference(result, reference, 50)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_ordered_keys_sort_like_a_stable_sort_of_the_distances(nonnegative):
    rng = np.random.default_rng(17)
    special = [0.0, -0.0, 1e-45, 3.4e38, float("inf"), 0.5, 0.5]  # -0.0 == 0.0, a denormal, ties
    if not nonnegative:
        special += [-1e-45, -3.4e38, float("-inf"), -0.5, -0.5]
    values = np.concatenate([special, rng.integers(0 if nonnegative else -3, 4, 200) / 2,
                             rng.standard_normal(200) ** (2 if nonnegative else 1)]).astype(np.float32)
    keys = ranking.ordered_keys(torch.from_numpy(values), torch.arange(values.size), values.size, nonnegative)
    assert keys.dtype == torch.int64
    np.testing.assert_array_equal(torch.argsort(keys).numpy(), np.argsort(values, kind="stable"))
    assert len(set(keys.tolist())) == values.size  # unique: the gallery index breaks every tie
