"""Train a ReID model: ``python tools/train.py --config lfm_market.yml [--resume] [KEY VALUE ...]``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node N tools/train.py --config ...``.
"""

from __future__ import annotations

import argparse

from reid.config import load_config
from reid.engine.training import train
from reid.utils.cli import add_config_arguments, parse_args, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="train from scratch even if OUTPUT_DIR already holds a run (replaces its checkpoints)")
    args = parse_args(parser, argv)
    train(load_config(args.config, args.opts), resume=args.resume, overwrite=args.overwrite)


def entry() -> None:
    """The ``reid-train`` console script."""
    run_cli(main)
