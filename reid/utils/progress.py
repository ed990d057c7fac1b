"""Progress of long work: count, rate and an ETA that does not jump, for every long step.

:class:`Progress` counts units of work (images, queries, attacks) and prints ``label: done/total unit
(pct), rate, ETA``: in place on a terminal (a few times a second), otherwise one line every ``period``
seconds, to a stream or a logger, and a last line with the total time when the work is done.
:class:`TrainingETA` estimates the time left of a training run, its remaining evaluations included.

Both estimate the pace with :class:`Pace`, an exponentially weighted average of seconds per unit (recent
time over recent units, both decaying with age), so a slow start (workers spawning, cudnn autotuning,
caches warming) fades out smoothly instead of either dominating a plain average or being forgotten at
the next window. Every class takes a ``clock`` (seconds, monotonic) so that tests can drive time by hand.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable, Iterable
from typing import TextIO

Clock = Callable[[], float]

#: Seconds of the moving average's time constant: after this long, a window's weight has decayed to 1/e.
DEFAULT_TIME_CONSTANT = 20.0
#: Seconds between printed lines when the output is a file, a pipe or a logger.
DEFAULT_PERIOD = 10.0
#: Seconds between in-place redraws on a terminal.
TTY_PERIOD = 0.5
#: The first line is printed this many seconds after the start (work shorter than that prints only its last line).
FIRST_LINE_AFTER = 2.0


def format_duration(seconds: float | None) -> str:
    """``H:MM:SS`` (hours keep counting past a day); ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds) or seconds < 0:
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}"


class Pace:
    """Seconds per unit over the recent past: time and units both decay with age, and their ratio is the pace.

    A window (``units`` done in ``seconds``) first multiplies the accumulated time and units by
    ``exp(-seconds / time_constant)``, then adds its own. Early on (less than a time constant of work) the
    pace is the plain average, total time over total units, so no single window decides it; later it
    follows the last time constant or so, so a pace that really changes is followed, smoothly. The
    estimate hardly depends on how often progress is reported (exactly, for a steady pace).
    """

    def __init__(self, time_constant: float = DEFAULT_TIME_CONSTANT) -> None:
        if not time_constant > 0:
            raise ValueError(f"time_constant must be positive, got {time_constant!r}")
        self.time_constant = float(time_constant)
        self._time = 0.0
        self._units = 0.0

    def add(self, units: float, seconds: float) -> None:
        """Account ``units`` of work done in ``seconds``."""
        if seconds < 0 or units < 0 or (units == 0 and seconds == 0):
            return
        decay = math.exp(-seconds / self.time_constant)
        self._time = self._time * decay + seconds
        self._units = self._units * decay + units

    @property
    def seconds_per_unit(self) -> float | None:
        """The pace (``None`` before any unit)."""
        return self._time / self._units if self._units > 0 else None

    def seconds_for(self, units: float) -> float | None:
        """Estimated seconds for ``units`` more units (``None`` before any unit)."""
        spu = self.seconds_per_unit
        return None if spu is None else max(units, 0) * spu


