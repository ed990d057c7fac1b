"""Compare runs: one CMC plot per dataset with a curve per run folder, and a report page side by side.

    python tools/plot_cmc.py output/bot_market output/lfm_market --output-dir plots
    python tools/plot_cmc.py output/bot_market output/lfm_market --dataset dukemtmc --max-rank 10 --rerank
    python tools/plot_cmc.py output/bot_market output/lfm_market --report plots/report.html

Each RUN_DIR must hold the results.json written by tools/train.py or tools/test.py; --report also needs their
report_data.json (written next to report.html by the same tools) and puts the runs' reports on one page.
"""

from __future__ import annotations

import argparse

from reid.evaluation.report import write_comparison_report
from reid.evaluation.visualize import plot_runs_cmc
from reid.utils.cli import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders holding results.json")
    parser.add_argument("--output-dir", "-o", default=".", help="folder for cmc_<dataset>.png (default: .)")
    parser.add_argument("--dataset", default=None, help="plot only this dataset (default: every dataset found)")
    parser.add_argument("--max-rank", type=int, default=20, help="last rank on the x axis (default: 20)")
    parser.add_argument("--rerank", action="store_true", help="also draw re-ranked curves where the runs have them")
    parser.add_argument("--report", default=None, metavar="HTML",
                        help="also write one report page comparing the runs (metrics, CMC, camera pairs, distance "
                             "histograms, worst/best queries side by side)")
    args = parser.parse_args(argv)
    for path in plot_runs_cmc(args.run_dirs, args.output_dir, dataset=args.dataset, max_rank=args.max_rank,
                              rerank=args.rerank):
        print(f"Wrote {path}")
    if args.report:
        print(f"Wrote {write_comparison_report(args.run_dirs, args.report, max_rank=args.max_rank)}")


def entry() -> None:
    """The ``reid-plot-cmc`` console script."""
    run_cli(main)
