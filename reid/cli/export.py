"""Export a trained model as ONNX, TorchScript or a release file, verified against PyTorch before success.

    python tools/export.py --weights output/lfm_market/best.pth --format onnx --output lfm_market.onnx
    python tools/export.py --weights best.pth --format onnx --output model_fp16.onnx --batch 32 --half
    python tools/export.py --weights best.pth --format torchscript --output model.ts --verify-images crops/
    python tools/export.py --config lfm_market.yml --weights best.pth --format release --output lfm_market.pth

The exported model takes RGB images, float32 (float16 with --half), shape (N, 3, H, W) with (H, W) =
INPUT.SIZE_TEST, values in [0, 1] (mean/std normalisation is inside), and returns (N, D) features
(post-BNNeck, L2-normalised when TEST.FEAT_NORM). Without --config the checkpoint's stored config is
used; KEY VALUE overrides apply (after all options). Verification runs the written file on random (and
--verify-images) batches against the float32 PyTorch model: float32 must agree within 1e-4 absolute
(max |diff|), float16 within 1e-2 x max(1, max |ref|) and cosine >= 0.999 per feature. A file that fails
verification is kept as OUTPUT.failed and the command exits non-zero. Verification runs on the CPU, where
float16 TorchScript is slow (about 100 s for a ResNet-50 at 256x128 on 2 cores).
"""

from __future__ import annotations

import argparse

from reid.export import FORMATS, export_model
from reid.export.onnx_export import DEFAULT_OPSET
from reid.utils.cli import add_config_arguments, parse_args, parser_from_docstring, run_cli


def batch_size(value: str) -> int | None:
    """``dynamic`` -> None, else a positive int."""
    if value == "dynamic":
        return None
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"expected 'dynamic' or a positive integer, got {value!r}")
    return int(value)


def main(argv: list[str] | None = None) -> None:
    parser = add_config_arguments(parser_from_docstring(__doc__))
    parser.add_argument("--weights", "-w", required=True, help="training checkpoint or release file")
    parser.add_argument("--format", "-f", required=True, choices=FORMATS, help="what to write")
    parser.add_argument("--output", "-o", required=True, help="file to write")
    parser.add_argument("--batch", type=batch_size, default=None, metavar="dynamic|N",
                        help="batch axis: dynamic (default) or a fixed size N (ONNX)")
    parser.add_argument("--half", action="store_true",
                        help="float16 model (ONNX, TorchScript) or float16 weights (release)")
    parser.add_argument("--opset", type=int, default=None, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--verify-images", default=None, metavar="DIR",
                        help="also verify on up to 16 images of this folder (besides random images)")
    args = parse_args(parser, argv)
    if args.opset is not None and args.format != "onnx":
        parser.error("--opset only applies to --format onnx")
    result = export_model(args.weights, args.output, args.format, config=args.config, opts=args.opts,
                          batch=args.batch, half=args.half, opset=args.opset or DEFAULT_OPSET,
                          verify_images=args.verify_images)
    print(result.summary())


def entry() -> None:
    """The ``reid-export`` console script."""
    run_cli(main)
