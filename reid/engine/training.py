"""``train(cfg)``: everything ``tools/train.py`` does, usable from Python."""

from __future__ import annotations

import logging
import os
import statistics
from collections import Counter

import torch
from yacs.config import CfgNode

from reid.config import changes_since_stored, config_to_dict, save_config
from reid.data import TestData, TrainData, build_test_data, build_train_data, check_datasets
from reid.data.datasets import ReIDDataset
from reid.engine.dataset_record import DatasetRecord
from reid.engine.hooks import Checkpointer, PeriodicEvaluator, ProgressLogger, TensorBoardWriter
from reid.engine.run import CONFIG_NAME, RunFolder, lock_output, setup_run, write_results
from reid.engine.testing import dataset_report, results_document, write_evaluation_report
from reid.engine.trainer import Trainer
from reid.evaluation.evaluator import evaluate_datasets
from reid.modeling import ReIDLoss, build_model
from reid.modeling.checkpoint import load_state_checked
from reid.solver import build_lr_scheduler, build_optimizer
from reid.utils import comm
from reid.utils.checkpoint import load_checkpoint
from reid.utils.cli import command_line
from reid.utils.env import seed_everything
from reid.utils.errors import CheckpointError, summarize_exception

logger = logging.getLogger("reid.engine")


def train(cfg: CfgNode, resume: bool = False, overwrite: bool = False) -> dict:
    """Train with the configured model, losses and schedule; return the final evaluation results.

    An OUTPUT_DIR that already holds a run is continued with ``resume``, replaced with ``overwrite``,
    and otherwise refused, so a finished model is never lost to a repeated command. The folder is locked for
    the whole run: a second run on it stops at once, naming this one.
    """
    folder = RunFolder(cfg.OUTPUT_DIR)
    with lock_output(folder.path):  # which also removes the temporary files of a killed run's writes
        folder.check_start(resume, overwrite)
        if comm.get_rank_from_env() == 0 and (not resume or not folder.last.is_file()):
            # A fresh start (--overwrite, or --resume of a run killed before its first checkpoint) keeps the
            # old log and metrics under time-stamped names: nothing of the old run passes for the new one's.
            folder.archive_previous_run(remove_checkpoints=not resume)
        return _train(cfg, folder, resume)


def _train(cfg: CfgNode, folder: RunFolder, resume: bool) -> dict:
    # The config is saved only once the datasets and a resumed checkpoint are known to fit it: a failed
    # --resume must leave the config the run was started with in place.
    device = setup_run(cfg, config_name=None)
    logger.info(f"Training on {device} ({comm.get_world_size()} process(es)); outputs in {cfg.OUTPUT_DIR}")
    # Every dataset the run will touch is checked now, not after hours of training.
    check_datasets(tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST), cfg.DATASETS.ROOT)
    seed_everything(cfg.SEED)
    data = _train_data(cfg, device)
    note_sampler_filling(cfg, data.datasets)
    trainer, record, evaluator = build_trainer(cfg, data, device)
    if resume:
        _resume(trainer, folder)
        if trainer.start_epoch >= trainer.max_epochs:
            logger.info(f"--resume: the run in {cfg.OUTPUT_DIR} already finished its {trainer.max_epochs} epochs; "
                        "nothing to train (raise SOLVER.MAX_EPOCHS to continue, or evaluate with tools/test.py).")
            return folder.previous_results()
    if comm.is_main_process():
        save_config(cfg, folder.path / CONFIG_NAME)
        record.write(folder.path)
    if comm.get_world_size() > 1:
        trainer.distribute(device)
    if cfg.SOLVER.COMPILE == "on" or (cfg.SOLVER.COMPILE == "auto" and device.type == "cuda"):
        trainer.compile()
    try:
        trainer.train()
    except KeyboardInterrupt:
        raise KeyboardInterrupt(interrupted_message(trainer)) from None
    results = evaluator.results or {}
    if comm.is_main_process():
        write_results(cfg.OUTPUT_DIR, results_document(results, best=evaluator.best, epochs=trainer.epoch + 1,
                                                       last_checkpoint=trainer.last_checkpoint))
    return results


def _train_data(cfg: CfgNode, device: torch.device) -> TrainData:
    """The training data of DATALOADER.BACKEND; under DDP the first process of each machine decodes (and fills
    the cache) while the others wait, then they read the cache instead of decoding again."""
    first = int(os.environ.get("LOCAL_RANK", "0")) == 0
    if not first:
        comm.synchronize()
    data = build_train_data(cfg, comm.get_rank(), comm.get_world_size(), device)
    if first:
        comm.synchronize()
    return data


