"""Feature extraction and query/gallery evaluation of a model on every dataset in DATASETS.TEST."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch
from torch import nn
from yacs.config import CfgNode

from reid.data import TestData, build_test_data
from reid.data.datasets import check_fingerprints, fingerprint_dataset
from reid.evaluation.rank import RankResult, evaluate_features
from reid.evaluation.rerank import ProgressFactory, evaluate_reranked
from reid.utils.progress import Progress

logger = logging.getLogger("reid.evaluation")


@dataclass
class ExtractedFeatures:
    """Features of a test loader (query first, then gallery) with their labels and files."""

    features: torch.Tensor
    pids: torch.Tensor
    camids: torch.Tensor
    paths: list[str]
    num_query: int

    def split(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        q = self.num_query
        return (self.features[:q], self.features[q:], self.pids[:q], self.pids[q:],
                self.camids[:q], self.camids[q:])


@torch.no_grad()
def extract_features(model: nn.Module, loader, device: torch.device | str, flip: bool = False, desc: str = "extract",
                     amp: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """Inference features of every image (kept on ``device``), optionally averaged with the mirror image.

    ``amp``: bf16 autocast on CUDA (TEST.AMP); features are returned in float32 either way.
    """
    model.eval()
    device = torch.device(device)
    use_amp = amp and device.type == "cuda"
    feats, pids, camids, paths = [], [], [], []
    progress = Progress(f"extract {desc}", len(loader.dataset), logger=logger)
    for batch in loader:
        images = batch["images"].to(device, non_blocking=True)
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
            f = model(images).float()
            if flip:
                f = (f + model(images.flip(3)).float()) / 2
        feats.append(f)
        pids.append(batch["pids"])
        camids.append(batch["camids"])
        paths.extend(batch["paths"])
        progress.update(len(batch["paths"]))
    progress.close()
    return torch.cat(feats), torch.cat(pids), torch.cat(camids), paths


def extract_test_features(cfg: CfgNode, model: nn.Module, dataset: str | TestData,
                          device: torch.device | str) -> ExtractedFeatures:
    """Query and gallery features of one dataset (a name, or its already built test data)."""
    data = build_test_data(cfg, dataset, device) if isinstance(dataset, str) else dataset
    f, pids, camids, paths = extract_features(model, data.loader, device, cfg.TEST.FLIP, desc=data.dataset.name,
                                              amp=cfg.TEST.AMP)
    return ExtractedFeatures(f, pids, camids, paths, data.num_query)


def evaluate_extracted(cfg: CfgNode, extracted: ExtractedFeatures, rerank: bool | None = None,
                       desc: str = "") -> dict[str, RankResult]:
    """``{"plain": result}`` plus ``"rerank"`` when TEST.RERANK (or ``rerank``) asks for it.

    Both are computed block by block in bounded memory (no query x gallery matrix is kept). Re-ranking,
    the slow one, logs its progress as ``rerank <desc> <stage>``.
    """
    qf, gf, q_pids, g_pids, q_camids, g_camids = extracted.split()
    results = {"plain": evaluate_features(qf, gf, q_pids, g_pids, q_camids, g_camids, metric=cfg.TEST.METRIC,
                                          normalize=cfg.TEST.FEAT_NORM, max_rank=cfg.TEST.MAX_RANK)}
    if cfg.TEST.RERANK if rerank is None else rerank:
        # Re-ranking works on euclidean distances: for the cosine metric they must be of unit features
        # too, or the re-ranked row would rank by another distance than the plain one.
        if cfg.TEST.FEAT_NORM or cfg.TEST.METRIC == "cosine":
            qf, gf = nn.functional.normalize(qf, dim=1), nn.functional.normalize(gf, dim=1)
        results["rerank"] = evaluate_reranked(qf, gf, q_pids, g_pids, q_camids, g_camids, k1=cfg.TEST.RERANK_K1,
                                              k2=cfg.TEST.RERANK_K2, lambda_value=cfg.TEST.RERANK_LAMBDA,
                                              max_rank=cfg.TEST.MAX_RANK, progress=_rerank_progress(desc))
    return results


def _rerank_progress(desc: str) -> ProgressFactory:
    label = f"rerank {desc}".rstrip()
    return lambda stage, total, unit: Progress(f"{label} {stage}", total, unit, logger=logger)


def result_row(result: RankResult) -> dict:
    """JSON-ready metrics of one evaluation, with the CMC curve for plots."""
    return {**result.as_dict(), "cmc": [round(float(v), 6) for v in result.cmc]}


#: Called by :func:`evaluate_datasets` after each dataset: (name, features, results, its table row).
DatasetCallback = Callable[[str, ExtractedFeatures, dict[str, RankResult], dict], None]


def evaluate_datasets(cfg: CfgNode, model: nn.Module, device: torch.device | str,
                      names: Sequence[str] | None = None, on_dataset: DatasetCallback | None = None,
                      title: str = "", recorded: Mapping[str, dict] | None = None,
                      recorded_in: str = "the run started",
                      test_data: Callable[[str], TestData] | None = None) -> dict[str, dict]:
    """R1/R5/R10/mAP/mINP (+ CMC, + a ``rerank`` entry with TEST.RERANK) per dataset, logged as a table.

    ``names`` defaults to DATASETS.TEST. ``test_data(name)`` gives a dataset's query and gallery images
    (default: :func:`reid.data.build_test_data` with DATALOADER.BACKEND; a training run keeps its decoded
    test sets between evaluations). ``recorded``: query/gallery fingerprints by dataset
    (:class:`reid.engine.dataset_record.DatasetRecord`); a dataset that changed since stops the evaluation
    (or warns, with DATASETS.ALLOW_CHANGES). Each row records the query and gallery image counts and the
    fingerprints of what was evaluated. ``on_dataset`` sees each dataset's features and results while they
    are at hand (``tools/test.py`` draws its pictures there); ``title`` heads the logged table.
    """
    table: dict[str, dict] = {}
    for name in names or cfg.DATASETS.TEST:
        data = test_data(name) if test_data is not None else build_test_data(cfg, name, device)
        if recorded and name in recorded:
            check_fingerprints(data.dataset, recorded[name], allow_changes=cfg.DATASETS.ALLOW_CHANGES,
                               recorded_in=recorded_in)
        extracted = extract_test_features(cfg, model, data, device)
        results = evaluate_extracted(cfg, extracted, desc=name)
        table[name] = result_row(results["plain"])
        if "rerank" in results:
            table[name]["rerank"] = result_row(results["rerank"])
        table[name]["images"] = {"query": data.num_query, "gallery": len(data.dataset.gallery)}
        table[name]["fingerprints"] = fingerprint_dataset(data.dataset, ("query", "gallery"))
        if on_dataset is not None:
            on_dataset(name, extracted, results, table[name])
    logger.info((f"{title}\n" if title else "\n") + format_results_table(table))
    return table


def format_results_table(table: dict[str, dict]) -> str:
    """A Markdown table, one row per dataset (and per re-ranked variant), metrics in percent."""
    # R5/R10 are absent when TEST.MAX_RANK is below them
    cols = [c for c in ("R1", "R5", "R10", "mAP", "mINP") if all(c in row for row in table.values())]
    lines = ["| dataset | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name, row in table.items():
        lines.append(f"| {name} | " + " | ".join(f"{100 * row[c]:.1f}" for c in cols) + " |")
        if "rerank" in row:
            lines.append(f"| {name} (re-ranked) | " + " | ".join(f"{100 * row['rerank'][c]:.1f}" for c in cols) + " |")
    return "\n".join(lines)
