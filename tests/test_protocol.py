"""The Market-1501 protocol: which queries count, junk, the CMC length, RankResult, input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.evaluation.protocol import Identities, RankResult, identity_pairs
from reid.evaluation.rank import evaluate_features, evaluate_rank
from reid.evaluation.reference import evaluate_rank_reference
from reid.utils.errors import ReIDError
from tests.test_rank import assert_matches_reference, feature_problem, has_valid_query, random_problem


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


def test_as_dict_and_short_max_rank():
    distmat = np.array([[0.1, 0.2]], dtype=np.float32)
    result = evaluate_rank(distmat, [1], [1, 2], [0], [1, 1], max_rank=3)
    assert result.as_dict() == {"R1": 1.0, "mAP": 1.0, "mINP": 1.0}
    wide = evaluate_rank(distmat, [1], [1, 2], [0], [1, 1], max_rank=10)
    assert set(wide.as_dict()) == {"R1", "R5", "R10", "mAP", "mINP"}


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
    ({"q_pids": [5]}, "true match"),
    ({"g_pids": [1]}, "g_pids"),
    ({"distmat": np.array([[np.nan, 0.0]], dtype=np.float32)}, "NaN"),
    ({"max_rank": 0}, "max_rank"),
])
def test_invalid_inputs_say_why(bad, message):
    args = {"distmat": np.array([[0.1, 0.2]], dtype=np.float32), "q_pids": [1], "g_pids": [1, 2],
            "q_camids": [0], "g_camids": [1, 1], "max_rank": 5}
    args.update(bad)
    with pytest.raises(ReIDError, match=message):
        evaluate_rank(**args)


def test_rank_result_repr_is_a_short_summary():
    result = evaluate_rank(np.array([[0.1, 0.2, 0.3]], np.float32), [1], [2, 1, 1], [0], [1, 1, 0], max_rank=50)
    # Ranking: pid 2, match, junk (same camera, dropped) -> first match at rank 1, AP = INP = 1/2.
    assert repr(result) == "RankResult(R1=0.0000, mAP=0.5000, mINP=0.5000, queries=1)"
    rng = np.random.default_rng(16)
    qf, gf, *ids = feature_problem(rng, num_q=400, num_g=900)
    big = evaluate_features(qf, gf, *ids)
    text = repr(big)
    assert text == (f"RankResult(R1={big.cmc[0]:.4f}, mAP={big.mAP:.4f}, mINP={big.mINP:.4f}, "
                    f"queries={big.num_valid_queries})")
    assert len(text) < 80 and str(big) == text  # no per-query array, whatever the number of queries
    assert isinstance(big, RankResult)


def test_identity_pairs_split_true_matches_from_same_camera_junk():
    # Query 0: pid 1, camera 0; query 1: pid 2, camera 1; query 2: pid 9 (absent from the gallery).
    ids = Identities([1, 2, 9], [1, 2, 1, 0, 1, 2], [0, 1, 0], [1, 1, 0, 0, 2, 0], 3, 6, torch.device("cpu"))
    match_rows, match_cols, junk_rows, junk_cols, num_matches = identity_pairs(ids, 0, 3)
    assert list(zip(match_rows.tolist(), match_cols.tolist())) == [(0, 0), (0, 4), (1, 5)]
    assert list(zip(junk_rows.tolist(), junk_cols.tolist())) == [(0, 2), (1, 1)]
    assert num_matches.tolist() == [2, 1, 0]
    # A block of queries gets rows within the block.
    rows, cols, *_ = identity_pairs(ids, 1, 2)
    assert rows.tolist() == [0] and cols.tolist() == [5]
    assert ids.nbytes == 8 * (4 * 3 + 4 * 6)  # 4 int64 per query, 4 int64 per gallery image


def test_a_result_unpacks_as_torchreids_cmc_and_map():
    """torchreid users write ``cmc, mAP = evaluate_rank(...)``; that works and keeps every other field."""
    from reid.evaluation import evaluate_rank

    distmat = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.3]])
    result = evaluate_rank(distmat, np.array([1, 2]), np.array([1, 2, 2]), np.array([0, 0]), np.array([1, 1, 1]),
                           max_rank=3)
    cmc, mAP = result
    assert cmc is result.cmc and mAP == result.mAP
    assert list(cmc) == [1.0, 1.0, 1.0] and mAP == pytest.approx((1.0 + 1.0) / 2) and result.mINP > 0
