"""Render a synthetic ReID dataset in the Market-1501 and/or DukeMTMC-reID layout.

    python tools/make_synthetic.py --style market --root datasets/
    python tools/make_synthetic.py --style both --root datasets/ --train-ids 300 --seed 1
"""

from __future__ import annotations

import argparse
import os
import time

from reid.experiments.synthetic import STYLES, generate_synthetic, get_style, read_manifest
from reid.data.datasets.csv_list import write_market_csv
from reid.utils.cli import run_cli
from reid.utils.logger import setup_logger


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--style", choices=(*STYLES, "both"), default="market",
                        help="dataset layout to imitate")
    parser.add_argument("--root", default="datasets", help="folder that receives synthetic_<style>/")
    parser.add_argument("--train-ids", type=int, default=150, help="training identities")
    parser.add_argument("--test-ids", type=int, default=100, help="query/gallery identities")
    parser.add_argument("--images-per-camera", type=int, default=4,
                        help="mean images per identity and camera")
    parser.add_argument("--distractors", type=int, default=None,
                        help="gallery images of nobody, pid 0000 (market only; default 150)")
    parser.add_argument("--junk", type=int, default=None,
                        help="gallery bad crops, pid -1 (market only; default 60)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="rendering processes")
    parser.add_argument("--force", action="store_true", help="regenerate even if the folder is up to date")
    parser.add_argument("--format", choices=("folders", "csv"), default="folders",
                        help="csv: also write <folder>/dataset.csv (path,pid,camid,split), usable as "
                             "DATASETS.TRAIN/TEST csv:<folder>/dataset.csv")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    setup_logger()
    for style in STYLES if args.style == "both" else (args.style,):
        # Duke has no distractor or junk images, so with --style both those flags only reach market.
        has_extras = get_style(style).has_gallery_extras
        start = time.perf_counter()
        folder = generate_synthetic(
            style, args.root, num_train_ids=args.train_ids, num_test_ids=args.test_ids,
            images_per_camera=args.images_per_camera, seed=args.seed, workers=args.workers, force=args.force,
            num_distractors=args.distractors if has_extras else None,
            num_junk=args.junk if has_extras else None,
        )
        print(f"{folder}  ({time.perf_counter() - start:.1f} s)")
        if args.format == "csv":
            print(f"  listed in {write_market_csv(folder)}: use DATASETS.TRAIN/TEST \"('csv:{folder}/dataset.csv',)\"")
        for subset, counts in read_manifest(folder)["subsets"].items():
            extras = counts["distractors"] or counts["junk"]
            note = f"  (of which {counts['distractors']} distractors, {counts['junk']} junk)" if extras else ""
            print(f"  {subset:<20}{counts['identities']:>5} identities {counts['images']:>6} images "
                  f"{counts['cameras']:>3} cameras{note}")


def entry() -> None:
    """The ``reid-make-synthetic`` console script."""
    run_cli(main)
