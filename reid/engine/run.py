"""Run services: one home for what every command does with its OUTPUT_DIR.

- :func:`setup_run`: join DDP when launched by torchrun, log to ``OUTPUT_DIR/log.txt``, draw a seed when
  ``SEED < 0``, save the config;
- :class:`RunFolder`: the output-folder policy of training (is there a run already? archive it on
  ``--overwrite``, trim the metrics a killed run wrote after its checkpoint on ``--resume``) and the files
  a run writes (``metrics.jsonl``, ``results.json``);
- :func:`write_results`: ``results.json`` without ever losing an earlier one;
- :func:`lock_output`: one run per output folder (:class:`reid.utils.runlock.RunLock`, held by rank 0);
- :func:`resolve_weights`: which checkpoint an evaluation tool evaluates.

Every file is written atomically (:mod:`reid.utils.fsio`): a full disk gives one message naming the file and
the space, and leaves what was saved before as it was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from yacs.config import CfgNode

from reid.config import save_config
from reid.data.io import set_max_image_pixels
from reid.utils import comm
from reid.utils.env import random_seed, resolve_device
from reid.utils.errors import CheckpointError, ReIDError
from reid.utils.fsio import append_text, atomic_write_text, remove_stale_temporaries
from reid.utils.logger import setup_logger
from reid.utils.runlock import RunLock

logger = logging.getLogger("reid.engine")

CONFIG_NAME = "config.yaml"
METRICS_NAME = "metrics.jsonl"
RESULTS_NAME = "results.json"
LOG_NAME = "log.txt"
TENSORBOARD_DIR = "tensorboard"
LAST, BEST = "last.pth", "best.pth"


def setup_run(cfg: CfgNode, config_name: str | None = CONFIG_NAME) -> torch.device:
    """Join DDP if launched by torchrun, set up logging to OUTPUT_DIR and save the final config there.

    Evaluation tools pass their own ``config_name`` so they never overwrite the training config;
    ``None`` saves nothing (training saves it once the run is known to start).
    """
    device_name = resolve_device(cfg.DEVICE)
    set_max_image_pixels(cfg.INPUT.MAX_IMAGE_PIXELS)
    comm.init_distributed_from_env(use_cuda=device_name.startswith("cuda"))
    setup_logger(cfg.OUTPUT_DIR, comm.get_rank())
    if cfg.SEED < 0:  # drawn once, shared by every rank, and written into the saved config
        seed = comm.broadcast_object(random_seed())
        logger.info(f"SEED {cfg.SEED} < 0: drew the random seed {seed}.")
        was_frozen = cfg.is_frozen()
        cfg.defrost()
        cfg.SEED = seed
        if was_frozen:
            cfg.freeze()
    device = comm.local_device(device_name)
    if cfg.DETERMINISTIC:
        torch.use_deterministic_algorithms(True, warn_only=True)
    if config_name is not None and comm.is_main_process():
        save_config(cfg, Path(cfg.OUTPUT_DIR) / config_name)
    return device


@contextmanager
def lock_output(folder: str | Path) -> Iterator[RunLock]:
    """The exclusive lock of an output folder for a command's whole run (``with lock_output(dir): ...``).

    Under DDP only rank 0 holds it (torchrun's RANK; the process group may not exist yet). A second command
    on a locked folder stops at once (exit 2) naming the holder's pid and command; the kernel drops the lock
    when its process dies, so a killed run never leaves a stale one. Once the lock is held, the temporary
    files of writes a killed command left there (each can be a checkpoint's size) are removed: no other
    writer can be mid-write in the folder then.
    """
    hold = comm.get_rank_from_env() == 0
    with RunLock(folder, hold=hold) as lock:
        if hold:
            remove_stale_temporaries(folder)
        yield lock


#: What the numbers of every results.json mean (test, training, attacks).
RESULTS_UNITS = "metrics are fractions in [0, 1]; the tools print them as percentages"


def write_results(output_dir: str | Path, data: dict) -> Path:
    """Write ``results.json``; an earlier one is kept as ``results.<mtime>.json``, never silently lost.

    The earlier file is linked (or copied) to its archived name before the new one is written atomically, so
    a full disk leaves both the old results and their archive in place.
    """
    path = Path(output_dir) / RESULTS_NAME
    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
        archived = path.with_name(f"results.{stamp}.json")
        if not archived.exists():
            try:
                os.link(path, archived)
            except OSError:
                shutil.copy2(path, archived)
    return atomic_write_text(path, json.dumps(data, indent=2))


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON object per line: easy to tail, grep and load with pandas (a failed append leaves no half line)."""
    append_text(path, json.dumps(record) + "\n")


class RunFolder:
    """A training run's OUTPUT_DIR: what it holds, and the policy for starting, replacing or resuming it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_NAME

    @property
    def last(self) -> Path:
        return self.path / LAST

    def run_files(self) -> list[str]:
        """The files that show a training run has used this folder (checkpoints, its config, log or metrics)."""
        names = (LAST, BEST, CONFIG_NAME, LOG_NAME, METRICS_NAME)
        return [name for name in names if (self.path / name).is_file()] + sorted(
            p.name for p in self.path.glob("epoch_*.pth"))

    def check_start(self, resume: bool, overwrite: bool) -> None:
        """A folder that already holds a run is continued with ``resume``, replaced with ``overwrite``, and
        otherwise refused, so a finished model is never lost to a repeated command."""
        existing = self.run_files() if self.path.is_dir() else []
        if existing and not (resume or overwrite):
            raise ReIDError(
                f"OUTPUT_DIR {self.path} already holds a training run ({', '.join(existing)}). Continue it with "
                "--resume (which starts from scratch when no checkpoint was written yet), train into another "
                "OUTPUT_DIR, or pass --overwrite to replace its checkpoints and config (its log and metrics are "
                "kept under time-stamped names)."
            )

    def archive_previous_run(self, remove_checkpoints: bool = True) -> None:
        """Before a fresh start (``--overwrite``) in a used folder: no stale file may pass for the new run's.

        The old log and metrics are kept under a time-stamped name (like ``results.json``); its
        checkpoints, which ``--overwrite`` replaces by definition, are removed so an old ``best.pth``
        or ``epoch_NNN.pth`` cannot be mistaken for one of the new run.
        """
        if not self.path.is_dir():
            return
        stamp = time.strftime("%Y%m%d-%H%M%S")
        for name in (METRICS_NAME, LOG_NAME, TENSORBOARD_DIR):
            path = self.path / name
            if path.exists():
                path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
        if not remove_checkpoints:
            return
        for path in [self.path / LAST, self.path / BEST, *self.path.glob("epoch_*.pth")]:
            path.unlink(missing_ok=True)

    def truncate_metrics(self, iteration: int, epoch: int) -> None:
        """Drop the records a killed run wrote after its last checkpoint: the resumed run writes them again."""
        if not self.metrics.is_file():
            return
        kept = []
        for line in self.metrics.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:  # a line cut short by the kill
                continue
            if record.get("iter", 0) <= iteration and record.get("epoch", 0) <= epoch:
                kept.append(line)
        atomic_write_text(self.metrics, "".join(line + "\n" for line in kept))

    def previous_results(self) -> dict:
        """The results a finished run wrote (empty when it wrote none)."""
        try:
            return json.loads((self.path / RESULTS_NAME).read_text()).get("results", {})
        except (OSError, ValueError):
            return {}


def resolve_weights(cfg: CfgNode, weights: str | Path | None) -> Path:
    """--weights, else TEST.WEIGHTS, else OUTPUT_DIR/best.pth, else OUTPUT_DIR/last.pth."""
    out = Path(cfg.OUTPUT_DIR)
    for candidate in (weights, cfg.TEST.WEIGHTS, out / BEST, out / LAST):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
        if candidate and (candidate == weights or candidate == cfg.TEST.WEIGHTS):
            raise CheckpointError(f"Weights file {candidate} does not exist.")
    raise CheckpointError(
        f"No weights given and none found in {out} (best.pth or last.pth). Pass --weights PATH or train first."
    )
