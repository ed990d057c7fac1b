"""Trainer hooks: progress logging, atomic checkpoints, periodic evaluation with best-model tracking."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from reid.config import config_to_dict
from reid.engine.run import BEST, LAST, METRICS_NAME, TENSORBOARD_DIR, append_jsonl
from reid.engine.trainer import HookBase
from reid.utils import comm
from reid.utils.checkpoint import atomic_save, unwrap_model
from reid.utils.progress import TrainingETA, evaluation_epochs

logger = logging.getLogger("reid.engine")


class ProgressLogger(HookBase):
    """A status line every SOLVER.LOG_PERIOD iterations: losses, accuracy, lr, images/s, ETA.

    The ETA (:class:`reid.utils.progress.TrainingETA`) averages the pace over the last minutes, leaves out the
    first iterations (workers starting, autotuning) and adds the evaluations still to come, timed from the
    ones already run (checkpoint writing included), so it neither starts far too high nor jumps.
    """

    def __init__(self, output_dir: str | Path, period: int, batch_size: int, eval_period: int = 0) -> None:
        self.metrics_path = Path(output_dir) / METRICS_NAME
        self.period = max(1, period)
        self.batch_size = batch_size
        self.eval_period = eval_period

    def before_train(self) -> None:
        t = self.trainer
        self.window_start, self.window_iter = time.perf_counter(), t.iter
        self.eta = TrainingETA(t.max_epochs * t.iters_per_epoch, t.iters_per_epoch,
                               evaluation_epochs(t.max_epochs, self.eval_period), start_iter=t.iter)

    def before_epoch(self) -> None:
        if self.eta.timing_evaluation:
            self.eta.evaluation_finished(self.trainer.epoch)  # the previous epoch's checkpoint and evaluation

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch + 1
        if epoch in self.eta.pending_evals:
            self.eta.evaluation_started()

    def after_step(self) -> None:
        t = self.trainer
        self.eta.step(t.iter)
        in_epoch = t.iter - t.epoch * t.iters_per_epoch
        if in_epoch % self.period and in_epoch != t.iters_per_epoch:
            return
        now = time.perf_counter()
        speed = (t.iter - self.window_iter) * self.batch_size / max(now - self.window_start, 1e-9)
        self.window_start, self.window_iter = now, t.iter
        m = t.last_metrics
        terms = " ".join(f"{k[5:]} {v:.3f}" for k, v in m.items() if k.startswith("loss_"))
        acc = f" | acc {100 * m['acc']:.1f}%" if "acc" in m else ""
        logger.info(
            f"epoch {t.epoch + 1}/{t.max_epochs} iter {in_epoch}/{t.iters_per_epoch} | loss {m['loss']:.3f} "
            f"({terms}){acc} | lr {m['lr']:.2e} | {speed:.0f} img/s | eta {self.eta.describe()}"
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

    ``evaluate(model, final)`` maps the model to ``{dataset: {metric: value}}`` (``final``: after the last
    epoch); the best is judged on the first dataset of DATASETS.TEST (the source domain in the shipped
    configs). The best so far is this hook's state: it is saved in every checkpoint (``best``) and restored
    on ``--resume``.
    """

    def __init__(self, evaluate: Callable, period: int, metric: str, checkpointer: Checkpointer,
                 output_dir: str | Path) -> None:
        self.evaluate = evaluate
        self.period = period
        self.metric = metric
        self.checkpointer = checkpointer
        self.metrics_path = Path(output_dir) / METRICS_NAME
        self.results: dict | None = None
        self.evaluated_epoch = 0  # the 1-based epoch ``results`` belong to
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
            results = self.evaluate(unwrap_model(t.model), final=epoch == t.max_epochs)
            self.results, self.evaluated_epoch = results, epoch
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


class TensorBoardWriter(HookBase):
    """TensorBoard events in ``OUTPUT_DIR/tensorboard/`` (``tensorboard --logdir OUTPUT_DIR``), rank 0 only:
    every loss term, accuracy, lr and images/s every SOLVER.LOG_PERIOD iterations, each evaluation's metrics per
    dataset, and the epoch, next to ``metrics.jsonl``. The x axis is the iteration throughout (an evaluation at
    the iteration that ended its epoch), so a resume's purge covers every curve.

    A resumed run continues the same curves without duplicates: the writer purges the events the killed run
    wrote after the checkpoint it resumes from. Without the ``tensorboard`` package this hook warns once
    and writes nothing (training goes on).
    """

    def __init__(self, output_dir: str | Path, period: int, evaluator: PeriodicEvaluator | None = None) -> None:
        self.dir = Path(output_dir) / TENSORBOARD_DIR
        self.period = max(1, period)
        self.evaluator = evaluator
        self.writer = None

    def before_train(self) -> None:
        if not comm.is_main_process():
            return
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: import cost and dependency
        except ImportError as exc:
            logger.warning(f"TensorBoard events are not written ({exc}); pip install tensorboard to get them.")
            return
        t = self.trainer
        # purge_step: TensorBoard drops earlier events from this step on (written by a killed run after its
        # checkpoint); the resumed run logs them again. Steps count completed iterations, so the first new one
        # is t.iter + 1.
        self.writer = SummaryWriter(str(self.dir), purge_step=t.iter + 1 if t.iter > 0 else None)
        self.window_start, self.window_iter = time.perf_counter(), t.iter

    def after_step(self) -> None:
        t = self.trainer
        in_epoch = t.iter - t.epoch * t.iters_per_epoch
        if self.writer is None or (in_epoch % self.period and in_epoch != t.iters_per_epoch):
            return
        now = time.perf_counter()
        images = (t.iter - self.window_iter) * t.cfg.SOLVER.IMS_PER_BATCH
        self.writer.add_scalar("train/img_per_s", images / max(now - self.window_start, 1e-9), t.iter)
        self.window_start, self.window_iter = now, t.iter
        for key, value in t.last_metrics.items():
            self.writer.add_scalar(f"train/{key}", value, t.iter)

    def after_epoch(self) -> None:
        epoch = self.trainer.epoch + 1
        if self.writer is None:
            return
        if self.evaluator is not None and self.evaluator.evaluated_epoch == epoch:
            for dataset, row in (self.evaluator.results or {}).items():
                for variant, values in (("", row), ("_rerank", row.get("rerank", {}))):
                    for metric in ("R1", "R5", "R10", "mAP", "mINP"):
                        if metric in values:
                            self.writer.add_scalar(f"eval{variant}/{dataset}/{metric}", values[metric],
                                                   self.trainer.iter)
        self.writer.add_scalar("train/epoch", epoch, self.trainer.iter)
        self.writer.flush()

    def after_train(self) -> None:
        if self.writer is not None:
            self.writer.close()
