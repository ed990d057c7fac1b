"""Evaluate a trained model on every dataset of DATASETS.TEST (same- and cross-domain) in one run.

    python tools/test.py --config lfm_market.yml --weights output/lfm_market/best.pth
    python tools/test.py --weights best.pth --vis 10 DATASETS.TEST "('market1501', 'dukemtmc')" TEST.RERANK True

Options (--config, --weights, --vis, --vis-mode) come first: everything after the first KEY VALUE
override is read as more overrides. Without --config, the config stored in the checkpoint is used
(overrides still apply); a checkpoint that stores none needs --config.
"""

from __future__ import annotations

import argparse

from reid.engine.testing import config_and_weights, test
from reid.utils.cli import add_config_arguments, parse_args, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--weights", "-w", default=None, help="checkpoint (default: TEST.WEIGHTS, OUTPUT_DIR/best.pth)")
    parser.add_argument("--vis", type=int, default=0, metavar="N", help="draw ranked lists of N queries per dataset")
    parser.add_argument("--vis-mode", choices=("worst", "best", "random"), default="worst",
                        help="which queries --vis draws, by average precision")
    args = parse_args(parser, argv)
    cfg, weights = config_and_weights(args.config, args.weights, args.opts)
    test(cfg, weights, vis=args.vis, vis_mode=args.vis_mode)


def entry() -> None:
    """The ``reid-test`` console script."""
    run_cli(main)