class Progress:
    """Count, rate and ETA of one long step, printed now and then.

    Args:
        label: what is being done, e.g. ``"extract market1501"``.
        total: units expected (``None``: unknown; then no percentage and no ETA).
        unit: plural name of a unit, e.g. ``"images"``.
        stream: where lines go (default ``sys.stderr``); on a terminal the line is redrawn in place.
        logger: log lines with ``logger.info`` instead (never in place); takes precedence over ``stream``.
        period: seconds between lines when not on a terminal.
        clock: monotonic seconds (tests pass a fake one).

    Use as a context manager, or call :meth:`close` at the end: it prints the last line (count, total time
    and mean rate) once. ``update`` costs a clock read and a comparison when nothing is printed.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "images", *, stream: TextIO | None = None,
                 logger: logging.Logger | None = None, period: float = DEFAULT_PERIOD,
                 time_constant: float = DEFAULT_TIME_CONSTANT, clock: Clock = time.monotonic) -> None:
        if total is not None and total < 0:
            raise ValueError(f"total must be at least 0, got {total}")
        self.label, self.total, self.unit = label, total, unit
        self.logger = logger
        self.stream = stream if stream is not None else sys.stderr
        self.in_place = logger is None and _is_tty(self.stream)
        self.period = TTY_PERIOD if self.in_place else float(period)
        self.clock = clock
        self.pace = Pace(time_constant)
        self.done = 0
        self.start = clock()
        self._window_start, self._window_done = self.start, 0
        self._next_print = self.start + min(FIRST_LINE_AFTER, self.period)
        self._closed = False
        self._width = 0  # of the last in-place line, to blank what a shorter one leaves

    # ---------------------------------------------------------------------------------- counting
    def update(self, n: int = 1) -> None:
        """``n`` more units done."""
        self.set(self.done + n)

    def set(self, done: int) -> None:
        """``done`` units done so far."""
        now = self.clock()
        self.done = done
        if done > self._window_done and now > self._window_start:
            self.pace.add(done - self._window_done, now - self._window_start)
            self._window_start, self._window_done = now, done
        if now >= self._next_print and not self._closed:
            self._next_print = now + self.period
            self._emit(self.line(now), final=False)

    def close(self) -> None:
        """Print the last line (total time and mean rate) once; later calls do nothing."""
        if self._closed:
            return
        self._closed = True
        self._emit(self.final_line(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        elif self.in_place and self._width:
            self.stream.write("\n")  # leave the partial line visible above the error
            self.stream.flush()

    # ----------------------------------------------------------------------------------- figures
    @property
    def elapsed(self) -> float:
        return self.clock() - self.start

    @property
    def rate(self) -> float | None:
        """Smoothed units per second (``None`` before the first unit)."""
        spu = self.pace.seconds_per_unit
        return None if spu is None else (math.inf if spu == 0 else 1.0 / spu)

    @property
    def eta(self) -> float | None:
        """Seconds left, from the smoothed pace (``None`` when the total or the pace is unknown)."""
        if self.total is None:
            return None
        return self.pace.seconds_for(self.total - self.done)

    def line(self, now: float | None = None) -> str:
        """The progress line: ``label: done/total unit (pct), rate unit/s, ETA H:MM:SS``."""
        parts = [f"{self.label}: {self._count()}"]
        rate = self.rate
        if rate is not None:
            parts.append(f"{_format_rate(rate)} {self.unit}/s")
        if self.total is not None:
            parts.append(f"ETA {format_duration(self.eta)}")
        return ", ".join(parts)

    def final_line(self) -> str:
        """``label: done/total unit in H:MM:SS (mean rate unit/s)``."""
        elapsed = self.elapsed
        mean = f" ({_format_rate(self.done / elapsed)} {self.unit}/s)" if elapsed > 0 and self.done else ""
        return f"{self.label}: {self._count()} in {format_duration(elapsed)}{mean}"

    def _count(self) -> str:
        if self.total is None:
            return f"{self.done} {self.unit}"
        percent = f" ({100 * self.done / self.total:.0f}%)" if self.total else ""
        return f"{self.done}/{self.total} {self.unit}{percent}"

    def _emit(self, text: str, final: bool) -> None:
        if self.logger is not None:
            self.logger.info(text)
        elif self.in_place:
            padding = " " * max(self._width - len(text), 0)
            self._width = len(text)
            self.stream.write("\r" + text + padding + ("\n" if final else ""))
            self.stream.flush()
        else:
            self.stream.write(text + "\n")
            self.stream.flush()


def track(items: Iterable, label: str, total: int | None = None, unit: str = "images", **kwargs) -> Iterable:
    """Yield from ``items``, counting one unit per item with a :class:`Progress` (closed at the end)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(label, total, unit, **kwargs) as progress:
        for item in items:
            yield item
            progress.update()


# ------------------------------------------------------------------------------------ training ETA
def evaluation_epochs(max_epochs: int, period: int) -> list[int]:
    """The 1-based epochs after which training evaluates: every ``period`` (0: never) and the last one."""
    return [epoch for epoch in range(1, max_epochs + 1)
            if epoch == max_epochs or (period > 0 and epoch % period == 0)]


