#!/usr/bin/env python
"""The demo behind ``make demo``: synthetic data, BoT vs BoT+LFM training, same/cross-domain results, export."""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.engine.demo import run_demo  # noqa: E402
from reid.utils.cli import run_cli  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets", help="where the synthetic domains are generated")
    parser.add_argument("--output-dir", default="output/demo", help="training runs, results and the ONNX export")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export at the end")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to both runs")
    args = parser.parse_args()
    run_demo(args.root, args.output_dir, tuple(args.opts), export=not args.no_export)


if __name__ == "__main__":
    run_cli(main)
