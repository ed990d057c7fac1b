"""Trainer hooks: progress logging, atomic checkpoints, periodic evaluation with best-model tracking."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reid.config import config_to_dict
from reid.engine.run import BEST, LAST, METRICS_NAME, append_jsonl
from reid.engine.trainer import HookBase
from reid.utils import comm
from reid.utils.checkpoint import atomic_save, unwrap_model

logger = logging.getLogger("reid.engine")


class ProgressLogger(HookBase):
    """A status line every SOLVER.LOG_PERIOD iterations: losses, accuracy, lr, images/s, ETA."""

    def __init__(self, output_dir: str | Path, period: int, batch_size: int) -> None:
        self.metrics_path = Path(output_dir) / METRICS_NAME
        self.period = max(1, period)
        self.batch_size = batch_size

    def before_train(self) -> None:
        self.start = time.perf_counter()
        self.start_iter = self.trainer.iter
        self.window_start, self.window_iter = self.start, self.trainer.iter

    def after_step(self) -> None:
        t = self.trainer
        in_epoch = t.iter - t.epoch * t.iters_per_epoch
        if in_epoch % self.period and in_epoch != t.iters_per_epoch:
            return
        now = time.perf_counter()
        speed = (t.iter - self.window_iter) * self.batch_size / max(now - self.window_start, 1e-9)
        self.window_start, self.window_iter = now, t.iter
        done = t.iter - self.start_iter
        remaining = t.max_epochs * t.iters_per_epoch - t.iter
        eta = datetime.timedelta(seconds=int((now - self.start) / max(done, 1) * remaining))
        m = t.last_metrics
        terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
        acc = f" | acc {100 * m['acc']:.1f}%" if "acc" in m else ""
        logger.info(
            f"epoch {t.epoch + 1}/{t.max_epochs} iter {in_epoch}/{t.iters_per_epoch} | loss {m['loss']:.3f} "
            f"({terms}){acc} | lr {m['lr']:.2e} | {speed:.0f} img/s | eta {eta}"
        )
        if comm.is_main_process():
            append_jsonl(self.metrics_path, {"type": "train", "epoch": t.epoch + 1, "iter": t.iter,
                                             "img_per_s": round(speed, 1), **m})


class Checkpointer(HookBase):
    """``last.pth`` after every epoch and ``epoch_NNN.pth`` every SOLVER.CHECKPOINT_PERIOD, rank 0 only.

    A checkpoint is the trainer's state (with every hook's entries), the config, and ``metadata`` given
    here (e.g. the number of training identities). The epoch is stored inside the file; nothing is ever
    parsed from a file name.
    """

    def __init__(self, output_dir: str | Path, period: int, metadata: Mapping | None = None) -> None:
        self.dir = Path(output_dir)
        self.period = period
        self.metadata = dict(metadata or {})

    def state_dict(self) -> dict:
        return {"config": config_to_dict(self.trainer.cfg), **self.metadata}

    def save(self, name: str) -> Path | None:
        if not comm.is_main_process():
            return None
        t = self.trainer
        # A full disk stops the run with one message that says where the work is (the file is untouched).
        note = (f"The last good checkpoint is {t.last_checkpoint}; continue with tools/train.py --config "
                f"{self.dir / 'config.yaml'} --resume once there is space." if t.last_checkpoint else None)
        path = atomic_save(t.state_dict(), self.dir / name, note=note)
        t.last_checkpoint = str(path)
        return path

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch + 1
        if comm.is_main_process():
            self.save(LAST)
            if self.period > 0 and epoch % self.period == 0:
                self.save(f"epoch_{epoch:03d}.pth")
        comm.synchronize()


class PeriodicEvaluator(HookBase):
    """Evaluate every TEST.EVAL_PERIOD epochs and after the last; keep ``best.pth`` by TEST.BEST_METRIC.

    ``evaluate`` maps the model to ``{dataset: {metric: value}}``; the best is judged on the first
    dataset of DATASETS.TEST (the source domain in the shipped configs). The best so far is this hook's
    state: it is saved in every checkpoint (``best``) and restored on ``--resume``.
    """

    def __init__(self, evaluate: Callable, period: int, metric: str, checkpointer: Checkpointer,
                 output_dir: str | Path) -> None:
        self.evaluate = evaluate
        self.period = period
        self.metric = metric
        self.checkpointer = checkpointer
        self.metrics_path = Path(output_dir) / METRICS_NAME
        self.results: dict | None = None
        self.best: dict | None = None

    def state_dict(self) -> dict:
        return {"best": self.best}

    def load_state_dict(self, state: Mapping) -> None:
        self.best = state.get("best")

    def after_epoch(self) -> None:
        t = self.trainer
        epoch = t.epoch + 1
        if not (epoch == t.max_epochs or (self.period > 0 and epoch % self.period == 0)):
            return
        if comm.is_main_process():
            results = self.evaluate(unwrap_model(t.model))
            self.results = results
            append_jsonl(self.metrics_path, {"type": "eval", "epoch": epoch, "results": results})
            dataset, first = next(iter(results.items()))
            value = first[self.metric]
            if self.best is None or value > self.best["value"]:
                self.best = {"metric": self.metric, "value": value, "epoch": epoch, "dataset": dataset}
                self.checkpointer.save(BEST)
                # last.pth was written before this evaluation; it must know the new best for --resume.
                self.checkpointer.save(LAST)
                logger.info(f"New best {self.metric} {100 * value:.2f}% at epoch {epoch}: saved best.pth")
        comm.synchronize()
        t.model.train()
