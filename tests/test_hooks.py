"""Trainer hooks and run-folder bookkeeping on a tiny in-memory model (no data on disk)."""

from __future__ import annotations

import json

import pytest
import torch

from reid.config import load_config
from reid.engine.hooks import Checkpointer, PeriodicEvaluator, ProgressLogger
from reid.engine.trainer import Trainer
from reid.engine.run import RunFolder
from reid.solver import build_lr_scheduler
from reid.utils.checkpoint import load_checkpoint


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Linear(4, 3)
        self.classifier = torch.nn.Linear(3, 2, bias=False)

    def forward(self, x):
        feat = self.embed(x)
        return {"feat": feat, "logits": self.classifier(feat)}


class _CrossEntropy(torch.nn.Module):
    def forward(self, outputs, labels):
        return {"loss_ce": torch.nn.functional.cross_entropy(outputs["logits"], labels)}


def make_trainer(tmp_path, evaluate, *opts, iters_per_epoch=3):
    cfg = load_config(None, ["OUTPUT_DIR", str(tmp_path), "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.STEPS", "(2,)",
                             "SOLVER.BASE_LR", "0.1", "SOLVER.LOG_PERIOD", "1", *opts])
    model = _Tiny()
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(cfg, optimizer, iters_per_epoch)
    batches = [{"images": torch.randn(4, 4), "pids": torch.tensor([0, 1, 0, 1])}] * iters_per_epoch
    checkpointer = Checkpointer(cfg.OUTPUT_DIR, cfg.SOLVER.CHECKPOINT_PERIOD)
    evaluator = PeriodicEvaluator(evaluate, cfg.TEST.EVAL_PERIOD, cfg.TEST.BEST_METRIC, checkpointer, cfg.OUTPUT_DIR)
    hooks = [ProgressLogger(cfg.OUTPUT_DIR, 1, 4), checkpointer, evaluator]
    return Trainer(cfg, model, _CrossEntropy(), optimizer, scheduler, batches, torch.device("cpu"), hooks=hooks)


@pytest.mark.parametrize("metric, best_epoch", [("mAP", 2), ("R1", 3), ("mINP", 1)])
def test_best_checkpoint_follows_the_configured_metric(tmp_path, metric, best_epoch):
    scores = {1: {"R1": 0.5, "mAP": 0.3, "mINP": 0.9}, 2: {"R1": 0.6, "mAP": 0.5, "mINP": 0.1},
              3: {"R1": 0.7, "mAP": 0.4, "mINP": 0.1}}
    calls = []

    def evaluate(model, final=False):
        calls.append(len(calls) + 1)
        return {"source": scores[len(calls)], "target": {"R1": 1.0, "mAP": 1.0, "mINP": 1.0}}

    trainer = make_trainer(tmp_path, evaluate, "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "1",
                           "TEST.BEST_METRIC", metric)
    trainer.train()
    assert calls == [1, 2, 3]
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == best_epoch  # judged on the first dataset only
    assert best["best"] == {"metric": metric, "value": scores[best_epoch][metric], "epoch": best_epoch,
                            "dataset": "source"}
    assert load_checkpoint(tmp_path / "last.pth")["best"]["epoch"] == best_epoch  # --resume knows the best