class TrainingETA:
    """Time left of a training run: remaining iterations at the smoothed pace plus remaining evaluations.

    Call :meth:`step` after every iteration (or every few), and wrap each evaluation in :meth:`evaluating`
    (or call :meth:`evaluation_started` / :meth:`evaluation_finished`): its time is measured separately and
    left out of the iteration pace. The first ``warmup_iters`` iterations after the start or a resume are
    not counted either (cudnn autotuning, the loader workers' first batches, the allocator growing: they
    made the old ETA start far too high and then drop); until the pace is known the ETA is unknown ("?").

    Args:
        total_iters: iterations of the whole run.
        iters_per_epoch: to tell which evaluations are still to come.
        eval_epochs: 1-based epochs followed by an evaluation (see :func:`evaluation_epochs`).
        start_iter: iteration the run (re)starts at; evaluations of finished epochs are not counted.
        evaluation_guess: seconds one evaluation is expected to take before one has been timed
            (``None``: unknown, then :meth:`describe` says how many are not included).
        warmup_iters: iterations after ``start_iter`` left out of the pace.
        time_constant: seconds over which the pace is averaged (see :class:`Pace`).
    """

    def __init__(self, total_iters: int, iters_per_epoch: int, eval_epochs: Iterable[int] = (), *,
                 start_iter: int = 0, evaluation_guess: float | None = None, warmup_iters: int = 5,
                 time_constant: float = 120.0, clock: Clock = time.monotonic) -> None:
        if iters_per_epoch < 1:
            raise ValueError(f"iters_per_epoch must be at least 1, got {iters_per_epoch}")
        self.total_iters, self.iters_per_epoch = total_iters, iters_per_epoch
        self.clock = clock
        self.iter_pace = Pace(time_constant)
        start_epoch = start_iter // iters_per_epoch
        self.pending_evals = sorted(e for e in set(eval_epochs) if e > start_epoch)
        self.eval_seconds: list[float] = []
        self.evaluation_guess = evaluation_guess
        self.iteration = start_iter
        self.counted_from = start_iter + max(warmup_iters, 0)  # the pace starts with the first step at or past this
        self._mark: tuple[float, int] | None = None  # (time, iteration) of the last counted step
        self._eval_start: float | None = None

    def step(self, iteration: int) -> None:
        """``iteration`` iterations are done (a global count, as the trainer's ``iter``)."""
        now = self.clock()
        self.iteration = iteration
        if iteration < self.counted_from:
            return
        if self._mark is not None and self._eval_start is None:
            last_time, last_iter = self._mark
            self.iter_pace.add(iteration - last_iter, now - last_time)
        self._mark = (now, iteration)

    def evaluation_started(self) -> None:
        self._eval_start = self.clock()

    @property
    def timing_evaluation(self) -> bool:
        """Between :meth:`evaluation_started` and :meth:`evaluation_finished`."""
        return self._eval_start is not None

    def evaluation_finished(self, epoch: int | None = None) -> None:
        """An evaluation ended (``epoch``: the 1-based epoch it followed; default the next pending one)."""
        now = self.clock()
        if self._eval_start is not None:
            self.eval_seconds.append(now - self._eval_start)
            self._eval_start = None
        if self.pending_evals:
            self.pending_evals.remove(epoch if epoch in self.pending_evals else self.pending_evals[0])
        if self._mark is not None:
            self._mark = (now, self._mark[1])  # the next window starts after the evaluation

    def evaluating(self, epoch: int | None = None) -> _Evaluation:
        """``with eta.evaluating(epoch): evaluate()`` times one evaluation."""
        return _Evaluation(self, epoch)

    @property
    def evaluation_seconds(self) -> float | None:
        """Expected seconds of one evaluation: the mean of those timed, else the guess."""
        if self.eval_seconds:
            return sum(self.eval_seconds) / len(self.eval_seconds)
        return self.evaluation_guess

    def eta_seconds(self) -> float | None:
        """Seconds left, evaluations included when their duration is known (``None`` before any pace)."""
        iterations = self.iter_pace.seconds_for(self.total_iters - self.iteration)
        if iterations is None:
            return None
        per_eval = self.evaluation_seconds
        return iterations + (per_eval * len(self.pending_evals) if per_eval is not None else 0.0)

    def describe(self) -> str:
        """``H:MM:SS``, followed by how many evaluations it leaves out while none has been timed."""
        seconds = self.eta_seconds()
        text = format_duration(seconds)
        count = len(self.pending_evals)
        if count and seconds is not None and self.evaluation_seconds is None:
            text += f" + {count} evaluation{'s' if count > 1 else ''}"
        return text


class _Evaluation:
    def __init__(self, eta: TrainingETA, epoch: int | None) -> None:
        self.eta, self.epoch = eta, epoch

    def __enter__(self) -> None:
        self.eta.evaluation_started()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.eta.evaluation_finished(self.epoch)
        else:
            self.eta._eval_start = None


def _format_rate(rate: float) -> str:
    if not math.isfinite(rate):
        return "?"
    return f"{rate:.1f}" if rate < 100 else f"{rate:.0f}"


def _is_tty(stream: TextIO) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # closed or not a real file
        return False
