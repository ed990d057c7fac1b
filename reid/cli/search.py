"""Rank a gallery folder for query images and print (and optionally draw) the top matches.

    python tools/search.py --weights best.pth --query person.jpg --gallery gallery/ --topk 10
    python tools/search.py --weights release.pth --query queries/ --gallery gallery/ --vis ranks.jpg

Distances are the evaluator's: cosine (1 - cosine similarity) or euclidean (on L2-normalised features
when TEST.FEAT_NORM); the default is the config's TEST.METRIC. --vis draws one strip per query: the
query, then its top-k with rank and distance (framed green/red when file names carry identities).
Every argument is checked before any feature is extracted. An image that cannot be decoded is skipped
with a warning naming it (a query gets no list, a gallery image is never ranked); --strict stops instead.
"""

from __future__ import annotations

import sys
from pathlib import Path

from reid.export import FeatureExtractor
from reid.export.image_files import describe_others
from reid.export.search import METRICS, check_search_settings, rank_images, search_images
from reid.utils.cli import add_config_arguments, add_extractor_arguments, parse_args, parser_from_docstring, run_cli


def main(argv: list[str] | None = None) -> None:
    parser = add_extractor_arguments(add_config_arguments(parser_from_docstring(__doc__)))
    parser.add_argument("--query", "-q", required=True, help="a query image or a folder of query images")
    parser.add_argument("--gallery", "-g", required=True, help="folder of gallery images (searched recursively)")
    parser.add_argument("--topk", "-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--metric", choices=METRICS, default=None, help="distance (default: the config's TEST.METRIC)")
    parser.add_argument("--vis", default=None, metavar="IMAGE", help="draw the results into this .jpg/.png")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that cannot be read (default: skip it with a warning)")
    args = parse_args(parser, argv)
    # Everything that can be checked without the model is checked first: a typo must not cost an extraction.
    check_search_settings(args.topk, args.metric)
    if args.vis:
        # Imported here: drawing loads matplotlib (through reid.evaluation.visualize), plain search does not.
        from reid.export.search_vis import check_picture_path, draw_search_results

        check_picture_path(args.vis)
    images = search_images(args.query, args.gallery)
    extractor = FeatureExtractor(args.weights, args.config, args.device, args.batch_size, args.opts)
    outcome = rank_images(extractor, images, args.topk, args.metric, strict=args.strict)
    gallery = Path(args.gallery)
    for result in outcome.results:
        print(f"\nquery {result.query}")
        print(f"{'rank':>4}  {'distance':>8}  file")
        for rank, (match, distance) in enumerate(zip(result.matches, result.distances), start=1):
            print(f"{rank:>4}  {distance:>8.4f}  {match.relative_to(gallery)}")
    if outcome.unreadable:
        print(f"\nWarning: {len(outcome.unreadable)} image(s) could not be read and were skipped:", file=sys.stderr)
        for _, reason in outcome.unreadable:
            print(f"  {reason}", file=sys.stderr)
    if images.others:
        print(f"Warning: {describe_others(images.others)}.", file=sys.stderr)
    if args.vis and outcome.results:
        print(f"\nWrote {draw_search_results(outcome.results, args.vis)}")


def entry() -> None:
    """The ``reid-search`` console script."""
    run_cli(main)
