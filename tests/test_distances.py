"""Feature distances: values, and bit-identical distances whatever block or chunk computes them."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation import distances as distances_module
from reid.evaluation.distances import GEMM_ROWS, FeatureDistances, gallery_chunk_rows, padded
from reid.evaluation.rank import compute_distance_matrix, evaluate_features, evaluate_rank
from reid.evaluation.reference import evaluate_rank_reference
from tests.test_rank import assert_matches_reference

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def test_compute_distance_matrix_values():
    rng = np.random.default_rng(5)
    qf, gf = rng.standard_normal((6, 8)).astype(np.float32), rng.standard_normal((9, 8)).astype(np.float32)
    euclidean = np.sqrt(((qf[:, None] - gf[None]) ** 2).sum(-1))
    cosine = 1 - (qf @ gf.T) / np.linalg.norm(qf, axis=1)[:, None] / np.linalg.norm(gf, axis=1)[None]
    qn, gn = qf / np.linalg.norm(qf, axis=1, keepdims=True), gf / np.linalg.norm(gf, axis=1, keepdims=True)
    normalised = np.sqrt(((qn[:, None] - gn[None]) ** 2).sum(-1))
    np.testing.assert_allclose(compute_distance_matrix(qf, gf, "euclidean").numpy(), euclidean, atol=1e-5)
    np.testing.assert_allclose(compute_distance_matrix(qf, gf, "cosine").numpy(), cosine, atol=1e-6)
    np.testing.assert_allclose(compute_distance_matrix(qf, gf, "euclidean", normalize=True).numpy(),
                               normalised, atol=1e-5)


@pytest.mark.parametrize("dim", [11, 64, 300])
@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_identical_non_integer_gallery_rows_tie_whatever_the_budget(dim, metric):
    # The audit's reproducer: 101 copies of one random (non-integer) feature. Every query sees the same
    # distance to all of them, so the ranking is the gallery order; a 1-row product (GEMV) used to give
    # the tail copies other float32 values, and mAP then depended on memory_budget_bytes.
    rng = np.random.default_rng(dim)
    qf = rng.standard_normal((8, dim)).astype(np.float32)
    gf = np.repeat(rng.standard_normal((1, dim)).astype(np.float32), 101, axis=0)
    q_pids, g_pids = np.tile([1, 2], 4), np.tile([1, 2], 51)[:101]
    q_cams, g_cams = np.zeros(8, np.int64), np.ones(101, np.int64)
    distmat = compute_distance_matrix(qf, gf, metric)
    assert bool((distmat == distmat[:, :1]).all()), "identical gallery features must get identical distances"
    gallery_order = evaluate_rank_reference(np.zeros((8, 101), np.float32), q_pids, g_pids, q_cams, g_cams)
    assert gallery_order["mAP"] == pytest.approx((0.528899 + 0.5) / 2, abs=1e-6)
    results = [evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams, metric=metric, memory_budget_bytes=budget)
               for budget in (1, 5_000, None)]
    for result in results:
        assert_matches_reference(result, gallery_order, 50)
        np.testing.assert_array_equal(result.AP, results[-1].AP)


def test_distance_rows_of_any_queries_equal_the_matrix():
    rng = np.random.default_rng(11)
    qf, gf = rng.standard_normal((37, 23)).astype(np.float32), rng.standard_normal((50, 23)).astype(np.float32)
    for metric, normalize in (("cosine", False), ("euclidean", True)):
        distances = FeatureDistances(qf, gf, metric, normalize)
        matrix = distances.matrix()
        assert torch.equal(matrix, compute_distance_matrix(qf, gf, metric, normalize))
        for picked in ([5], [36, 0, 17], np.arange(3, 30)):
            assert torch.equal(distances.rows(picked), matrix[torch.as_tensor(picked)])


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("chunk_cap", [None, 64], ids=["one-chunk", "many-chunks"])
def test_cuda_duplicated_gallery_rows_do_not_depend_on_the_budget(monkeypatch, chunk_cap):
    # cuBLAS may pick other kernels for other shapes or output strides; products are padded to multiples
    # of 16 rows and the gallery chunks are fixed, and this checks that ties still come out the same on
    # the GPU, also through the gallery-chunked path (budget 1), whose chunk buffers have another stride.
    if chunk_cap:
        monkeypatch.setattr(distances_module, "_MAX_GALLERY_CHUNK_ROWS", chunk_cap)
    rng = np.random.default_rng(15)
    base = rng.standard_normal((5, 300)).astype(np.float32)
    gf = torch.from_numpy(base[rng.integers(0, 5, 700)]).cuda()
    qf = torch.from_numpy(rng.standard_normal((90, 300)).astype(np.float32)).cuda()
    ids = rng.integers(1, 4, 90), rng.integers(0, 4, 700), rng.integers(0, 3, 90), rng.integers(0, 3, 700)
    distmat = compute_distance_matrix(qf, gf)
    for row in range(5):  # identical gallery features, identical distances
        same = torch.from_numpy(np.flatnonzero(np.all(base[row] == gf.cpu().numpy(), axis=1))).cuda()
        assert bool((distmat[:, same] == distmat[:, same[:1]]).all())
    expected = evaluate_rank(distmat, *ids)
    for budget in (1, 200_000, None):
        result = evaluate_features(qf, gf, *ids, memory_budget_bytes=budget)
        np.testing.assert_array_equal(result.AP, expected.AP)


def test_products_are_padded_to_whole_granules_and_gallery_chunks_are_fixed():
    assert GEMM_ROWS == 16
    assert [padded(n) for n in (0, 1, 16, 17, 1000)] == [16, 16, 16, 32, 1008]
    # 32 MiB of float32 features per chunk, at most 16,384 rows, at least one granule; a multiple of 16.
    assert gallery_chunk_rows(2048) == 4096 and gallery_chunk_rows(8) == 16384
    assert gallery_chunk_rows(10**7) == 16 and gallery_chunk_rows(3000) % 16 == 0
    # Every product of a block sees padded operands: a 5-row block and a 1-row block give the same rows.
    rng = np.random.default_rng(18)
    qf, gf = rng.standard_normal((5, 33)).astype(np.float32), rng.standard_normal((21, 33)).astype(np.float32)
    fd = FeatureDistances(qf, gf, "euclidean")
    out = torch.full((padded(5), 21), float("nan"))
    block = fd.block(slice(0, 5), out)
    assert block.shape == (5, 21) and block.data_ptr() == out.data_ptr()
    assert torch.equal(fd.rows([3]), block[3:4])
