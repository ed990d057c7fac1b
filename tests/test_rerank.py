"""k-reciprocal re-ranking: parity with the dense numpy reference, block invariance, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import rerank
from reid.evaluation.rank import evaluate_rank
from reid.evaluation.reference import re_ranking_reference
from reid.evaluation.rerank import evaluate_reranked, re_ranking
from reid.utils.errors import ReIDError

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def clustered_features(seed: int, num_q: int = 30, num_g: int = 80, dim: int = 16):
    """Features around a few identity centres, so reciprocal sets and expansions are non-trivial."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 10, num_q + num_g)
    centres = rng.standard_normal((10, dim))
    feats = (centres[ids] + 0.5 * rng.standard_normal((num_q + num_g, dim))).astype(np.float32)
    return feats[:num_q], feats[num_q:]


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (3, 1, 0.3), (5, 3, 0.5), (1, 1, 0.0)])
def test_matches_numpy_reference(k1, k2, lambda_value):
    qf, gf = clustered_features(seed=k1 * 10 + k2)
    expected = re_ranking_reference(qf, gf, k1, k2, lambda_value)
    actual = re_ranking(torch.from_numpy(qf), torch.from_numpy(gf), k1, k2, lambda_value)
    assert actual.shape == (30, 80) and actual.dtype == torch.float32
    np.testing.assert_allclose(actual.numpy(), expected, atol=1e-5, rtol=0)


def test_reranking_changes_the_original_distances():
    # Guards against a pass that silently does nothing: lambda=1 is the normalised original distance.
    qf, gf = clustered_features(seed=1)
    original = re_ranking(qf, gf, lambda_value=1.0)
    reranked = re_ranking(qf, gf)
    assert (original - reranked).abs().max() > 0.05
    np.testing.assert_allclose(original.numpy(), re_ranking_reference(qf, gf, lambda_value=1.0), atol=1e-5)


def test_block_splitting_gives_the_same_result():
    qf, gf = clustered_features(seed=2, num_q=20, num_g=50)
    whole = re_ranking(qf, gf)
    tiny_blocks = re_ranking(qf, gf, memory_budget_bytes=1)
    np.testing.assert_allclose(tiny_blocks.numpy(), whole.numpy(), atol=1e-6, rtol=0)


def test_numpy_and_float16_inputs():
    qf, gf = clustered_features(seed=3)
    qh, gh = qf.astype(np.float16), gf.astype(np.float16)
    expected = re_ranking_reference(qh.astype(np.float32), gh.astype(np.float32))
    np.testing.assert_allclose(re_ranking(qh, gh).numpy(), expected, atol=1e-5, rtol=0)
    np.testing.assert_allclose(re_ranking(torch.from_numpy(qh), torch.from_numpy(gh)).numpy(), expected,
                               atol=1e-5, rtol=0)


def test_fewer_images_than_neighbourhood():
    qf, gf = clustered_features(seed=4, num_q=3, num_g=5)
    np.testing.assert_allclose(re_ranking(qf, gf).numpy(), re_ranking_reference(qf, gf), atol=1e-5)


def test_invalid_k_raises():
    qf, gf = clustered_features(seed=5, num_q=2, num_g=3)
    with pytest.raises(ReIDError, match="k1"):
        re_ranking(qf, gf, k1=0)


@pytest.mark.parametrize("bad, message", [({"k1": 2.5}, "k1"), ({"k2": True}, "k2"), ({"k2": None}, "k2"),
                                          ({"lambda_value": 1.5}, "lambda"), ({"lambda_value": "0.3"}, "lambda")])
def test_invalid_parameters_say_which(bad, message):
    qf, gf = clustered_features(seed=5, num_q=2, num_g=3)
    with pytest.raises(ReIDError, match=message):
        re_ranking(qf, gf, **bad)


def duplicated_features(seed: int, num_q: int = 33, num_g: int = 66, dim: int = 38):
    """Non-integer features with many exact duplicates: equal distances at every neighbourhood boundary."""
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((20, dim)).astype(np.float32)
    feats = base[rng.integers(0, 20, num_q + num_g)]
    return feats[:num_q], feats[num_q:]


def test_exact_ties_give_identical_results_for_every_budget():
    # The audit's case (33 x 66, 38-d, k1=17, k2=4): with exact float32 ties at the half_k1 boundary,
    # topk's arbitrary choice among equal values made budget 1 differ from the default by up to 0.02.
    # Neighbours are now ordered by (distance, index), like the reference's stable argsort.
    for seed in (0, 3):
        qf, gf = duplicated_features(seed)
        whole = re_ranking(qf, gf, k1=17, k2=4)
        for budget in (1, 60_000):
            assert torch.equal(re_ranking(qf, gf, k1=17, k2=4, memory_budget_bytes=budget), whole)


