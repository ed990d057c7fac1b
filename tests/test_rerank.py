"""k-reciprocal re-ranking: parity with the dense numpy reference, block invariance, devices."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.reference import re_ranking_reference
from reid.evaluation.rerank import re_ranking
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


@CUDA
@pytest.mark.cuda
def test_cuda_matches_reference():
    qf, gf = clustered_features(seed=6)
    actual = re_ranking(torch.from_numpy(qf).cuda(), torch.from_numpy(gf).cuda())
    assert actual.device.type == "cuda"
    np.testing.assert_allclose(actual.cpu().numpy(), re_ranking_reference(qf, gf), atol=1e-5, rtol=0)
