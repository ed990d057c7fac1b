"""ONNX export (TorchScript-based exporter) and running the result with ONNX Runtime on the CPU.

``torch.onnx.export(dynamo=False)`` is used on purpose: from torch 2.9 the default is the torch.export
based exporter, which needs ``onnxscript`` (not a dependency here); the TorchScript-based one exports a
ResNet with static control flow exactly and works the same on torch 2.11 and 2.15. The graph has one
input ``images`` (N, 3, H, W) and one output ``features`` (N, D); with a dynamic batch, N is symbolic.
"""

from __future__ import annotations

import importlib
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from reid.utils.errors import ReIDError, summarize_exception

INPUT_NAME = "images"
OUTPUT_NAME = "features"
DEFAULT_OPSET = 17  # supported by every ONNX Runtime since 1.12 and by the TorchScript-based exporter
# Operators that draw random numbers: a train-only regulariser (LFM, dropout) leaking into the graph.
RANDOM_OPS = frozenset({"RandomUniform", "RandomUniformLike", "RandomNormal", "RandomNormalLike", "Bernoulli",
                        "Multinomial", "Dropout"})


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ReIDError(f"ONNX export and verification need the '{module}' package: pip install {module}.") from exc


def export_onnx(module: nn.Module, path: str | Path, input_size: tuple[int, int], batch: int | None = None,
                half: bool = False, opset: int = DEFAULT_OPSET) -> Path:
    """Write ``module`` (on the CPU, in eval mode) as ONNX; ``batch=None`` makes the batch axis dynamic."""
    _require("onnx")
    dtype = torch.float16 if half else torch.float32
    example = torch.rand(batch or 2, 3, *input_size, dtype=dtype)
    dynamic_axes = None if batch else {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    with warnings.catch_warnings():
        # The "legacy exporter" deprecation notice and tracer hints are not actionable for the user.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            torch.onnx.export(module.eval(), (example,), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True, dynamo=False)
        except Exception as exc:  # an unsupported opset or operator: say which, without a traceback
            raise ReIDError(f"ONNX export to {path} failed (opset {opset}): {summarize_exception(exc)}") from exc
    return Path(path)


def onnx_operators(path: str | Path) -> set[str]:
    """Every operator type in the ONNX file's graph, sub-graphs included."""
    onnx = _require("onnx")
    found: set[str] = set()

    def walk(graph) -> None:
        for node in graph.node:
            found.add(node.op_type)
            for attribute in node.attribute:
                for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                    walk(sub)

    walk(onnx.load(str(path), load_external_data=False).graph)
    return found


def onnx_session(path: str | Path, threads: int | None = None, spinning: bool = False):
    """An ONNX Runtime CPU session; ``threads`` sets intra-op threads (None: ONNX Runtime's default).

    ``spinning=False`` stops idle worker threads from busy-waiting for the next run, which otherwise takes
    the cores from PyTorch running in the same process (a benchmark of ONNX Runtime alone may allow it).
    """
    ort = _require("onnxruntime")
    options = ort.SessionOptions()
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # e.g. an operator without a CPU kernel for this dtype
        raise ReIDError(f"ONNX Runtime cannot load {path}: {summarize_exception(exc)}") from exc


def run_onnx(session, images: torch.Tensor) -> np.ndarray:
    """The session's output for a batch (converted to the dtype the graph expects)."""
    dtype = np.float16 if session.get_inputs()[0].type == "tensor(float16)" else np.float32
    return session.run([OUTPUT_NAME], {INPUT_NAME: images.cpu().numpy().astype(dtype)})[0]