def test_k_smallest_breaks_ties_by_index():
    dist = torch.tensor([[0.5, 0.2, 0.5, 0.1, 0.5, 0.5], [1.0, 1.0, 1.0, 1.0, 1.0, 1.0]])
    values, index = rerank._k_smallest(dist, 3)  # four 0.5s compete for row 0's last place: index 0 wins
    assert [sorted(row) for row in index.tolist()] == [[0, 1, 3], [0, 1, 2]]
    assert torch.equal(values, dist.gather(1, index))


def test_evaluate_reranked_equals_the_dense_path_for_every_budget():
    qf, gf = duplicated_features(seed=1, num_q=40, num_g=90)
    rng = np.random.default_rng(1)
    ids = rng.integers(1, 6, 40), rng.integers(0, 6, 90), rng.integers(0, 3, 40), rng.integers(0, 3, 90)
    expected = evaluate_rank(re_ranking(qf, gf, k1=9, k2=3), *ids, max_rank=20)
    peaks = []
    for budget in (1, 20_000, None):
        result = evaluate_reranked(qf, gf, *ids, k1=9, k2=3, max_rank=20, memory_budget_bytes=budget)
        for field in ("AP", "INP", "cmc", "query_indices"):
            np.testing.assert_array_equal(getattr(result, field), getattr(expected, field))
        peaks.append(result.peak_memory_bytes)
    assert 0 < peaks[0] < peaks[-1]


def test_evaluate_reranked_ranks_block_by_block(monkeypatch):
    # More queries than one block holds: several blocks are re-ranked and ranked, none is the full matrix.
    qf, gf = clustered_features(seed=7, num_q=50, num_g=120)
    rng = np.random.default_rng(7)
    ids = rng.integers(1, 4, 50), rng.integers(1, 4, 120), np.zeros(50, np.int64), np.ones(120, np.int64)
    sizes = []
    original = rerank._KReciprocal.block

    def recording_block(self, start, end, out, chunk_budget):
        sizes.append(end - start)
        return original(self, start, end, out, chunk_budget)

    monkeypatch.setattr(rerank._KReciprocal, "block", recording_block)
    result = evaluate_reranked(qf, gf, *ids, memory_budget_bytes=200_000)
    assert len(sizes) >= 2 and max(sizes) < 50 and sum(sizes) == 50
    unbounded = evaluate_rank(re_ranking(qf, gf), *ids)
    np.testing.assert_array_equal(result.AP, unbounded.AP)


def test_evaluate_reranked_reports_both_stages_to_the_end():
    # Several neighbour blocks and query blocks (tiny budget): each stage counts up to its total, monotonically.
    qf, gf = clustered_features(seed=3, num_q=50, num_g=120)
    rng = np.random.default_rng(3)
    ids = rng.integers(1, 4, 50), rng.integers(1, 4, 120), np.zeros(50, np.int64), np.ones(120, np.int64)
    seen = {}

    class Recording:
        def __init__(self, stage, total, unit):
            self.counts, self.total, self.closed = [], total, False
            seen[stage] = self

        def update(self, n=1):
            self.set((self.counts[-1] if self.counts else 0) + n)

        def set(self, done):
            self.counts.append(done)

        def close(self):
            self.closed = True

    result = evaluate_reranked(qf, gf, *ids, memory_budget_bytes=1, progress=Recording)
    assert set(seen) == {"neighbours", "queries"}
    for stage in seen.values():
        assert stage.closed and len(stage.counts) >= 2
        assert stage.counts == sorted(stage.counts) and stage.counts[-1] == stage.total
    assert seen["queries"].total == 50
    np.testing.assert_array_equal(result.AP, evaluate_rank(re_ranking(qf, gf), *ids).AP)


@CUDA
@pytest.mark.cuda
def test_cuda_matches_reference():
    qf, gf = clustered_features(seed=6)
    actual = re_ranking(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
    assert actual.device.type == "cuda"
    np.testing.assert_allclose(actual.cpu().numpy(), re_ranking_reference(qf, gf), atol=1e-5, rtol=0)


@CUDA
@pytest.mark.cuda
def test_cuda_ties_and_blocked_evaluation():
    qf, gf = duplicated_features(seed=0)
    qc, gc = torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda()
    whole = re_ranking(qc, gc, k1=17, k2=4)
    assert torch.equal(re_ranking(qc, gc, k1=17, k2=4, memory_budget_bytes=1), whole)
    np.testing.assert_allclose(whole.cpu().numpy(), re_ranking(qf, gf, k1=17, k2=4).numpy(), atol=1e-5, rtol=0)
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 6, 33), rng.integers(0, 6, 66), rng.integers(0, 3, 33), rng.integers(0, 3, 66)
    expected = evaluate_rank(whole, *ids)
    result = evaluate_reranked(qc, gc, *ids, k1=17, k2=4, memory_budget_bytes=1)
    np.testing.assert_array_equal(result.AP, expected.AP)
    assert result.peak_memory_bytes > 0
