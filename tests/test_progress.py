"""Progress lines (count, rate, ETA) and the training ETA, driven by a fake clock."""

import io
import logging

import pytest

from reid.utils.progress import Pace, Progress, TrainingETA, evaluation_epochs, format_duration, track


class FakeClock:
    def __init__(self, start: float = 1000.0):
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class TerminalStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_format_duration():
    assert format_duration(0) == "0:00:00"
    assert format_duration(75.4) == "0:01:15"
    assert format_duration(3725) == "1:02:05"
    assert format_duration(100_000) == "27:46:40"
    assert format_duration(None) == "?" and format_duration(float("nan")) == "?" and format_duration(-1) == "?"


def test_pace_is_the_plain_average_early_and_follows_a_change_smoothly():
    pace = Pace(time_constant=20)
    assert pace.seconds_per_unit is None and pace.seconds_for(10) is None
    pace.add(10, 1.0)
    pace.add(10, 3.0)
    assert pace.seconds_per_unit == pytest.approx(4.0 / 20, rel=0.05)  # about total time / total units
    steady = Pace(time_constant=20)
    for _ in range(100):
        steady.add(5, 1.0)
    coarse = Pace(time_constant=20)
    for _ in range(10):
        coarse.add(50, 10.0)
    assert steady.seconds_per_unit == pytest.approx(0.2) and coarse.seconds_per_unit == pytest.approx(0.2)
    # The pace halves: the estimate moves towards it window by window, never past it, never back.
    estimates = []
    for _ in range(60):
        steady.add(10, 1.0)
        estimates.append(steady.seconds_per_unit)
    assert all(a > b for a, b in zip(estimates, estimates[1:]))
    assert estimates[0] > 0.19 and estimates[-1] == pytest.approx(0.1, rel=0.1)


def test_lines_on_a_stream_every_period_then_a_last_line():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("extract market1501", total=100, stream=stream, period=10, clock=clock)
    for _ in range(100):
        clock.advance(0.5)
        progress.update()
    progress.close()
    progress.close()  # once only
    lines = stream.getvalue().splitlines()
    assert lines[0] == "extract market1501: 4/100 images (4%), 2.0 images/s, ETA 0:00:48"  # first after 2 s
    assert lines[1].startswith("extract market1501: 24/100 images (24%)") and lines[1].endswith("ETA 0:00:38")
    assert len(lines) == 6  # at 2, 12, 22, 32 and 42 s, and the last line at the end (50 s)
    assert lines[-1] == "extract market1501: 100/100 images (100%) in 0:00:50 (2.0 images/s)"


def test_in_place_on_a_terminal_and_through_a_logger(caplog):
    clock, stream = FakeClock(), TerminalStream()
    with Progress("re-rank", total=10, unit="queries", stream=stream, clock=clock) as progress:
        for _ in range(10):
            clock.advance(1.0)
            progress.update()
    text = stream.getvalue()
    assert text.startswith("\rre-rank: 1/10 queries (10%), 1.0 queries/s, ETA 0:00:09\rre-rank: 2/10 queries")
    last = text.rsplit("\r", 1)[1]
    assert text.count("\n") == 1 and last.rstrip(" \n") == "re-rank: 10/10 queries (100%) in 0:00:10 (1.0 queries/s)"
    assert len(last) == len(text.rsplit("\r", 2)[1]) + 1  # padded over the longer line before it
    assert text.count("\r") >= 9  # redrawn, not one line per update

    logger = logging.getLogger("reid.test_progress")
    clock = FakeClock()
    with caplog.at_level(logging.INFO, logger="reid.test_progress"):
        items = list(track(range(30), "attack", unit="queries", logger=logger, period=5, clock=clock_ticking(clock)))
    assert items == list(range(30))
    messages = [r.getMessage() for r in caplog.records]
    assert messages[0].startswith("attack: ") and "ETA" in messages[0]
    assert messages[-1].startswith("attack: 30/30 queries (100%) in ")


def clock_ticking(clock: FakeClock, step: float = 0.5):
    def tick() -> float:
        clock.advance(step)
        return clock.now
    return tick


def test_unknown_total_has_no_eta():
    clock, stream = FakeClock(), io.StringIO()
    progress = Progress("decode cache", stream=stream, clock=clock, period=1)
    clock.advance(3)
    progress.update(30)
    progress.close()
    first, last = stream.getvalue().splitlines()
    assert first == "decode cache: 30 images, 10.0 images/s"
    assert last == "decode cache: 30 images in 0:00:03 (10.0 images/s)"


