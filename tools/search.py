#!/usr/bin/env python
"""Rank a gallery folder for query images and print (and optionally draw) the top matches.

    python tools/search.py --weights best.pth --query person.jpg --gallery gallery/ --topk 10
    python tools/search.py --weights release.pth --query queries/ --gallery gallery/ --vis ranks.jpg

Distances are the evaluator's: cosine (1 - cosine similarity) or euclidean (on L2-normalised features
when TEST.FEAT_NORM); the default is the config's TEST.METRIC. --vis draws one strip per query: the
query, then its top-k with rank and distance (framed green/red when file names carry identities).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from reid.export import FeatureExtractor, search_folder  # noqa: E402
from reid.utils.cli import add_config_arguments, add_extractor_arguments, parser_from_docstring, run_cli  # noqa: E402


def main() -> None:
    parser = add_extractor_arguments(add_config_arguments(parser_from_docstring(__doc__)))
    parser.add_argument("--query", "-q", required=True, help="a query image or a folder of query images")
    parser.add_argument("--gallery", "-g", required=True, help="folder of gallery images (searched recursively)")
    parser.add_argument("--topk", "-k", type=int, default=10, help="results per query (default 10)")
    parser.add_argument("--metric", choices=("cosine", "euclidean"), default=None,
                        help="distance (default: the config's TEST.METRIC)")
    parser.add_argument("--vis", default=None, metavar="IMAGE", help="draw the results into this .jpg/.png")
    args = parser.parse_args()
    extractor = FeatureExtractor(args.weights, args.config, args.device, args.batch_size, args.opts)
    results = search_folder(extractor, args.query, args.gallery, args.topk, args.metric)
    gallery = Path(args.gallery)
    for result in results:
        print(f"\nquery {result.query}")
        print(f"{'rank':>4}  {'distance':>8}  file")
        for rank, (match, distance) in enumerate(zip(result.matches, result.distances), start=1):
            print(f"{rank:>4}  {distance:>8.4f}  {match.relative_to(gallery)}")
    if args.vis:
        # Imported here: drawing loads matplotlib (through reid.evaluation.visualize), plain search does not.
        from reid.export.search_vis import draw_search_results

        print(f"\nWrote {draw_search_results(results, args.vis)}")


if __name__ == "__main__":
    run_cli(main)
