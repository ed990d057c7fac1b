"""Shared fixtures: tiny synthetic ReID domains generated once per test session."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(autouse=True, scope="session")
def _private_cache_folder(tmp_path_factory):
    """The decoded-image cache (tensor backend) goes to a folder of the test session, never ~/.cache; tools
    run as subprocesses inherit it."""
    import os

    previous = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if previous is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = previous


@pytest.fixture(autouse=True)
def _reid_logger_as_it_was():
    """Tools call setup_logger, which stops the ``reid`` logger propagating (and adds handlers); put it back
    after each test, so a later test's ``caplog`` sees reid's records whatever ran before it."""
    logger = logging.getLogger("reid")
    state = logger.propagate, logger.level, list(logger.handlers)
    yield
    for handler in list(logger.handlers):
        if handler not in state[2]:
            logger.removeHandler(handler)
            handler.close()
    logger.propagate, logger.level = state[0], state[1]
    for handler in state[2]:
        if handler not in logger.handlers:
            logger.addHandler(handler)


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """A data root holding small ``synthetic_market`` and ``synthetic_duke`` domains."""
    from reid.experiments.synthetic import generate_synthetic

    root = tmp_path_factory.mktemp("datasets")
    generate_synthetic("market", root, num_train_ids=16, num_test_ids=10, images_per_camera=2,
                       num_distractors=6, num_junk=3, seed=0, workers=1)
    generate_synthetic("duke", root, num_train_ids=16, num_test_ids=10, images_per_camera=2, seed=0, workers=1)
    return root


def tiny_train_opts(root: Path, output_dir: Path, *extra: str) -> list[str]:
    """Overrides that make bot_synthetic.yml train in seconds on a CPU."""
    return ["DATASETS.ROOT", str(root), "OUTPUT_DIR", str(output_dir), "INPUT.SIZE_TRAIN", "(64, 32)",
            "INPUT.SIZE_TEST", "(64, 32)", "SOLVER.IMS_PER_BATCH", "16", "DATALOADER.NUM_WORKERS", "0",
            "SOLVER.MAX_EPOCHS", "2", "SOLVER.WARMUP_EPOCHS", "1", "SOLVER.STEPS", "(10,)",
            "SOLVER.LOG_PERIOD", "2", "TEST.IMS_PER_BATCH", "64", *extra]
