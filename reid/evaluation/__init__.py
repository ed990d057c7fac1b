"""Exact ReID metrics (CMC, mAP, mINP) and k-reciprocal re-ranking, in torch on any device."""

from reid.evaluation.rank import RankResult, compute_distance_matrix, evaluate_features, evaluate_rank
from reid.evaluation.rerank import re_ranking

__all__ = ["RankResult", "compute_distance_matrix", "evaluate_features", "evaluate_rank", "re_ranking"]
