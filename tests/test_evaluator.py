"""Evaluation of extracted features: re-ranking agrees with the plain metric, the results table."""

from __future__ import annotations

import pytest
import torch

from reid.config import load_config
from reid.evaluation.evaluator import ExtractedFeatures, evaluate_extracted, format_results_table, result_row


@pytest.fixture
def extracted() -> ExtractedFeatures:
    """6 identities x 4 cameras around random centres, with norms spread over 25x (un-normalised)."""
    gen = torch.Generator().manual_seed(0)
    pids = torch.arange(6).repeat_interleave(4)
    camids = torch.arange(4).repeat(6)
    features = torch.randn(6, 32, generator=gen)[pids] + 0.6 * torch.randn(24, 32, generator=gen)
    features *= torch.linspace(0.2, 5.0, 24)[torch.randperm(24, generator=gen)].unsqueeze(1)
    order = torch.cat([torch.arange(0, 24, 4), torch.tensor([i for i in range(24) if i % 4])])  # 1 query / id
    return ExtractedFeatures(features[order], pids[order], camids[order], [str(i) for i in range(24)], num_query=6)


def test_cosine_reranking_does_not_depend_on_feature_norm(extracted):
    results = {}
    for feat_norm in (True, False):
        cfg = load_config(None, ["TEST.METRIC", "cosine", "TEST.FEAT_NORM", str(feat_norm), "TEST.RERANK", "True",
                                 "TEST.RERANK_K1", "4", "TEST.RERANK_K2", "2", "TEST.MAX_RANK", "5"])
        results[feat_norm] = evaluate_extracted(cfg, extracted)
    assert results[True]["plain"].mAP == pytest.approx(results[False]["plain"].mAP)
    assert results[True]["rerank"].mAP == pytest.approx(results[False]["rerank"].mAP)


def test_table_shows_only_the_ranks_the_cmc_covers(extracted):
    cfg = load_config(None, ["TEST.MAX_RANK", "5"])
    table = format_results_table({"tiny": result_row(evaluate_extracted(cfg, extracted)["plain"])})
    header = table.splitlines()[0]
    assert "R5" in header and "R10" not in header and "mINP" in header
    assert len(table.splitlines()[2].split("|")) == len(header.split("|"))
