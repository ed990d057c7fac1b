"""Trainer hooks: progress logging, atomic checkpoints, periodic evaluation with best-model tracking."""

from __future__ import annotations

import datetime
import json
import logging
import time
from pathlib import Path
from typing import Callable

from reid.engine.trainer import HookBase
from reid.utils import comm
from reid.utils.checkpoint import CHECKPOINT_FORMAT, atomic_save, get_rng_state, unwrap_model
from reid.config import config_to_dict

logger = logging.getLogger("reid.engine")


def write_results(output_dir: str | Path, data: dict) -> Path:
    """Write ``results.json``; an earlier one is kept as ``results.<mtime>.json``, never silently lost."""
    path = Path(output_dir) / "results.json"
    if path.exists():
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
        path.rename(path.with_name(f"results.{stamp}.json"))
    path.write_text(json.dumps(data, indent=2))
    return path


def append_jsonl(path: Path, record: dict) -> None:
    """One JSON object per line: easy to tail, grep and load with pandas."""
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


class ProgressLogger(HookBase):
    """A status line every SOLVER.LOG_PERIOD iterations: losses, accuracy, lr, images/s, ETA."""

    def __init__(self, output_dir: str, period: int, batch_size: int) -> None:
        self.metrics_path = Path(output_dir) / "metrics.jsonl"
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

    The epoch is stored inside the file; nothing is ever parsed from a file name.
    """

    def __init__(self, output_dir: str, period: int) -> None:
        self.dir = Path(output_dir)
        self.period = period

    def state(self) -> dict:
        t = self.trainer
        return {
            "format": CHECKPOINT_FORMAT,
            "model": unwrap_model(t.model).state_dict(),
            "criterion": t.criterion.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "center_optimizer": t.center_optimizer.state_dict() if t.center_optimizer else None,
            "scheduler": t.scheduler.state_dict(),
            "scaler": t.scaler.state_dict(),
            "epoch": t.epoch + 1,  # completed epochs: training resumes at this 0-based epoch
            "iteration": t.iter,
            "rng": get_rng_state(),
            "config": config_to_dict(t.cfg),
            "num_classes": getattr(t, "num_classes", 0),
            "best": getattr(t, "best", None),
        }

    def save(self, name: str) -> Path | None:
        if not comm.is_main_process():
            return None
        path = atomic_save(self.state(), self.dir / name)
        self.trainer.last_checkpoint = str(path)
        return path

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch + 1
        if comm.is_main_process():
            self.save("last.pth")
            if self.period > 0 and epoch % self.period == 0:
                self.save(f"epoch_{epoch:03d}.pth")
        comm.synchronize()


class PeriodicEvaluator(HookBase):
    """Evaluate every TEST.EVAL_PERIOD epochs and after the last; keep ``best.pth`` by TEST.BEST_METRIC.

    ``evaluate`` maps the model to ``{dataset: {metric: value}}``; the best is judged on the first
    dataset of DATASETS.TEST (the source domain in the shipped configs).
    """

    def __init__(self, evaluate: Callable, period: int, metric: str, checkpointer: Checkpointer,
                 output_dir: str) -> None:
        self.evaluate = evaluate
        self.period = period
        self.metric = metric
        self.checkpointer = checkpointer
        self.metrics_path = Path(output_dir) / "metrics.jsonl"
        self.results: dict | None = None

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
            best = getattr(t, "best", None)
            if best is None or value > best["value"]:
                t.best = {"metric": self.metric, "value": value, "epoch": epoch, "dataset": dataset}
                self.checkpointer.save("best.pth")
                # last.pth was written before this evaluation; it must know the new best for --resume.
                self.checkpointer.save("last.pth")
                logger.info(f"New best {self.metric} {100 * value:.2f}% at epoch {epoch}: saved best.pth")
        comm.synchronize()
        t.model.train()
