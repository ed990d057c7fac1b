"""Schedule values at chosen epochs and BoT's parameter groups."""

import pytest
import torch

from reid.config import load_config
from reid.solver import build_lr_scheduler, build_optimizer, lr_factor, parameter_groups


@pytest.mark.parametrize("epoch, expected", [
    (0.0, 0.01),              # warm-up starts at 1 %
    (5.0, 0.01 * 0.5 + 0.5),  # halfway through the 10-epoch warm-up
    (10.0, 1.0),
    (39.99, 1.0),
    (40.0, 0.1),              # first decay at epoch 40
    (69.5, 0.1),
    (70.0, 0.01),             # second decay at epoch 70
    (119.0, 0.01),
])
def test_bot_multistep_schedule(epoch, expected):
    assert lr_factor(load_config(None), epoch) == pytest.approx(expected)


def test_cosine_schedule():
    cfg = load_config(None, ["SOLVER.SCHED", "cosine", "SOLVER.WARMUP_EPOCHS", "0", "SOLVER.MAX_EPOCHS", "100"])
    assert lr_factor(cfg, 0) == pytest.approx(1.0)
    assert lr_factor(cfg, 50) == pytest.approx(0.5)
    assert lr_factor(cfg, 100) == pytest.approx(0.0, abs=1e-12)


def test_scheduler_steps_per_iteration():
    cfg = load_config(None)
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(cfg, model)
    sched = build_lr_scheduler(cfg, opt, iters_per_epoch=4)
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5e-4 * 0.01)
    for _ in range(2):  # half an epoch: the warm-up already moved
        opt.step()
        sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(3.5e-4 * lr_factor(cfg, 0.5))


def test_parameter_groups_follow_config():
    cfg = load_config(None, ["SOLVER.WEIGHT_DECAY_BIAS", "0.0", "SOLVER.WEIGHT_DECAY_NORM", "0.0",
                             "SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.OPTIMIZER", "sgd"])
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    model[1].bias.requires_grad_(False)  # frozen parameters (the BNNeck bias) are left out
    groups = {(g["lr"], g["weight_decay"]): len(g["params"]) for g in parameter_groups(cfg, model)}
    lr = cfg.SOLVER.BASE_LR
    # conv + linear weights; conv + linear biases; the BatchNorm weight (its bias is frozen)
    assert groups == {(lr, 5e-4): 2, (2 * lr, 0.0): 2, (lr, 0.0): 1}
    assert isinstance(build_optimizer(cfg, model), torch.optim.SGD)


def test_bias_lr_factor_reaches_normalisation_biases():
    cfg = load_config(None, ["SOLVER.BIAS_LR_FACTOR", "2.0", "SOLVER.WEIGHT_DECAY_NORM", "0.0"])
    norm = torch.nn.BatchNorm1d(3)
    groups = {id(p): (g["lr"], g["weight_decay"]) for g in parameter_groups(cfg, norm) for p in g["params"]}
    lr = cfg.SOLVER.BASE_LR
    assert groups[id(norm.weight)] == (lr, 0.0) and groups[id(norm.bias)] == (2 * lr, 0.0)


def test_constant_schedule_keeps_the_base_lr_after_warm_up():
    cfg = load_config(None, ["SOLVER.SCHED", "constant", "SOLVER.WARMUP_EPOCHS", "2", "SOLVER.WARMUP_FACTOR", "0.1"])
    assert lr_factor(cfg, 0.0) == pytest.approx(0.1) and lr_factor(cfg, 1.0) == pytest.approx(0.55)
    assert [lr_factor(cfg, e) for e in (2.0, 40.0, 119.9)] == [1.0, 1.0, 1.0]  # no decay at SOLVER.STEPS
