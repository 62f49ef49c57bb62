"""Progress a person can follow where no terminal draws bars: a SLURM log, `| tee`, a file.

rich draws its bars only on a terminal, and Lightning's bar likewise: a run whose output goes to a file showed
nothing between a stage's start and its end. Without a terminal `python -m benchmark run` uses `PlainProgress`
(the subset of rich's `Progress` the runner calls) and a `PlainTrainingProgress` callback instead: one line per
stage at most every `interval` seconds and when it ends - its step of total, elapsed time and an estimate of the time
left from the rate so far, as Lightning's and tqdm's loggers print without a terminal. In a terminal the bars stay.
"""
from __future__ import annotations

import sys
import time
from typing import Callable, TextIO

#: Seconds between two lines of one stage (its last line is always printed).
INTERVAL = 30.0


def _duration(sec: float) -> str:
    sec = int(round(sec))
    h, rest = divmod(sec, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def progress_line(description: str, done: float, total: float | None, elapsed: float, since: float = 0.0) -> str:
    """"<description>: 12/40 (30%), 1m05s elapsed, ~2m32s left" (no share or estimate without a total); the estimate
    is from the rate since this process began the stage at `since` done (a resumed fit's earlier steps cost nothing
    here)."""
    if not total:
        return f"{description}: {done:g}, {_duration(elapsed)} elapsed"
    left = elapsed * (total - done) / (done - since) if done > since else None
    eta = f", ~{_duration(left)} left" if left is not None and done < total else ""
    return f"{description}: {done:g}/{total:g} ({100 * done / total:.0f}%), {_duration(elapsed)} elapsed{eta}"


class PlainProgress:
    """The part of `rich.progress.Progress` the runner uses (`add_task`, `update`, `advance`, a context manager),
    printing plain lines (`progress_line`) instead of bars.

    Args:
        stream: Where the lines go (default stdout).
        interval: Seconds between two lines of one task.
        clock: Seconds now (tests pass their own; the default is `time.monotonic`).
        disable: Print nothing (`--quiet`).
    """

    def __init__(self, stream: TextIO | None = None, interval: float = INTERVAL,
                 clock: Callable[[], float] = time.monotonic, disable: bool = False):
        self.stream, self.interval, self.clock, self.disable = stream, interval, clock, disable
        self.tasks: dict[int, dict] = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None

    def add_task(self, description: str, total: float | None = None, **_) -> int:
        task = len(self.tasks)
        now = self.clock()
        self.tasks[task] = dict(description=description, total=total, completed=0.0, start=now, printed=None,
                                since=None)
        return task

    def update(self, task: int, completed: float | None = None, total: float | None = None,
               advance: float | None = None, **_) -> None:
        t = self.tasks[task]
        if total is not None:
            t["total"] = total
        if completed is not None:
            t["completed"] = completed
        if advance is not None:
            t["completed"] += advance
        if t["since"] is None:
            t["since"] = t["completed"] if completed is not None and advance is None else 0.0
        self._maybe_print(t)

    def advance(self, task: int, advance: float = 1) -> None:
        self.update(task, advance=advance)

    def _maybe_print(self, t: dict) -> None:
        if self.disable:
            return
        now = self.clock()
        finished = bool(t["total"]) and t["completed"] >= t["total"]
        if finished or t["printed"] is None or now - t["printed"] >= self.interval:
            if finished and t.get("ended"):
                return
            t["printed"], t["ended"] = now, finished
            print(progress_line(t["description"], t["completed"], t["total"], now - t["start"], t["since"]),
                  file=self.stream or sys.stdout, flush=True)


def plain_training_progress(description: str, per_iteration: int = 1, interval: float = INTERVAL,
                            clock: Callable[[], float] = time.monotonic, stream: TextIO | None = None):
    """A Lightning callback that prints `progress_line`s of the training iterations (`global_step` over the
    trainer's `max_steps`, both divided by the method's optimizer steps per iteration) where Lightning's bar would
    draw nothing."""
    from lightning.pytorch.callbacks import Callback

    class PlainTrainingProgress(Callback):
        def __init__(self):
            self.progress = PlainProgress(stream, interval, clock)
            self.task = None

        def on_train_start(self, trainer, pl_module):
            total = trainer.max_steps // per_iteration if trainer.max_steps and trainer.max_steps > 0 else None
            self.task = self.progress.add_task(description, total=total)
            self.progress.update(self.task, completed=trainer.global_step // per_iteration)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if self.task is not None and trainer.is_global_zero:
                self.progress.update(self.task, completed=trainer.global_step // per_iteration)

    return PlainTrainingProgress()