def test_resume_restores_the_best_so_a_worse_epoch_does_not_replace_best_pth(tmp_path):
    # The best so far travels through PeriodicEvaluator's state in last.pth: after a resume, an epoch worse
    # than the pre-resume best must not overwrite best.pth (with best = None it would).
    scores = iter([0.8, 0.5, 0.6])

    def evaluate(model, final=False):
        return {"source": {"R1": 0.5, "mAP": next(scores), "mINP": 0.1}}

    opts = ("SOLVER.MAX_EPOCHS", "2", "TEST.EVAL_PERIOD", "1")
    make_trainer(tmp_path, evaluate, *opts).train()  # epoch 1: 0.8 (best), epoch 2: 0.5
    last = load_checkpoint(tmp_path / "last.pth")
    resumed = make_trainer(tmp_path, evaluate, "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "1")
    resumed.model.load_state_dict(last["model"])
    resumed.load_state_dict(last, source=str(tmp_path / "last.pth"))
    assert resumed.last_checkpoint == str(tmp_path / "last.pth")
    resumed.train()  # epoch 3: 0.6, below the restored best
    best = load_checkpoint(tmp_path / "best.pth")
    assert best["epoch"] == 1 and best["best"]["value"] == 0.8


def test_failed_evaluation_keeps_the_epochs_checkpoint(tmp_path):
    def evaluate(model, final=False):
        raise RuntimeError("gallery image unreadable")

    trainer = make_trainer(tmp_path, evaluate, "SOLVER.MAX_EPOCHS", "1")
    with pytest.raises(RuntimeError, match="unreadable"):
        trainer.train()
    assert load_checkpoint(tmp_path / "last.pth")["epoch"] == 1


def test_logged_lr_is_the_lr_the_step_trained_with(tmp_path):
    trainer = make_trainer(tmp_path, lambda m, final=False: {"s": {"R1": 0, "mAP": 0, "mINP": 0}},
                           "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "0")
    trainer.train()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    lrs = {r["iter"]: r["lr"] for r in records if r["type"] == "train"}
    # x0.1 from 0-based epoch 2 (iterations 7..9); iteration 6, the last one before, trained at the full lr.
    assert lrs[6] == pytest.approx(0.1) and lrs[7] == pytest.approx(0.01)


def test_fresh_start_archives_logs_and_removes_stale_checkpoints(tmp_path):
    for name in ("last.pth", "best.pth", "epoch_010.pth", "metrics.jsonl", "log.txt", "config.yaml"):
        (tmp_path / name).write_text("old")
    RunFolder(tmp_path).archive_previous_run()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert [n for n in left if n.endswith(".pth")] == []
    assert any(n.startswith("metrics.") and n.endswith(".jsonl") and n != "metrics.jsonl" for n in left)
    assert any(n.startswith("log.") and n.endswith(".txt") and n != "log.txt" for n in left)
    assert "metrics.jsonl" not in left and "log.txt" not in left


def test_resume_drops_metrics_written_after_the_checkpoint(tmp_path):
    path = tmp_path / "metrics.jsonl"
    records = [{"type": "train", "epoch": 1, "iter": 3}, {"type": "eval", "epoch": 1},
               {"type": "train", "epoch": 2, "iter": 5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + '{"type": "tra')  # killed mid-line
    RunFolder(tmp_path).truncate_metrics(iteration=3, epoch=1)
    assert [json.loads(line) for line in path.read_text().splitlines()] == records[:2]


def read_scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar TensorBoard shows for a log folder (purged events left out, as TensorBoard does)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(folder), purge_orphaned_data=True)
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_curves_continue_without_duplicates_after_resume(tmp_path):
    pytest.importorskip("tensorboard")
    from reid.engine.hooks import TensorBoardWriter

    def evaluate(model, final=False):
        return {"source": {"R1": 0.5, "mAP": 0.4, "mINP": 0.1}}

    trainer = make_trainer(tmp_path, evaluate, "SOLVER.MAX_EPOCHS", "2", "TEST.EVAL_PERIOD", "1")
    evaluator = next(h for h in trainer.hooks if isinstance(h, PeriodicEvaluator))
    trainer.register_hook(TensorBoardWriter(tmp_path, 1, evaluator))
    trainer.train()
    # A kill after more steps than the checkpoint holds, then a resume from epoch 1: steps 4..6 are logged twice.
    resumed = make_trainer(tmp_path, evaluate, "SOLVER.MAX_EPOCHS", "3", "TEST.EVAL_PERIOD", "1")
    resumed.load_state_dict(_state_at_epoch_one(tmp_path))
    evaluator = next(h for h in resumed.hooks if isinstance(h, PeriodicEvaluator))
    resumed.register_hook(TensorBoardWriter(tmp_path, 1, evaluator))
    resumed.train()
    scalars = read_scalars(tmp_path / "tensorboard")
    steps = [step for step, _ in scalars["train/loss_ce"]]
    assert steps == list(range(1, 10))  # 3 epochs x 3 iterations, each once
    assert {"train/lr", "train/acc", "train/img_per_s"} <= set(scalars)
    assert [step for step, _ in scalars["eval/source/mAP"]] == [3, 6, 9]  # at each epoch's last iteration


def _state_at_epoch_one(folder) -> dict:
    """last.pth rewound to epoch 1 (iteration 3), as if the run had been killed during epoch 2."""
    state = load_checkpoint(folder / "last.pth")
    return {**state, "epoch": 1, "iteration": 3}


def test_a_failing_torch_compile_falls_back_to_the_eager_model(tmp_path, monkeypatch, caplog):
    """Compilation happens at the first step: when it fails, the step is redone without it, once, with a
    message; training goes on and the checkpoint holds the plain model."""
    class FailsToCompile(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self._orig_mod = model

        def forward(self, x):
            raise RuntimeError("backend compiler failed: no C++ compiler")

    monkeypatch.setattr(torch, "compile", lambda model, **kwargs: FailsToCompile(model))
    trainer = make_trainer(tmp_path, lambda m, final=False: {"s": {"R1": 0, "mAP": 0, "mINP": 0}},
                           "SOLVER.MAX_EPOCHS", "1", "TEST.EVAL_PERIOD", "0")
    eager = trainer.model
    trainer.compile()
    with caplog.at_level("WARNING", logger="reid.engine"):
        trainer.train()
    assert "torch.compile failed (backend compiler failed" in caplog.text and "SOLVER.COMPILE off" in caplog.text
    assert trainer.model is eager and trainer.iter == trainer.iters_per_epoch  # every step trained
    assert set(load_checkpoint(tmp_path / "last.pth")["model"]) == set(eager.state_dict())
