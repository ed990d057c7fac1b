"""CMC / mAP / mINP: exact parity with the per-query numpy reference, protocol details, blocking."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from reid.evaluation import rank
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


@pytest.fixture(params=["auto", "candidates", "searchsorted"])
def ranking_path(request, monkeypatch):
    """Run a test with the automatic choice, or forcing one of the two ranking strategies."""
    factors = {"auto": rank._SPARSE_CANDIDATE_FACTOR, "candidates": 0.0, "searchsorted": float("inf")}
    monkeypatch.setattr(rank, "_SPARSE_CANDIDATE_FACTOR", factors[request.param])
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


def test_unmatched_queries_are_excluded_and_listed():
    distmat = np.arange(12, dtype=np.float32).reshape(3, 4)
    q_pids, g_pids = np.array([1, 2, 3]), np.array([1, 2, 2, 0])
    q_cams, g_cams = np.array([0, 0, 0]), np.array([1, 0, 0, 1])
    # Query 0 matches gallery 0; query 1's identity is only in its own camera; query 2 is absent.
    result = evaluate_rank(distmat, q_pids, g_pids, q_cams, g_cams, max_rank=3)
    np.testing.assert_array_equal(result.query_indices, [0])
    assert result.num_valid_queries == 1
    assert result.mAP == pytest.approx(1.0)


def test_max_rank_beyond_gallery_pads_with_last_value():
    distmat = np.array([[0.3, 0.1, 0.2]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [2, 3, 1], [0], [1, 1, 1], max_rank=6)
    np.testing.assert_allclose(result.cmc, [0, 1, 1, 1, 1, 1])


def test_float64_input_is_compared_in_float32():
    rng = np.random.default_rng(3)
    distmat, *ids = random_problem(rng, ties=False, dtype=np.float64)
    while not has_valid_query(*ids):
        distmat, *ids = random_problem(rng, ties=False, dtype=np.float64)
    reference = evaluate_rank_reference(distmat.astype(np.float32), *ids, max_rank=10)
    assert_matches_reference(evaluate_rank(distmat, *ids, max_rank=10), reference, 10)


def test_as_dict_and_short_max_rank():
    distmat = np.array([[0.1, 0.2]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [1, 2], [0], [1, 1], max_rank=3)
    assert result.as_dict() == {"R1": 1.0, "mAP": 1.0, "mINP": 1.0}
    wide = evaluate_rank(distmat, [1], [1, 2], [0], [1, 1], max_rank=10)
    assert set(wide.as_dict()) == {"R1", "R5", "R10", "mAP", "mINP"}


@pytest.mark.parametrize("bad, message", [
    ({"q_pids": [5]}, "true match"),
    ({"g_pids": [1]}, "g_pids"),
    ({"distmat": np.array([[np.nan, 0.0]], dtype=np.float32)}, "NaN"),
    ({"max_rank": 0}, "max_rank"),
])
def test_user_errors_raise_reid_error(bad, message):
    args = {"distmat": np.array([[0.1, 0.2]], dtype=np.float32), "q_pids": [1], "g_pids": [1, 2],
            "q_camids": [0], "g_camids": [1, 1], "max_rank": 5}
    args.update(bad)
    with pytest.raises(ReIDError, match=message):
        evaluate_rank(**args)


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


def test_peak_memory_stays_within_budget():
    rng = np.random.default_rng(8)
    qf, gf, *ids = feature_problem(rng, num_q=60, num_g=400)
    budget = 200_000  # room for several queries per block
    result = evaluate_features(qf, gf, *ids, memory_budget_bytes=budget)
    assert 0 < result.peak_memory_bytes <= budget
    unbounded = evaluate_features(qf, gf, *ids)
    assert unbounded.peak_memory_bytes > result.peak_memory_bytes
    np.testing.assert_allclose(unbounded.AP, result.AP, atol=1e-12)


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


# --------------------------------------------------------------------------------------------------
# Block-shape independence, block caps, input checks


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


def test_distance_rows_of_any_queries_equal_the_matrix():
    rng = np.random.default_rng(11)
    qf, gf = rng.standard_normal((37, 23)).astype(np.float32), rng.standard_normal((50, 23)).astype(np.float32)
    for metric, normalize in (("cosine", False), ("euclidean", True)):
        distances = rank.FeatureDistances(qf, gf, metric, normalize)
        matrix = distances.matrix()
        assert torch.equal(matrix, compute_distance_matrix(qf, gf, metric, normalize))
        for picked in ([5], [36, 0, 17], np.arange(3, 30)):
            assert torch.equal(distances.rows(picked), matrix[torch.as_tensor(picked)])


def test_blocks_really_split_the_work_and_agree(monkeypatch):
    rng = np.random.default_rng(12)
    qf, gf, *ids = feature_problem(rng, num_q=70, num_g=2000, dim=8)
    whole = evaluate_features(qf, gf, *ids, metric="euclidean")
    blocks = []
    original_block = rank.FeatureDistances.block

    def counting_block(self, rows, out):
        blocks.append(rows.stop - rows.start)
        return original_block(self, rows, out)

    monkeypatch.setattr(rank.FeatureDistances, "block", counting_block)
    split = evaluate_features(qf, gf, *ids, metric="euclidean", memory_budget_bytes=300_000)
    assert len(blocks) >= 3 and max(blocks) < 70 and sum(blocks) == 70
    assert all(rows % 16 == 0 for rows in blocks[:-1])
    assert split.peak_memory_bytes <= 300_000 < 4 * 70 * 2000  # within budget, below the full matrix alone
    for field in ("AP", "INP", "cmc"):
        np.testing.assert_array_equal(getattr(split, field), getattr(whole, field))


def test_full_matrix_is_never_built_when_queries_exceed_the_block_cap(monkeypatch):
    rng = np.random.default_rng(13)
    num_q = rank._MAX_BLOCK_ROWS + 60
    qf, gf = rng.standard_normal((num_q, 6)).astype(np.float32), rng.standard_normal((40, 6)).astype(np.float32)
    q_pids, g_pids = rng.integers(1, 5, num_q), rng.integers(1, 5, 40)
    buffers = []
    original_block = rank.FeatureDistances.block

    def recording_block(self, rows, out):
        buffers.append(out.shape[0])
        return original_block(self, rows, out)

    monkeypatch.setattr(rank.FeatureDistances, "block", recording_block)
    evaluate_features(qf, gf, q_pids, g_pids, np.zeros(num_q, np.int64), np.ones(40, np.int64))
    # The default budget holds the whole matrix many times over, and still two blocks were used.
    assert buffers == [rank._MAX_BLOCK_ROWS, rank._MAX_BLOCK_ROWS]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_chunks_when_whole_rows_do_not_fit(monkeypatch, metric):
    # Gallery chunks of 48 images (the last one ragged), a budget far below 16 whole gallery rows, many
    # exact duplicates: the gallery-chunked ranking gives the very numbers of the whole-row path.
    monkeypatch.setattr(rank, "_MAX_GALLERY_CHUNK_ROWS", 48)
    rng = np.random.default_rng(15)
    base = rng.standard_normal((9, 20)).astype(np.float32)
    gf = base[rng.integers(0, 9, 500)] + (rng.random((500, 1)) < 0.5) * rng.standard_normal((500, 20)).astype(
        np.float32)
    qf = np.concatenate([rng.standard_normal((40, 20)).astype(np.float32), base[:4]])
    ids = rng.integers(0, 6, 44) + 1, rng.integers(0, 7, 500), rng.integers(0, 3, 44), rng.integers(0, 3, 500)
    used = []
    original = rank.FeatureDistances.column_chunks

    def recording_column_chunks(self, rows, buffer):
        for first, dist in original(self, rows, buffer):
            used.append((rows.start, first, dist.shape))
            yield first, dist

    monkeypatch.setattr(rank.FeatureDistances, "column_chunks", recording_column_chunks)
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


@pytest.mark.slow
def test_gallery_chunked_memory_does_not_grow_with_the_gallery(tmp_path):
    # Measured, not accounted: the resident-set high-water mark of a fresh process while it evaluates a
    # 400,000-image gallery under a 16 MiB budget. 16 whole rows of distances and their ranking keys
    # would take over 150 MiB; the gallery-chunked path needs the budget plus ~50 bytes per image.
    script = tmp_path / "measure.py"
    script.write_text(
        "import sys, numpy as np, torch\n"
        "from reid.evaluation import evaluate_features\n"
        "torch.set_num_threads(1)\n"
        "rng = np.random.default_rng(0)\n"
        "num_g = 400_000\n"
        "qf = rng.standard_normal((40, 8)).astype(np.float32)\n"
        "gf = rng.standard_normal((num_g, 8)).astype(np.float32)\n"
        "ids = (rng.integers(1, 50, 40), rng.integers(0, 50, num_g),\n"
        "       rng.integers(0, 4, 40), rng.integers(0, 4, num_g))\n"
        "evaluate_features(qf[:16], gf[:4096], *[i[:16] if len(i) == 40 else i[:4096] for i in ids],\n"
        "                  memory_budget_bytes=16 * 2**20)  # warm up the code paths\n"
        "def status(key):\n"
        "    for line in open('/proc/self/status'):\n"
        "        if line.startswith(key): return int(line.split()[1]) * 1024\n"
        "try:\n"
        "    open('/proc/self/clear_refs', 'w').write('5')  # reset the high-water mark to the current RSS\n"
        "except OSError:\n"
        "    sys.exit(3)\n"
        "before = status('VmRSS:')\n"
        "result = evaluate_features(qf, gf, *ids, memory_budget_bytes=16 * 2**20)\n"
        "print(status('VmHWM:') - before, result.peak_memory_bytes)\n")
    import os
    import subprocess
    import sys
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    if done.returncode == 3 or not Path("/proc/self/clear_refs").exists():
        pytest.skip("this kernel cannot reset the resident-set high-water mark")
    assert done.returncode == 0, done.stderr
    growth, accounted = map(int, done.stdout.split())
    assert growth < 64 * 2**20, f"RSS grew by {growth / 2**20:.0f} MiB"
    assert accounted < 64 * 2**20


def test_numpy_views_with_negative_strides_are_accepted():
    rng = np.random.default_rng(14)
    distmat, *ids = random_problem(rng, ties=False)
    while not has_valid_query(*ids):
        distmat, *ids = random_problem(rng, ties=False)
    q_pids, g_pids, q_cams, g_cams = ids
    flipped = evaluate_rank(distmat[:, ::-1], q_pids, g_pids[::-1], q_cams, g_cams[::-1], max_rank=5)
    reference = evaluate_rank_reference(np.ascontiguousarray(distmat[:, ::-1]), q_pids, g_pids[::-1].copy(),
                                        q_cams, g_cams[::-1].copy(), max_rank=5)
    assert_matches_reference(flipped, reference, 5)
    qf, gf, *feature_ids = feature_problem(rng)
    q_pids, g_pids, q_cams, g_cams = feature_ids
    reversed_rows = evaluate_features(qf[::-1], gf, q_pids[::-1], g_pids, q_cams[::-1], g_cams)
    plain = evaluate_features(qf, gf, q_pids, g_pids, q_cams, g_cams)
    np.testing.assert_array_equal(reversed_rows.AP, plain.AP[::-1])  # the same queries, reversed


@pytest.mark.parametrize("bad, message", [
    ({"distmat": np.array([["a", "b"]], dtype=object)}, "dtype object"),
    ({"distmat": np.array([["0.1", "0.2"]])}, "dtype <U3"),
    ({"q_pids": np.array([None], dtype=object)}, "q_pids must hold numbers"),
    ({"distmat": np.array([[True, False]])}, "real numbers"),
    ({"distmat": np.array([[0.1 + 1j, 0.2]], dtype=np.complex64)}, "real numbers"),
    ({"g_pids": np.array([True, False])}, "integer ids"),
    ({"max_rank": None}, "max_rank"),
    ({"max_rank": True}, "max_rank"),
    ({"max_rank": 2.5}, "max_rank"),
    ({"memory_budget_bytes": 0}, "memory_budget_bytes"),
])
def test_invalid_inputs_say_why(bad, message):
    args = {"distmat": np.array([[0.1, 0.2]], dtype=np.float32), "q_pids": [1], "g_pids": [1, 2],
            "q_camids": [0], "g_camids": [1, 1], "max_rank": 5}
    args.update(bad)
    with pytest.raises(ReIDError, match=message):
        evaluate_rank(**args)


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


@CUDA
@pytest.mark.cuda
@pytest.mark.parametrize("chunk_cap", [None, 64], ids=["one-chunk", "many-chunks"])
def test_cuda_duplicated_gallery_rows_do_not_depend_on_the_budget(monkeypatch, chunk_cap):
    # cuBLAS may pick other kernels for other shapes or output strides; products are padded to multiples
    # of 16 rows and the gallery chunks are fixed, and this checks that ties still come out the same on
    # the GPU, also through the gallery-chunked path (budget 1), whose chunk buffers have another stride.
    if chunk_cap:
        monkeypatch.setattr(rank, "_MAX_GALLERY_CHUNK_ROWS", chunk_cap)
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
