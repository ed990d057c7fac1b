"""``train(cfg)``: everything ``tools/train.py`` does, usable from Python."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from yacs.config import CfgNode

from reid.config import save_config
from reid.data import build_train_loader, check_datasets
from reid.engine.hooks import Checkpointer, PeriodicEvaluator, ProgressLogger, write_results
from reid.engine.trainer import Trainer
from reid.modeling import ReIDLoss, build_model
from reid.solver import build_center_optimizer, build_lr_scheduler, build_optimizer
from reid.utils import comm
from reid.utils.checkpoint import load_checkpoint, set_rng_state
from reid.utils.env import random_seed, resolve_device, seed_everything
from reid.utils.errors import CheckpointError, ReIDError, summarize_exception
from reid.utils.logger import setup_logger

logger = logging.getLogger("reid.engine")


def setup_run(cfg: CfgNode, config_name: str | None = "config.yaml") -> torch.device:
    """Join DDP if launched by torchrun, set up logging to OUTPUT_DIR and save the final config there.

    Evaluation tools pass their own ``config_name`` so they never overwrite the training config;
    ``None`` saves nothing (training saves it once the run is known to start).
    """
    device_name = resolve_device(cfg.DEVICE)
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


def train(cfg: CfgNode, resume: bool = False, overwrite: bool = False) -> dict:
    """Train with the configured model, losses and schedule; return the final evaluation results.

    An OUTPUT_DIR that already holds a run is continued with ``resume``, replaced with ``overwrite``,
    and otherwise refused, so a finished model is never lost to a repeated command.
    """
    output_dir = Path(cfg.OUTPUT_DIR)
    _check_output_dir(output_dir, resume, overwrite)
    if not resume and comm.get_rank_from_env() == 0:
        _archive_previous_run(output_dir)
    # The config is saved only once the datasets and a resumed checkpoint are known to fit it: a failed
    # --resume must leave the config the run was started with in place.
    device = setup_run(cfg, config_name=None)
    logger.info(f"Training on {device} ({comm.get_world_size()} process(es)); outputs in {cfg.OUTPUT_DIR}")
    # Every dataset the run will touch is checked now, not after hours of training.
    check_datasets(tuple(cfg.DATASETS.TRAIN) + tuple(cfg.DATASETS.TEST), cfg.DATASETS.ROOT)
    seed_everything(cfg.SEED)

    data = build_train_loader(cfg, comm.get_rank(), comm.get_world_size())
    model = build_model(cfg, data.num_classes).to(device)
    if device.type == "cuda" and cfg.SOLVER.CHANNELS_LAST:
        model = model.to(memory_format=torch.channels_last)
    criterion = ReIDLoss(cfg, data.num_classes, model.feat_dim).to(device)
    optimizer = build_optimizer(cfg, model)
    center_optimizer = build_center_optimizer(cfg, criterion.center)
    scheduler = build_lr_scheduler(cfg, optimizer, len(data.loader))

    checkpointer = Checkpointer(cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_PERIOD)
    evaluator = PeriodicEvaluator(lambda m: _evaluate(cfg, m, device), cfg.TEST.EVAL_PERIOD,
                                  cfg.TEST.BEST_METRIC, checkpointer, cfg.OUTPUT_DIR)
    # The checkpointer runs before the evaluator: an evaluation that fails (an unreadable gallery
    # image, out of memory) never costs the epoch's weights.
    trainer = Trainer(cfg, model, criterion, optimizer, scheduler, data.loader, data.sampler, device,
                      center_optimizer, hooks=[ProgressLogger(cfg.OUTPUT_DIR, cfg.SOLVER.LOG_PERIOD,
                                                              cfg.SOLVER.IMS_PER_BATCH),
                                               checkpointer, evaluator])
    trainer.num_classes = data.num_classes
    if resume:
        _resume(trainer, Path(cfg.OUTPUT_DIR) / "last.pth")
        if trainer.start_epoch >= trainer.max_epochs:
            logger.info(f"--resume: the run in {cfg.OUTPUT_DIR} already finished its {trainer.max_epochs} epochs; "
                        "nothing to train (raise SOLVER.MAX_EPOCHS to continue, or evaluate with tools/test.py).")
            return _previous_results(Path(cfg.OUTPUT_DIR))
    if comm.is_main_process():
        save_config(cfg, output_dir / "config.yaml")

    if comm.get_world_size() > 1:
        trainer.model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    trainer.train()

    results = evaluator.results or {}
    if comm.is_main_process():
        summary = {"results": results, "best": getattr(trainer, "best", None), "epochs": trainer.epoch + 1,
                   "last_checkpoint": trainer.last_checkpoint}
        write_results(cfg.OUTPUT_DIR, summary)
    return results


def _evaluate(cfg: CfgNode, model: torch.nn.Module, device: torch.device) -> dict:
    from reid.evaluation.evaluator import evaluate_datasets

    return evaluate_datasets(cfg, model, device)


def _check_output_dir(output_dir: Path, resume: bool, overwrite: bool) -> None:
    existing = [name for name in ("last.pth", "best.pth") if (output_dir / name).is_file()]
    if existing and not (resume or overwrite):
        raise ReIDError(
            f"OUTPUT_DIR {output_dir} already holds a training run ({', '.join(existing)}). Continue it with "
            "--resume, train into another OUTPUT_DIR, or pass --overwrite to replace its checkpoints and config."
        )


def _archive_previous_run(output_dir: Path) -> None:
    """Before a fresh start (``--overwrite``) in a used folder: no stale file may pass for the new run's.

    The old log and metrics are kept under a time-stamped name (like ``results.json``); its
    checkpoints, which ``--overwrite`` replaces by definition, are removed so an old ``best.pth``
    or ``epoch_NNN.pth`` cannot be mistaken for one of the new run.
    """
    if not output_dir.is_dir():
        return
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for name in ("metrics.jsonl", "log.txt"):
        path = output_dir / name
        if path.is_file():
            path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
    for path in [output_dir / "last.pth", output_dir / "best.pth", *output_dir.glob("epoch_*.pth")]:
        path.unlink(missing_ok=True)


def _truncate_metrics(path: Path, iteration: int, epoch: int) -> None:
    """Drop the records a killed run wrote after its last checkpoint: the resumed run writes them again."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:  # a line cut short by the kill
            continue
        if record.get("iter", 0) <= iteration and record.get("epoch", 0) <= epoch:
            kept.append(line)
    path.write_text("".join(line + "\n" for line in kept))


