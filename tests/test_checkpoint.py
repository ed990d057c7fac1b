"""Atomic, safe checkpoints and RNG state round trips."""

import os
import random

import numpy as np
import pytest
import torch

from reid.export.torchscript import export_torchscript
from reid.utils.checkpoint import atomic_save, get_rng_state, load_checkpoint, set_rng_state
from reid.utils.errors import CheckpointError


def test_round_trip_with_rng_state(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    state = {"model": {"w": torch.randn(3)}, "epoch": 4, "rng": get_rng_state(), "config": {"A": [1, 2]}}
    expected = (torch.rand(2), np.random.rand(2), random.random())
    path = atomic_save(state, tmp_path / "last.pth")
    loaded = load_checkpoint(path)  # weights_only=True must accept everything we store
    assert loaded["epoch"] == 4 and torch.equal(loaded["model"]["w"], state["model"]["w"])
    set_rng_state(loaded["rng"])
    assert torch.equal(torch.rand(2), expected[0])
    assert np.array_equal(np.random.rand(2), expected[1])
    assert random.random() == expected[2]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    path = atomic_save({"model": {"w": torch.ones(1)}}, tmp_path / "last.pth")

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a kill in the middle of torch.save

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        atomic_save({"model": {"w": torch.zeros(1)}}, path)
    monkeypatch.undo()
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.ones(1))
    assert os.listdir(tmp_path) == ["last.pth"]  # no temporary file left behind


class Payload:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def test_malicious_checkpoint_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"model": {"x": Payload()}}, path)
    with pytest.raises(CheckpointError, match="refused on purpose"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned.txt").exists()


@pytest.mark.parametrize("content, message", [(b"not a zip", "Cannot read.*not a torch checkpoint"),
                                              (b"hello world\n", "Cannot read.*not a torch checkpoint"),
                                              (None, "does not exist"), (b"", "empty"), (b"\x08\x07", "ONNX export")])
def test_bad_checkpoint_files(tmp_path, content, message):
    path = tmp_path / ("model.onnx" if content == b"\x08\x07" else "ckpt.pth")
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(path)


def test_folder_and_torchscript_export_are_named_for_what_they_are(tmp_path):
    with pytest.raises(CheckpointError, match="is a folder"):
        load_checkpoint(tmp_path)
    scripted = tmp_path / "model.pt"
    export_torchscript(torch.nn.Conv2d(3, 2, 1), scripted, (4, 4))  # traced, as tools/export.py writes them
    with pytest.raises(CheckpointError, match="TorchScript export"):
        load_checkpoint(scripted)


def test_tensor_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "t.pth"
    torch.save(torch.zeros(2), path)
    with pytest.raises(CheckpointError, match="not a model checkpoint"):
        load_checkpoint(path)
