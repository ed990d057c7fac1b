"""``test(cfg, weights)``: what ``tools/test.py`` does — evaluate one model on every DATASETS.TEST entry."""

from __future__ import annotations

import logging
from pathlib import Path

from yacs.config import CfgNode

from reid.config import load_config
from reid.data import check_datasets
from reid.engine.dataset_record import TEST_SUBSETS
from reid.engine.run import RESULTS_UNITS, lock_output, resolve_weights, setup_run, write_results
from reid.evaluation.evaluator import ExtractedFeatures, evaluate_datasets
from reid.evaluation.rank import RankResult
from reid.evaluation.report import DatasetReport, ReportData, build_dataset_report, write_report
from reid.evaluation.visualize import plot_cmc, save_ranked_lists_from_features
from reid.modeling.checkpoint import load_model, read_stored_config, summarize_checkpoint
from reid.utils.errors import ConfigError, ReIDError

logger = logging.getLogger("reid.engine")


def config_and_weights(config: str | None, weights: str | None, opts: list[str]) -> tuple[CfgNode, Path]:
    """What the evaluation tools run on: ``--config`` (+ weights found from it), or the config in ``--weights``."""
    if config:
        cfg = load_config(config, opts)
        return cfg, resolve_weights(cfg, weights)
    if not weights:
        raise ReIDError("Give --config (the training config) or --weights (a checkpoint that stores its config).")
    # Never the default config: it would build some other model.
    return read_stored_config(weights, opts), Path(weights)


def test(cfg: CfgNode, weights: str | Path, vis: int = 0, vis_mode: str = "worst") -> dict:
    """Evaluate ``weights`` on each test dataset; write results.json, CMC plots and optional ranked lists."""
    if not cfg.DATASETS.TEST:
        raise ConfigError("DATASETS.TEST is empty: name the datasets to evaluate, e.g. "
                          "DATASETS.TEST \"('market1501', 'dukemtmc')\".")
    if vis < 0:
        raise ConfigError(f"--vis takes a number of queries per dataset (0 or more), got {vis}.")
    with lock_output(cfg.OUTPUT_DIR):
        device = setup_run(cfg, config_name="test_config.yaml")
        check_datasets(cfg.DATASETS.TEST, cfg.DATASETS.ROOT)
        model, cfg = load_model(weights, cfg, device=device)
        out = Path(cfg.OUTPUT_DIR)
        # The data the checkpoint's run evaluated on, as it recorded it: a test set changed since is named.
        recorded = {name: {s: fp for s, fp in subsets.items() if s in TEST_SUBSETS}
                    for name, subsets in (summarize_checkpoint(weights).datasets or {}).items()}

        reports: dict[str, DatasetReport] = {}

        def draw(name: str, extracted: ExtractedFeatures, results: dict[str, RankResult], row: dict) -> None:
            _draw(cfg, name, extracted, results, row, out, vis, vis_mode)
            if cfg.TEST.REPORT:
                reports[name] = dataset_report(cfg, name, extracted, results)

        table = evaluate_datasets(cfg, model, device, on_dataset=draw, title=f"Results of {weights}:",
                                  recorded=recorded, recorded_in=f"the run of {weights} recorded it")
        logger.info(f"Wrote {write_results(out, results_document(table, weights=str(weights)))}")
        if reports:
            logger.info(f"Wrote {write_evaluation_report(cfg, reports, f'Results of {weights}', weights)} "
                        "(open it in a browser)")
        return table


def results_document(table: dict, **fields: object) -> dict:
    """What results.json holds: the table, what produced it, and the unit of its numbers."""
    return {"results": table, **fields,
            "units": RESULTS_UNITS}


def dataset_report(cfg: CfgNode, name: str, extracted: ExtractedFeatures,
                   results: dict[str, RankResult]) -> DatasetReport:
    """One dataset's part of report.html, from the features and results the evaluation has at hand."""
    qf, gf, q_pids, g_pids, q_camids, g_camids = extracted.split()
    q = extracted.num_query
    return build_dataset_report(name, qf, gf, q_pids, g_pids, q_camids, g_camids, extracted.paths[:q],
                                extracted.paths[q:], results, metric=cfg.TEST.METRIC, normalize=cfg.TEST.FEAT_NORM,
                                num_queries=cfg.TEST.REPORT_QUERIES, camera_pairs=cfg.TEST.REPORT_CAMERA_PAIRS)


def write_evaluation_report(cfg: CfgNode, reports: dict[str, DatasetReport], title: str,
                            weights: str | Path | None = None) -> Path:
    """Write ``report.html`` (and its ``report_data.json``) into OUTPUT_DIR; returns the page."""
    info = {"output folder": str(cfg.OUTPUT_DIR), "metric": cfg.TEST.METRIC,
            **({"weights": str(weights)} if weights is not None else {})}
    return write_report(ReportData(title, list(reports.values()), info=info), cfg.OUTPUT_DIR,
                        max_rank=min(cfg.TEST.MAX_RANK, 20))


def _draw(cfg: CfgNode, name: str, extracted: ExtractedFeatures, results: dict[str, RankResult], row: dict,
          out: Path, vis: int, vis_mode: str) -> None:
    """The CMC plot of one dataset and, with ``vis``, the ranked lists of ``vis`` queries."""
    curves = {name: row["cmc"]}
    if "rerank" in row:
        curves[f"{name} re-ranked"] = row["rerank"]["cmc"]
    logger.info(f"Wrote the CMC plot {plot_cmc(curves, out / f'cmc_{name}.png', title=name)}")
    if vis > 0:
        qf, gf, q_pids, g_pids, q_camids, g_camids = extracted.split()
        q = extracted.num_query
        plain = results["plain"]
        paths = save_ranked_lists_from_features(
            qf, gf, extracted.paths[:q], extracted.paths[q:], q_pids, g_pids, q_camids, g_camids,
            out / "ranked_lists" / name, num_queries=vis, mode=vis_mode, ap=plain.AP,
            query_indices=plain.query_indices, metric=cfg.TEST.METRIC, normalize=cfg.TEST.FEAT_NORM)
        logger.info(f"Wrote {len(paths)} ranked lists to {out / 'ranked_lists' / name}")
