"""Ranking a gallery folder for query images: the top-k nearest gallery images of each query."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reid.evaluation.rank import compute_distance_matrix
from reid.export.extractor import FeatureExtractor
from reid.export.image_files import find_images
from reid.utils.errors import ReIDError

QUERY_BLOCK = 256  # queries per distance block: bounds memory at QUERY_BLOCK x gallery floats


@dataclass
class SearchResult:
    """One query's ranked list: ``matches[i]`` is at ``distances[i]``, nearest first."""

    query: Path
    matches: list[Path]
    distances: list[float]


def top_k(query_features: torch.Tensor, gallery_features: torch.Tensor, k: int, metric: str = "cosine",
          normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """``(distances, indices)``, each (num_query, min(k, num_gallery)), nearest first (ties by gallery index).

    Distances are the evaluator's (:func:`reid.evaluation.rank.compute_distance_matrix`): cosine is
    ``1 - cosine similarity``, euclidean is on L2-normalised features when ``normalize``.
    """
    if k < 1:
        raise ReIDError(f"topk must be at least 1, got {k}.")
    k = min(k, gallery_features.shape[0])
    distances, indices = [], []
    for start in range(0, query_features.shape[0], QUERY_BLOCK):
        dist = compute_distance_matrix(query_features[start:start + QUERY_BLOCK], gallery_features, metric, normalize)
        # A stable sort keeps equal distances in gallery order (topk does not promise it).
        order = dist.argsort(dim=1, stable=True)[:, :k]
        distances.append(dist.gather(1, order).clamp_(min=0))  # float rounding can give -1e-8 for a twin
        indices.append(order)
    return torch.cat(distances), torch.cat(indices)


def search_folder(extractor: FeatureExtractor, query: str | Path, gallery: str | Path, k: int = 10,
                  metric: str | None = None) -> list[SearchResult]:
    """Rank every image under ``gallery`` for ``query`` (an image or a folder of images).

    ``metric`` defaults to the config's TEST.METRIC.
    """
    query_paths = find_images(query) if Path(query).is_dir() else [Path(query)]
    gallery_paths = find_images(gallery)
    metric = metric or extractor.cfg.TEST.METRIC
    distances, indices = top_k(extractor(query_paths), extractor(gallery_paths), k, metric,
                               normalize=extractor.cfg.TEST.FEAT_NORM)
    return [SearchResult(q, [gallery_paths[i] for i in row.tolist()], dist.tolist())
            for q, row, dist in zip(query_paths, indices, distances)]