def _previous_results(output_dir: Path) -> dict:
    """The results a finished run wrote (empty when it wrote none)."""
    try:
        return json.loads((output_dir / "results.json").read_text()).get("results", {})
    except (OSError, ValueError):
        return {}


def _resume(trainer: Trainer, path: Path) -> None:
    """Restore model, optimizers, schedule, scaler, counters and RNG from ``last.pth``."""
    if not path.is_file():
        logger.info(f"--resume: no checkpoint at {path}, starting from scratch.")
        return
    state = load_checkpoint(path)
    try:
        trainer.model.load_state_dict(state["model"])
        trainer.criterion.load_state_dict(state["criterion"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        if trainer.center_optimizer is not None and state.get("center_optimizer"):
            trainer.center_optimizer.load_state_dict(state["center_optimizer"])
        trainer.scheduler.load_state_dict(state["scheduler"])
        if state["scaler"] and trainer.scaler.is_enabled():  # empty when the run had no fp16 scaler
            trainer.scaler.load_state_dict(state["scaler"])
    except (RuntimeError, KeyError, ValueError) as exc:
        raise CheckpointError(
            f"Cannot resume from {path}: it does not match this config ({summarize_exception(exc)}). Resume with "
            "the config the run was started with (OUTPUT_DIR/config.yaml), or use another OUTPUT_DIR."
        ) from exc
    set_rng_state(state["rng"])
    if comm.is_main_process():
        _truncate_metrics(Path(trainer.cfg.OUTPUT_DIR) / "metrics.jsonl", state["iteration"], state["epoch"])
    trainer.start_epoch = state["epoch"]
    trainer.epoch = state["epoch"] - 1  # the last epoch completed (0-based), until training goes on
    trainer.iter = state["iteration"]
    trainer.best = state.get("best")
    trainer.last_checkpoint = str(path)
    logger.info(f"Resumed from {path} at epoch {state['epoch']} (iteration {state['iteration']}).")