def build_trainer(cfg: CfgNode, data: TrainData, device: torch.device
                  ) -> tuple[Trainer, DatasetRecord, PeriodicEvaluator]:
    """The model, losses, optimiser, schedule and hooks of a run, in a trainer (and the hooks the run reads)."""
    model = build_model(cfg, data.num_classes).to(device)
    if device.type == "cuda" and cfg.SOLVER.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    criterion = ReIDLoss(cfg, data.num_classes, model.feat_dim).to(device)
    optimizer = build_optimizer(cfg, model)
    scheduler = build_lr_scheduler(cfg, optimizer, len(data))
    record = DatasetRecord(cfg, data.datasets)
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_PERIOD, {"num_classes": data.num_classes})
    evaluator = PeriodicEvaluator(RunEvaluation(cfg, device, record, data.backend), cfg.TEST.EVAL_PERIOD,
                                  cfg.TEST.BEST_METRIC, checkpointer, cfg.OUTPUT_DIR)
    # The checkpointer runs before the evaluator: an evaluation that fails (an unreadable gallery
    # image, out of memory) never costs the epoch's weights.
    progress = ProgressLogger(cfg.OUTPUT_DIR, cfg.SOLVER.LOG_PERIOD, cfg.SOLVER.IMS_PER_BATCH, cfg.TEST.EVAL_PERIOD)
    hooks = [record, progress, checkpointer, evaluator]
    if cfg.SOLVER.TENSORBOARD:
        hooks.append(TensorBoardWriter(cfg.OUTPUT_DIR, cfg.SOLVER.LOG_PERIOD, evaluator))
    return Trainer(cfg, model, criterion, optimizer, scheduler, data, device, hooks=hooks), record, evaluator


class RunEvaluation:
    """A training run's evaluation: every test set checked against the run's record; the final one also
    writes report.html."""

    def __init__(self, cfg: CfgNode, device: torch.device, record: DatasetRecord, backend: str = "workers") -> None:
        self.cfg, self.device, self.record, self.backend = cfg, device, record, backend
        self._decoded: dict[str, TestData] = {}  # tensor backend: test sets decoded once, kept on the device

    def test_data(self, name: str) -> TestData:
        """The workers backend parses (and checks) a test set at every evaluation; the tensor backend decodes it
        once (what the run recorded) and keeps it beside the training set, as the backend's budget planned."""
        if self.backend != "tensor":
            return build_test_data(self.cfg, name, self.device, backend="workers")
        if name not in self._decoded:
            self._decoded[name] = build_test_data(self.cfg, name, self.device, backend="tensor")
        return self._decoded[name]

    def __call__(self, model: torch.nn.Module, final: bool = False) -> dict:
        reports = {}

        def report(name, extracted, results, row) -> None:
            reports[name] = dataset_report(self.cfg, name, extracted, results)

        table = evaluate_datasets(self.cfg, model, self.device, recorded=self.record.test_sets(),
                                  on_dataset=report if final and self.cfg.TEST.REPORT else None,
                                  test_data=self.test_data)
        if reports:
            page = write_evaluation_report(self.cfg, reports, f"{self.cfg.OUTPUT_DIR}, final evaluation")
            logger.info(f"Wrote {page} (open it in a browser)")
        return table


def interrupted_message(trainer: Trainer) -> str:
    """What Ctrl-C during training tells: which checkpoint holds the work, and the command that continues it."""
    if trainer.last_checkpoint is None:
        return (f"Interrupted in epoch {trainer.epoch + 1}, before the first checkpoint: nothing was saved. Start "
                f"again with: {command_line('--resume')}")
    return (f"Interrupted in epoch {trainer.epoch + 1}. The work up to the last completed epoch is in "
            f"{trainer.last_checkpoint}; continue with: {command_line('--resume')}")


def note_sampler_filling(cfg: CfgNode, datasets: dict[str, ReIDDataset]) -> None:
    """Say how the PK sampler fills batches when DATALOADER.NUM_INSTANCE exceeds the median images per identity:
    such identities are padded with repeats of their own images (BoT's behaviour)."""
    if cfg.DATALOADER.SAMPLER != "pk":
        return
    k = cfg.DATALOADER.NUM_INSTANCE
    for name, dataset in datasets.items():
        counts = sorted(Counter(r.pid for r in dataset.train).values())
        median = statistics.median(counts)
        if k > median:
            fewer = sum(c < k for c in counts)
            logger.warning(
                f"DATALOADER.NUM_INSTANCE is {k} but half of the {len(counts)} training identities of {name} have at "
                f"most {median:g} images ({fewer} have fewer than {k}): the PK sampler fills such an identity's {k} "
                f"slots by drawing its own images again, so those batches hold repeated images. Use "
                f"DATALOADER.NUM_INSTANCE {int(median)} or less to avoid repeats.")


def _resume(trainer: Trainer, folder: RunFolder) -> None:
    """Restore model, optimisers, schedule, scaler, counters, RNG and every hook's state from ``last.pth``."""
    path = folder.last
    if not path.is_file():
        logger.info(f"--resume: no checkpoint at {path}, starting from scratch (the killed run's log and metrics "
                    "were kept under time-stamped names).")
        return
    state = load_checkpoint(path)
    advice = ("Resume with the config the run was started with (OUTPUT_DIR/config.yaml), or use another "
              "OUTPUT_DIR.")
    try:
        load_state_checked(trainer.model, state["model"], path, trainer.cfg, advice=advice)
        trainer.load_state_dict(state, source=str(path))
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(f"Cannot resume from {path}: it does not match this config "
                              f"({summarize_exception(exc)}). {advice}") from exc
    changes = changes_since_stored(state.get("config") or {}, config_to_dict(trainer.cfg))
    for key, before, now in changes if comm.is_main_process() else ():
        logger.warning(f"--resume: {path} was written before {key} existed; the run used {before!r} and goes on "
                       f"with {now!r}, this version's default. To keep its recipe, resume with {key} {before}.")
    if comm.is_main_process():
        folder.truncate_metrics(state["iteration"], state["epoch"])
    logger.info(f"Resumed from {path} at epoch {state['epoch']} (iteration {state['iteration']}).")
