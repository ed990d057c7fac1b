"""Checkpoints: atomic writes, safe reads (``weights_only=True``), and RNG state as plain tensors.

A checkpoint holds tensors, numbers, strings, lists and dicts only, so ``torch.load(weights_only=True)``
reads it and a crafted file cannot run code. Writes go to a temporary file that is renamed over the
target, so a kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reid.utils.errors import CheckpointError
from reid.utils.fsio import atomic_write
from reid.utils.paths import describe_path_problem

CHECKPOINT_FORMAT = "lfm-reid/checkpoint"  # written by tools/train.py
RELEASE_FORMAT = "lfm-reid/release"  # written by tools/export.py --format release (reid.export.release)
RELEASE_VERSION = 1  # raise when the release layout changes in a way older readers cannot follow


def atomic_save(obj: Any, path: str | Path, note: str | None = None) -> Path:
    """``torch.save`` to a temporary file in the same folder, fsync, then rename over ``path``.

    A full disk, a quota or any other OS error becomes a :class:`reid.utils.fsio.WriteError` naming the file,
    the bytes needed and free, and ``note`` (e.g. "The last good checkpoint is ... (epoch 12)."); the previous
    ``path`` and everything else in the folder stay as they were, and the temporary file is removed.
    """
    return atomic_write(path, lambda f: torch.save(obj, f), bytes_needed=tensor_bytes(obj), note=note)


def tensor_bytes(obj: Any) -> int:
    """Bytes of the tensor storages in a nested dict/list/tuple: about what ``torch.save`` writes."""
    storages: dict[int, int] = {}  # views of one storage are written once

    def visit(value: Any) -> None:
        if isinstance(value, torch.Tensor):
            storage = value.untyped_storage()
            storages[storage.data_ptr() or id(storage)] = storage.nbytes()
        elif isinstance(value, dict):
            for item in value.values():
                visit(item)
        elif isinstance(value, (list, tuple)):
            for item in value:
                visit(item)

    visit(obj)
    return sum(storages.values())


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Read a checkpoint without executing code from it; a clear CheckpointError otherwise."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"Checkpoint {path} is a folder; pass a checkpoint file in it (e.g. {path}/best.pth).")
    problem = describe_path_problem(path, expect="file")
    if problem is not None:
        raise CheckpointError(f"Checkpoint {problem.text}.")
    if path.stat().st_size == 0:
        raise CheckpointError(f"Checkpoint {path} is empty (0 bytes): an interrupted copy or write? Use another file.")
    export_kind = _export_kind(path)
    if export_kind:
        article = "an" if export_kind == "ONNX" else "a"
        raise CheckpointError(
            f"{path} is {article} {export_kind} export (tools/export.py), made for deployment; it cannot be loaded "
            "back for training or evaluation. Pass the training checkpoint (OUTPUT_DIR/best.pth or last.pth) or a "
            "release file (tools/export.py --format release).")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"Cannot read checkpoint {path}: {describe_load_failure(exc)}") from exc
    if isinstance(data, dict):
        check_format(data, path)
    if not isinstance(data, dict) or "model" not in data or not isinstance(data["model"], dict):
        raise CheckpointError(
            f"{path} is not a model checkpoint of this toolkit: expected a mapping with a 'model' state dict "
            "(written by tools/train.py or tools/export.py --format release)."
        )
    return data


def check_format(data: dict, path: str | Path) -> None:
    """Refuse a file whose ``format`` is neither a training checkpoint's nor a release file's, or a release
    file of a newer ``version`` than this code reads, instead of failing later on a missing key.

    Files without a ``format`` field (a plain ``{"model", "config"}`` dict) pass: their contents are checked
    by whoever uses them.
    """
    if "format" not in data:
        return
    fmt, version = data["format"], data.get("version")
    if fmt == CHECKPOINT_FORMAT:
        return
    if fmt != RELEASE_FORMAT:
        raise CheckpointError(
            f"{path} is a {fmt!r} file, not a model of this toolkit: expected a training checkpoint "
            f"({CHECKPOINT_FORMAT!r}, written by tools/train.py) or a release file ({RELEASE_FORMAT!r}, written by "
            "tools/export.py --format release).")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{path} is a release file with an invalid version {version!r} (expected an integer "
                              "from 1): it was altered or damaged. Export it again with tools/export.py.")
    if version > RELEASE_VERSION:
        raise CheckpointError(
            f"{path} is a release file of version {version}, written by a newer lfm-reid; this installation reads "
            f"release files up to version {RELEASE_VERSION}. Update lfm-reid, or export the model again with "
            "this version's tools/export.py.")


def _export_kind(path: Path) -> str | None:
    """'TorchScript' or 'ONNX' when the file is one of our exports, else None."""
    if path.suffix.lower() == ".onnx":
        return "ONNX"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:  # TorchScript archives hold the model's Python code
            if any(name.split("/")[1:2] == ["code"] for name in archive.namelist()):
                return "TorchScript"
    return None


def describe_load_failure(exc: Exception) -> str:
    """Why torch.load failed, in one sentence (torch's advice to turn weights_only off is not ours to give)."""
    text = str(exc)
    if isinstance(exc, (KeyError, IndexError, pickle.UnpicklingError, EOFError)) and "GLOBAL" not in text:
        return "it is not a torch checkpoint (or is corrupt)."  # e.g. a text file read as a legacy pickle
    if "GLOBAL" in text:  # the safe unpickler met a class or function: loading would import and run code
        return ("it holds Python objects that only running code from the file could rebuild, which is refused "
                "on purpose (a checkpoint must never execute code). Re-save it as a plain state dict.")
    if "Weights only load failed" in text:
        return "it is not a torch checkpoint (or is corrupt)."
    first_sentence = next((line.strip() for line in text.splitlines() if line.strip()), type(exc).__name__)
    return f"{first_sentence.split('. ')[0].rstrip('.')}. It is corrupt, truncated or not a torch file."


def get_rng_state() -> dict:
    """Python, numpy and torch RNG states as weights_only-safe values."""
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`get_rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module inside ``torch.compile`` and DistributedDataParallel wrappers (or the model itself)."""
    while True:
        if hasattr(model, "_orig_mod"):  # torch.compile's OptimizedModule
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model
