"""``export_model``: write a trained model as ONNX, TorchScript or a release file, and prove it works.

The file is written next to the output under a temporary name, then run on verification batches and
compared with the PyTorch model (:mod:`reid.export.verify`). Only a file that passes is renamed to the
output path; one that fails is kept as ``<output>.failed`` for inspection (so nothing half-checked sits
under the name a deployment would pick up) and an :class:`ExportVerificationError` says why.

Verification batches: deterministic uniform-noise images (seed 0) at INPUT.SIZE_TEST, at two batch sizes
(1 and 4) for a dynamic batch or at the fixed batch size, plus up to 16 real images from an optional
folder. The reference is always the float32 PyTorch model.
"""

from __future__ import annotations

import copy
import os
from contextlib import nullcontext
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from yacs.config import CfgNode

from reid.engine.run import RunFolder, lock_output
from reid.export import onnx_export, torchscript
from reid.export.exportable import ExportableReID, load_exportable
from reid.export.image_files import check_writable_file, find_images
from reid.export.preprocess import Preprocessor
from reid.export.release import input_spec, save_release
from reid.export.verify import (
    FP16_TOLERANCE,
    FP32_TOLERANCE,
    VerificationReport,
    verify,
)
from reid.utils.errors import ReIDError
from reid.utils.fsio import TMP_SUFFIX, WriteError, describe_write_error, find_os_error, is_write_failure

FORMATS = ("onnx", "torchscript", "release")
DYNAMIC_BATCH_SIZES = (1, 4)  # a dynamic batch axis is checked with two sizes
MAX_VERIFY_IMAGES = 16


class ExportVerificationError(ReIDError):
    """The exported file does not reproduce the PyTorch model."""


@dataclass
class ExportResult:
    path: Path
    format: str
    input: dict  # see reid.export.release.input_spec
    feat_dim: int
    batch: int | None  # None: dynamic
    report: VerificationReport

    def summary(self) -> str:
        size_mb = self.path.stat().st_size / 2**20
        h, w = self.input["size"]
        batch = "dynamic" if self.batch is None else str(self.batch)
        return "\n".join([
            f"Wrote {self.path} ({self.format}, {size_mb:.1f} MiB)",
            (f"  input : {self.input['dtype']} {self.input['layout']} (N, 3, {h}, {w}), N {batch}, RGB in [0, 1] "
             "(mean/std normalisation is inside the model)"),
            f"  output: {self.input['dtype']} (N, {self.feat_dim}) features",
            "Verification against the PyTorch model:",
            self.report.format(),
        ])


def export_model(weights: str | Path, output: str | Path, fmt: str, config: str | Path | CfgNode | None = None,
                 opts: Sequence[str] = (), batch: int | None = None, half: bool = False,
                 opset: int = onnx_export.DEFAULT_OPSET, verify_images: str | Path | None = None) -> ExportResult:
    """Export ``weights`` (a training checkpoint or release file) to ``output`` in format ``fmt``.

    ``batch=None`` exports a dynamic batch axis (ONNX; a TorchScript trace is batch-agnostic anyway).
    ``half`` exports float16 (ONNX, TorchScript: inputs and outputs float16) or stores float16 weights
    (release). ``opset`` only applies to ONNX.
    """
    if fmt not in FORMATS:
        raise ReIDError(f"Unknown export format {fmt!r}; use one of {', '.join(FORMATS)}.")
    if batch is not None and batch < 1:
        raise ReIDError(f"The export batch size must be at least 1 (or dynamic), got {batch}.")
    if batch is not None and fmt != "onnx":
        raise ReIDError(f"A fixed batch size (--batch {batch}) applies to ONNX only: a {fmt} export takes any "
                        "batch size. Leave --batch out.")
    output = Path(output)
    if output.is_dir():
        raise ReIDError(f"Export output {output} is a folder; give a file name such as {output / 'model.onnx'}.")
    check_writable_file(output)  # before the model is loaded and exported, not after
    # Into a run's folder, the export takes the folder's lock like any command that writes there; any other
    # folder is left without a lock file.
    in_run_folder = bool(RunFolder(output.parent).run_files())
    with lock_output(output.parent) if in_run_folder else nullcontext():
        return _export(weights, output, fmt, config, opts, batch, half, opset, verify_images)


