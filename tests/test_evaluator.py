"""Feature extraction (flip), evaluation of extracted features (plain and re-ranked), the results table."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reid.config import load_config
from reid.evaluation.evaluator import (
    ExtractedFeatures,
    evaluate_extracted,
    extract_features,
    format_results_table,
    result_row,
)
from reid.evaluation.rank import evaluate_rank
from reid.evaluation.rerank import re_ranking


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


class _Batches(list):
    """The loader interface extract_features uses: iteration over batch dicts and ``dataset`` for its length."""

    @property
    def dataset(self) -> list:
        return [path for batch in self for path in batch["paths"]]


class _LeftColumns(torch.nn.Module):
    """A model whose feature depends on the image's orientation: the mean of its two leftmost columns."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return images[..., :2].mean(dim=(2, 3))


def test_flip_averages_the_features_of_the_image_and_its_mirror():
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(5, 3, 8, 4, generator=gen)
    loader = _Batches([{"images": images[:3], "pids": torch.arange(3), "camids": torch.zeros(3, dtype=torch.long),
                        "paths": ["a", "b", "c"]},
                       {"images": images[3:], "pids": torch.arange(3, 5), "camids": torch.ones(2, dtype=torch.long),
                        "paths": ["d", "e"]}])
    model = _LeftColumns()
    plain, pids, camids, paths = extract_features(model, loader, "cpu", flip=False)
    flipped, *_ = extract_features(model, loader, "cpu", flip=True)
    right = images[..., -2:].mean(dim=(2, 3))  # the mirror's two leftmost columns
    torch.testing.assert_close(plain, images[..., :2].mean(dim=(2, 3)))
    torch.testing.assert_close(flipped, (plain + right) / 2)
    assert not torch.allclose(flipped, plain)
    assert pids.tolist() == [0, 1, 2, 3, 4] and camids.tolist() == [0, 0, 0, 1, 1] and paths == list("abcde")


def test_extraction_logs_its_progress(caplog):
    images = torch.rand(5, 3, 8, 4)
    loader = _Batches([{"images": images, "pids": torch.arange(5), "camids": torch.zeros(5, dtype=torch.long),
                        "paths": list("abcde")}])
    with caplog.at_level("INFO", logger="reid.evaluation"):
        extract_features(_LeftColumns(), loader, "cpu", desc="tiny")
    assert any(r.getMessage().startswith("extract tiny: 5/5 images (100%) in ") for r in caplog.records)


def test_reranked_results_come_from_the_bounded_path_and_match_the_dense_one(extracted):
    cfg = load_config(None, ["TEST.RERANK", "True", "TEST.RERANK_K1", "4", "TEST.RERANK_K2", "2", "TEST.MAX_RANK", "5"])
    result = evaluate_extracted(cfg, extracted)["rerank"]
    assert result.peak_memory_bytes is not None  # evaluate_reranked reports it; evaluate_rank does not
    qf, gf, q_pids, g_pids, q_camids, g_camids = extracted.split()
    unit = torch.nn.functional.normalize
    dense = evaluate_rank(re_ranking(unit(qf, dim=1), unit(gf, dim=1), k1=4, k2=2), q_pids, g_pids, q_camids,
                          g_camids, max_rank=5)
    np.testing.assert_array_equal(result.AP, dense.AP)
    np.testing.assert_array_equal(result.cmc, dense.cmc)


def test_reranking_logs_its_progress_with_an_eta(extracted, caplog):
    cfg = load_config(None, ["TEST.RERANK", "True", "TEST.RERANK_K1", "4", "TEST.RERANK_K2", "2", "TEST.MAX_RANK", "5"])
    with caplog.at_level("INFO", logger="reid.evaluation"):
        evaluate_extracted(cfg, extracted, desc="tiny")
    lines = [r.getMessage() for r in caplog.records]
    # Short work prints only its last line per stage: count, total time and rate.
    assert any(line.startswith("rerank tiny neighbours: 1/1 blocks") for line in lines), lines
    assert any(line.startswith(f"rerank tiny queries: {extracted.num_query}/{extracted.num_query} queries")
               for line in lines), lines
