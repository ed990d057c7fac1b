"""The demo behind ``make demo``: synthetic data, BoT vs BoT+LFM training, same/cross-domain results, export."""

from __future__ import annotations

import argparse

from reid.experiments.demo import run_demo
from reid.utils.cli import add_plugin_argument, parse_args, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default="datasets", help="where the synthetic domains are generated")
    parser.add_argument("--output-dir", default="output/demo", help="training runs, results and the ONNX export")
    parser.add_argument("--no-export", action="store_true", help="skip the ONNX export at the end")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to both runs")
    add_plugin_argument(parser)
    args = parse_args(parser, argv)
    run_demo(args.root, args.output_dir, tuple(args.opts), export=not args.no_export)


def entry() -> None:
    """The ``reid-demo`` console script."""
    run_cli(main)
