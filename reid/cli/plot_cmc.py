"""Compare runs by their CMC curves: one cmc_<dataset>.png per dataset, one curve per run folder.

    python tools/plot_cmc.py output/bot_market output/lfm_market --output-dir plots
    python tools/plot_cmc.py output/bot_market output/lfm_market --dataset dukemtmc --max-rank 10 --rerank

Each RUN_DIR must hold the results.json written by tools/train.py or tools/test.py.
"""

from __future__ import annotations

import argparse

from reid.evaluation.visualize import plot_runs_cmc
from reid.utils.cli import run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run folders holding results.json")
    parser.add_argument("--output-dir", "-o", default=".", help="folder for cmc_<dataset>.png (default: .)")
    parser.add_argument("--dataset", default=None, help="plot only this dataset (default: every dataset found)")
    parser.add_argument("--max-rank", type=int, default=20, help="last rank on the x axis (default: 20)")
    parser.add_argument("--rerank", action="store_true", help="also draw re-ranked curves where the runs have them")
    args = parser.parse_args(argv)
    for path in plot_runs_cmc(args.run_dirs, args.output_dir, dataset=args.dataset, max_rank=args.max_rank,
                              rerank=args.rerank):
        print(f"Wrote {path}")


def entry() -> None:
    """The ``reid-plot-cmc`` console script."""
    run_cli(main)
