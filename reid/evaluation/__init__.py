"""Exact ReID metrics (CMC, mAP, mINP) and k-reciprocal re-ranking, in torch on any device."""

from reid.evaluation.rank import (
    METRICS,
    FeatureDistances,
    RankResult,
    compute_distance_matrix,
    evaluate_features,
    evaluate_rank,
)
from reid.evaluation.rerank import evaluate_reranked, re_ranking

__all__ = ["METRICS", "FeatureDistances", "RankResult", "compute_distance_matrix", "evaluate_features",
           "evaluate_rank", "evaluate_reranked", "re_ranking"]
