"""Run (or resume) the paper's study: regularisers x seeds, same/cross-domain and adversarial results.

    python tools/study.py --preset synthetic          # 2 CPU cores, under an hour
    python tools/study.py --preset market             # real data on a GPU
    python tools/study.py --preset synthetic --summarize-only

Re-running resumes: finished cells are reused, half-trained ones continue from their last.pth, and only
attack results the study file newly asks for (another eps, attack, objective or step count, or results of
an earlier version of the attack code) are computed from their weights. A cell trained with other settings
is refused with an error naming it; use another --output-dir for new settings. The study file and the
KEY VALUE overrides are checked for every arm (config, source domain, model) before anything trains. Each
cell keeps a few clean/adversarial/difference triptychs per attack setting in <cell>/attacks/<source>/.
"""

from __future__ import annotations

import argparse

from reid.experiments.study import load_study, run_study, summarize_study
from reid.utils.cli import add_plugin_argument, parse_args, parser_from_docstring, run_cli
from reid.utils.logger import setup_logger


def main(argv: list[str] | None = None) -> None:
    parser = parser_from_docstring(__doc__)
    parser.add_argument("--preset", default="synthetic", help="a study in configs/study/ or a path to a study file")
    parser.add_argument("--output-dir", default=None, help="override the study's output_dir")
    parser.add_argument("--summarize-only", action="store_true", help="only rebuild tables and plots")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE overrides applied to every cell")
    add_plugin_argument(parser)
    args = parse_args(parser, argv)
    spec = load_study(args.preset)
    if args.output_dir:
        spec.output_dir = args.output_dir
    setup_logger(None)
    # Records are checked against the overrides they were made with, so --summarize-only takes them too.
    out = summarize_study(spec, args.opts) if args.summarize_only else run_study(spec, args.opts)
    print((out / "study.md").read_text())


def entry() -> None:
    """The ``reid-study`` console script."""
    run_cli(main)