def test_evaluation_epochs_match_the_periodic_evaluator():
    assert evaluation_epochs(10, 3) == [3, 6, 9, 10]
    assert evaluation_epochs(10, 0) == [10] and evaluation_epochs(4, 2) == [2, 4]


def _simulate(eta: TrainingETA, clock: FakeClock, first: int, last: int, seconds_per_iter, log_every: int = 10,
              iters_per_epoch: int = 100, eval_seconds: float = 0.0, eval_epochs=()) -> list[tuple[float, float]]:
    """Run iterations first+1..last; returns (time, ETA) at each log line."""
    logged = []
    for it in range(first + 1, last + 1):
        clock.advance(seconds_per_iter(it))
        if it % log_every == 0:
            eta.step(it)
            logged.append((clock.now, eta.eta_seconds()))
        if it % iters_per_epoch == 0 and it // iters_per_epoch in eval_epochs:
            with eta.evaluating(it // iters_per_epoch):
                clock.advance(eval_seconds)
    return logged


def test_training_eta_leaves_out_the_warm_up_and_follows_a_change_without_jumping():
    clock = FakeClock()
    eta = TrainingETA(1000, 100, [10], clock=clock)
    clock.advance(60)  # building the model: before the first iteration, never counted
    assert eta.eta_seconds() is None and eta.describe() == "?"
    # The first 3 iterations take 8 s each (workers' first batches, autotuning); then 0.5 s, and from
    # iteration 600 on 0.75 s (the machine gets busier). A line every 10 iterations, as SOLVER.LOG_PERIOD.
    logged = _simulate(eta, clock, 0, 1000, lambda it: 8.0 if it <= 3 else (0.5 if it <= 600 else 0.75))
    (_, first), *_ = logged
    assert first is None  # the first window holds the warm-up: no estimate yet, rather than a wrong one
    _, second = logged[1]
    assert second == pytest.approx(980 * 0.5)  # the steady pace, the warm-up left out
    # No jump: between two lines the predicted end moves by under 5% of the time left.
    for (t0, eta0), (t1, eta1) in zip(logged[1:], logged[2:]):
        if eta1 > 0:
            assert abs((t1 + eta1) - (t0 + eta0)) < 0.05 * eta0, (t0, eta0, t1, eta1)
    # ... yet it follows the slower pace: 300 iterations (225 s) after the change, within 10% of it.
    _, at_900 = logged[89]  # the line of iteration 900
    assert at_900 == pytest.approx(100 * 0.75, rel=0.1)


def test_training_eta_counts_the_remaining_evaluations():
    evals = evaluation_epochs(10, 5)  # after epochs 5 and 10
    clock = FakeClock()
    eta = TrainingETA(1000, 100, evals, warmup_iters=0, clock=clock)
    eta.step(0)
    clock.advance(5)
    eta.step(10)
    assert eta.describe() == "0:08:15 + 2 evaluations"  # says what it leaves out while no evaluation is timed
    guessed = TrainingETA(1000, 100, evals, evaluation_guess=30, warmup_iters=0, clock=clock)
    guessed.step(10)
    clock.advance(5)
    guessed.step(20)
    assert guessed.eta_seconds() == pytest.approx(980 * 0.5 + 2 * 30)
    # After epoch 5's evaluation (40 s, left out of the pace): 500 iterations and one evaluation remain.
    clock = FakeClock()
    eta = TrainingETA(1000, 100, evals, warmup_iters=0, clock=clock)
    eta.step(0)
    _simulate(eta, clock, 0, 500, lambda it: 0.5, eval_seconds=40, eval_epochs=evals)
    clock.advance(5)
    eta.step(510)
    assert eta.pending_evals == [10] and eta.evaluation_seconds == pytest.approx(40)
    assert eta.eta_seconds() == pytest.approx(490 * 0.5 + 40)
    assert eta.describe() == "0:04:45"


def test_training_eta_on_resume_counts_only_evaluations_still_to_come():
    clock = FakeClock()
    eta = TrainingETA(1000, 100, [2, 4, 6, 8, 10], start_iter=400, warmup_iters=0, clock=clock)
    assert eta.pending_evals == [6, 8, 10]
    eta.step(400)
    clock.advance(10)
    eta.step(420)
    assert eta.describe() == "0:04:50 + 3 evaluations"
