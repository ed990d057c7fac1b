"""Extract features of every image in a folder tree into an .npz file.

    python tools/extract.py --weights output/lfm_market/best.pth --images my_crops/ --output feats.npz
    python tools/extract.py --weights lfm_market_release.pth --images gallery/ --output g.npz TEST.FLIP True
    python tools/extract.py --weights lfm_market_release.pth --images crops/ --output f.npz --strict

The .npz holds ``features`` (N, D) float32, ``paths`` (relative to --images), ``pids`` and ``camids``
(parsed from Market-1501 / DukeMTMC-reID / MSMT17 style names, camid 0-based; -1 otherwise), ``root`` and
``unreadable`` (images that could not be read). Images: .jpg .jpeg .png .bmp, searched recursively; other
files are not read (their number is reported). An image that cannot be decoded (corrupt, truncated, not an
image) is skipped with a warning naming it, and listed under ``unreadable``; --strict stops at the first one
instead (exit code 2). --weights is a training checkpoint or a release file.
"""

from __future__ import annotations

import sys

from reid.export import FeatureExtractor, extract_folder
from reid.export.folder_features import check_output_path
from reid.utils.cli import add_config_arguments, add_extractor_arguments, parse_args, parser_from_docstring, run_cli
from reid.utils.progress import Progress


def main(argv: list[str] | None = None) -> None:
    parser = add_extractor_arguments(add_config_arguments(parser_from_docstring(__doc__)))
    parser.add_argument("--images", "-i", required=True, help="folder of images (searched recursively)")
    parser.add_argument("--output", "-o", required=True, help=".npz file to write")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first image that cannot be read (default: skip it with a warning)")
    args = parse_args(parser, argv)
    check_output_path(args.output)  # before hours of extraction, not after
    extractor = FeatureExtractor(args.weights, args.config, args.device, args.batch_size, args.opts)
    with Progress("extract", stream=sys.stderr) as progress:
        def report(done: int, total: int) -> None:
            progress.total = total  # known once the folder is listed
            progress.set(done)

        result = extract_folder(extractor, args.images, progress=report, strict=args.strict)
    path = result.save(args.output)
    for line in result.report():
        print(f"Warning: {line}" if not line.startswith(" ") else line, file=sys.stderr)
    known = int((result.pids >= 0).sum())
    skipped = f"; {len(result.unreadable)} unreadable image(s) skipped" if result.unreadable else ""
    print(f"Wrote {path}: {len(result.paths)} features of dimension {result.features.shape[1]} "
          f"({known} with an identity parsed from the file name{skipped}).")


def entry() -> None:
    """The ``reid-extract`` console script."""
    run_cli(main)
