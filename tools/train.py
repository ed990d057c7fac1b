#!/usr/bin/env python
"""Train a ReID model: ``python tools/train.py --config lfm_market.yml [--resume] [KEY VALUE ...]``.

Multi-GPU / multi-node: ``torchrun --nproc_per_node N tools/train.py --config ...``.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.config import load_config  # noqa: E402
from reid.engine.training import train  # noqa: E402
from reid.utils.cli import add_config_arguments, run_cli  # noqa: E402


def main() -> None:
    parser = add_config_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0]))
    parser.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/last.pth if it exists")
    parser.add_argument("--overwrite", action="store_true",
                        help="train from scratch even if OUTPUT_DIR already holds a run (replaces its checkpoints)")
    args = parser.parse_args()
    train(load_config(args.config, args.opts), resume=args.resume, overwrite=args.overwrite)


if __name__ == "__main__":
    run_cli(main)
