"""Plain numpy reference implementations, for tests and benchmarks only.

They follow the published algorithms step by step, one query (or image) at a time, with full sorts
and dense matrices: slow and memory hungry, but easy to check by eye. The torch implementations in
:mod:`reid.evaluation.rank` and :mod:`reid.evaluation.rerank` must agree with them.
"""

from __future__ import annotations

import numpy as np


def evaluate_rank_reference(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int = 50,
) -> dict:
    """Market-1501 CMC/mAP/mINP, one query at a time (the torchreid / fast-reid protocol).

    Each row is sorted with a stable sort (ties keep gallery order); gallery images of the query's
    identity and camera are dropped; queries without a remaining true match are skipped. A query's
    CMC row shorter than ``max_rank`` (small gallery) is padded with its last value.

    Returns:
        dict with ``cmc`` (max_rank,), ``mAP``, ``mINP``, ``AP``, ``INP`` (per counted query) and
        ``query_indices``.
    """
    distmat = np.asarray(distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    all_cmc, all_ap, all_inp, counted = [], [], [], []
    for q in range(distmat.shape[0]):
        order = np.argsort(distmat[q], kind="stable")
        same_id = g_pids[order] == q_pids[q]
        discard = same_id & (g_camids[order] == q_camids[q])
        matches = same_id[~discard].astype(np.int64)
        if not matches.any():
            continue
        hits_so_far = matches.cumsum()
        cmc = np.minimum(hits_so_far, 1)[:max_rank]
        all_cmc.append(np.pad(cmc, (0, max_rank - len(cmc)), mode="edge"))
        precision = hits_so_far / np.arange(1, len(matches) + 1)
        all_ap.append((precision * matches).sum() / matches.sum())
        hardest = np.flatnonzero(matches).max()
        all_inp.append(hits_so_far[hardest] / (hardest + 1.0))
        counted.append(q)
    if not counted:
        raise ValueError("no query has a true match in the gallery")
    return {
        "cmc": np.mean(np.asarray(all_cmc, dtype=np.float64), axis=0),
        "mAP": float(np.mean(all_ap)),
        "mINP": float(np.mean(all_inp)),
        "AP": np.asarray(all_ap),
        "INP": np.asarray(all_inp),
        "query_indices": np.asarray(counted),
    }


def re_ranking_reference(
    qf: np.ndarray, gf: np.ndarray, k1: int = 20, k2: int = 6, lambda_value: float = 0.3
) -> np.ndarray:
    """k-reciprocal re-ranking (Zhong et al., CVPR 2017) on the dense (q+g)^2 matrix, in float32.

    The usual implementation (BoT / torchreid): squared euclidean distances of all query and gallery
    features, each column divided by its max then transposed; k-reciprocal sets from full argsorts
    (stable here, so equal distances are ordered by index; the original's default sort leaves that open),
    expanded by candidates' half-size (round(k1/2)) reciprocal sets that overlap by more than 2/3;
    Gaussian-kernel weights; local query expansion over the k2 nearest neighbours; Jaccard distance;
    ``final = (1 - lambda) * jaccard + lambda * original``. Returns the q x g block.
    """
    qf = np.asarray(qf, dtype=np.float32)
    gf = np.asarray(gf, dtype=np.float32)
    num_q = qf.shape[0]
    feats = np.concatenate([qf, gf])
    num_all = feats.shape[0]
    sq_norm = (feats * feats).sum(axis=1, keepdims=True)
    original = sq_norm + sq_norm.T - 2 * feats @ feats.T
    original = np.transpose(original / np.max(original, axis=0))
    initial_rank = np.argsort(original, axis=1, kind="stable")
    half_k1 = int(np.around(k1 / 2))

    def reciprocal_neighbours(i: int, k: int) -> np.ndarray:
        forward = initial_rank[i, :k + 1]
        backward = initial_rank[forward, :k + 1]
        return forward[np.where(backward == i)[0]]

    V = np.zeros_like(original, dtype=np.float32)
    for i in range(num_all):
        reciprocal = reciprocal_neighbours(i, k1)
        expansion = reciprocal
        for candidate in reciprocal:
            candidate_set = reciprocal_neighbours(candidate, half_k1)
            if len(np.intersect1d(candidate_set, reciprocal)) > 2 / 3 * len(candidate_set):
                expansion = np.append(expansion, candidate_set)
        expansion = np.unique(expansion)
        weight = np.exp(-original[i, expansion])
        V[i, expansion] = weight / np.sum(weight)

    if k2 != 1:
        V = np.stack([np.mean(V[initial_rank[i, :k2], :], axis=0) for i in range(num_all)])

    holders = [np.where(V[:, j] != 0)[0] for j in range(num_all)]
    jaccard = np.zeros((num_q, num_all), dtype=np.float32)
    for i in range(num_q):
        overlap = np.zeros(num_all, dtype=np.float32)
        for j in np.where(V[i, :] != 0)[0]:
            overlap[holders[j]] += np.minimum(V[i, j], V[holders[j], j])
        jaccard[i] = 1 - overlap / (2 - overlap)

    final = jaccard * (1 - lambda_value) + original[:num_q] * lambda_value
    return final[:, num_q:]