def _export(weights: str | Path, output: Path, fmt: str, config: str | Path | CfgNode | None, opts: Sequence[str],
            batch: int | None, half: bool, opset: int, verify_images: str | Path | None) -> ExportResult:
    module, cfg = load_exportable(weights, config, opts, "cpu")
    batches = _verification_batches(cfg, batch, verify_images)
    # One name per target, so the next export to it replaces a killed one's leftover; shaped like atomic_write's
    # temporaries, so that in a run's folder the next command that takes the lock removes it too.
    tmp = output.with_name(f".{output.name}.export__{TMP_SUFFIX}")
    try:
        run, operators, forbidden = _write(fmt, module, cfg, tmp, batch, half, opset)
        tolerance = FP16_TOLERANCE if half else FP32_TOLERANCE
        report = verify(run, module, batches, tolerance, operators, forbidden)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if isinstance(exc, Exception) and not isinstance(exc, ReIDError) and is_write_failure(exc):
            # A full disk or an unwritable folder: one message naming the file, nothing half-written left.
            raise WriteError(describe_write_error(exc, output), output, find_os_error(exc)) from None
        raise
    if not report.passed:
        failed = output.with_name(output.name + ".failed")
        os.replace(tmp, failed)
        raise ExportVerificationError(
            f"The exported {fmt} model does not reproduce the PyTorch model; it was kept as {failed} for "
            f"inspection and {output} was not written.\n{report.format()}"
        )
    os.replace(tmp, output)
    return ExportResult(output, fmt, input_spec(cfg, half and fmt != "release"), module.feat_dim, batch, report)


def _write(fmt: str, module: ExportableReID, cfg: CfgNode, path: Path, batch: int | None, half: bool,
           opset: int) -> tuple[Callable[[torch.Tensor], torch.Tensor], set[str], frozenset[str]]:
    """Write the file and return (runner of the written file, its operators, operators it must not hold)."""
    size = tuple(cfg.INPUT.SIZE_TEST)
    # Exports run on a copy: the float32 module stays the reference.
    exported = copy.deepcopy(module).half() if half and fmt != "release" else module
    if fmt == "onnx":
        onnx_export.export_onnx(exported, path, size, batch, half, opset)
        session = onnx_export.onnx_session(path)

        def run_onnx(images: torch.Tensor) -> torch.Tensor:
            return torch.from_numpy(onnx_export.run_onnx(session, images)).float()

        return run_onnx, onnx_export.onnx_operators(path), onnx_export.RANDOM_OPS
    if fmt == "torchscript":
        torchscript.export_torchscript(exported, path, size, batch, half)
        loaded = torchscript.load_torchscript(path)
        dtype = torch.float16 if half else torch.float32

        def run_torchscript(images: torch.Tensor) -> torch.Tensor:
            return loaded(images.to(dtype)).float()

        return run_torchscript, torchscript.torchscript_operators(loaded), torchscript.RANDOM_OPS
    save_release(module.model, cfg, path, half)
    rebuilt, _ = load_exportable(path)  # from the file alone: its stored config must rebuild the model
    return rebuilt, set(), frozenset()


def _verification_batches(cfg: CfgNode, batch: int | None, images_dir: str | Path | None
                          ) -> list[tuple[str, torch.Tensor]]:
    size = tuple(cfg.INPUT.SIZE_TEST)
    generator = torch.Generator().manual_seed(0)
    batches = [("random images (seed 0)", torch.rand(n, 3, *size, generator=generator))
               for n in ((batch,) if batch else DYNAMIC_BATCH_SIZES)]
    if images_dir is not None:
        paths = find_images(images_dir)[:MAX_VERIFY_IMAGES]
        preprocess = Preprocessor(cfg)
        images = torch.stack([preprocess(p) for p in paths])
        if batch:  # a fixed-batch graph only takes that many: repeat or cut
            images = images[torch.arange(batch) % len(images)]
        batches.append((f"images from {Path(images_dir).name}/", images))
    return batches
