"""Ranking a gallery folder for query images: the top-k nearest gallery images of each query."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from reid.evaluation.rank import compute_distance_matrix
from reid.export.extractor import FeatureExtractor
from reid.export.image_files import scan_images
from reid.utils.errors import DatasetError, ReIDError
from reid.utils.progress import Progress

QUERY_BLOCK = 256  # queries per distance block: bounds memory at QUERY_BLOCK x gallery floats
METRICS = ("cosine", "euclidean")


@dataclass
class SearchResult:
    """One query's ranked list: ``matches[i]`` is at ``distances[i]``, nearest first."""

    query: Path
    matches: list[Path]
    distances: list[float]


@dataclass
class SearchImages:
    """The image files of a search, listed (and checked) before any feature is extracted."""

    queries: list[Path]
    gallery: list[Path]
    others: list[Path] = field(default_factory=list)  # files in the folders not named like images, not read


@dataclass
class SearchOutcome:
    """Ranked lists of the readable queries, and the image files that could not be read (skipped)."""

    results: list[SearchResult]
    unreadable: list[tuple[Path, str]] = field(default_factory=list)  # (file, the reader's message)


MAX_TOPK = 1000  # matches listed per query: a ranked list longer than this is read by no one


def check_search_settings(k: int, metric: str | None) -> None:
    """A ReIDError for a top-k outside 1..MAX_TOPK or an unknown metric (None: the config's), before any work."""
    if not 1 <= k <= MAX_TOPK:
        raise ReIDError(f"topk must be between 1 and {MAX_TOPK} (the matches listed per query), got {k}; to rank a "
                        "whole gallery, extract its features with tools/extract.py and evaluate them in Python.")
    if metric is not None and metric not in METRICS:
        raise ReIDError(f"Unknown metric {metric!r}; use one of {', '.join(METRICS)}.")


def search_images(query: str | os.PathLike, gallery: str | os.PathLike) -> SearchImages:
    """The query image (or the images of a query folder) and the gallery folder's images.

    A missing query, or a gallery folder without images, is a DatasetError naming it.
    """
    query, others = Path(query), []
    if query.is_dir():
        scan = scan_images(query)
        queries, others = scan.images, scan.others
    elif query.is_file():
        queries = [query]
    else:
        raise DatasetError(f"Query {query} does not exist: give an image file or a folder of images.")
    scan = scan_images(gallery)
    return SearchImages(queries, scan.images, others + scan.others)


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


def rank_images(extractor: FeatureExtractor, images: SearchImages, k: int = 10, metric: str | None = None,
                strict: bool = True) -> SearchOutcome:
    """Rank ``images.gallery`` for each of ``images.queries``; ``metric`` defaults to the config's TEST.METRIC.

    An image that cannot be read raises a DatasetError naming it when ``strict``; otherwise it is left out
    (a query gets no ranked list, a gallery image is never ranked) and listed in ``unreadable``.
    """
    check_search_settings(k, metric)
    metric = metric or extractor.cfg.TEST.METRIC
    with Progress("extract queries", len(images.queries), stream=sys.stderr) as progress:
        queries = extractor.extract_paths(images.queries, skip_unreadable=not strict, progress=progress)
    with Progress("extract gallery", len(images.gallery), stream=sys.stderr) as progress:
        gallery = extractor.extract_paths(images.gallery, skip_unreadable=not strict, progress=progress)
    unreadable = queries.unreadable + gallery.unreadable
    for name, found, read in (("query", images.queries, queries), ("gallery", images.gallery, gallery)):
        if not read.paths:
            raise DatasetError(f"None of the {len(found)} {name} images could be read; the first: "
                               f"{read.unreadable[0][1]}")
    distances, indices = top_k(queries.features, gallery.features, k, metric, normalize=extractor.cfg.TEST.FEAT_NORM)
    results = [SearchResult(q, [gallery.paths[i] for i in row.tolist()], dist.tolist())
               for q, row, dist in zip(queries.paths, indices, distances)]
    return SearchOutcome(results, unreadable)


def search_folder(extractor: FeatureExtractor, query: str | Path, gallery: str | Path, k: int = 10,
                  metric: str | None = None) -> list[SearchResult]:
    """Rank every image under ``gallery`` for ``query`` (an image or a folder of images).

    ``metric`` defaults to the config's TEST.METRIC. Arguments and files are checked before any feature is
    extracted; an unreadable image raises a DatasetError naming it (:func:`rank_images` can skip them).
    """
    check_search_settings(k, metric)
    return rank_images(extractor, search_images(query, gallery), k, metric).results
