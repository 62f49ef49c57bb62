"""How a run stops when it is asked to: SIGTERM (what SLURM and most schedulers send at a time limit or a cancel) and
SIGINT (Ctrl-C).

* Outside a fit (data generation, evaluation, collect), SIGTERM raises `Stopped` where the process is, as Python's
  SIGINT raises KeyboardInterrupt: every record is written atomically, so nothing finished is lost, and the `with`
  blocks release what they hold (the run folder's `.lock`).
* During a fit in one process, the first SIGTERM or SIGINT asks the fit to stop at the next iteration boundary: a
  resume point is saved there (`benchmark.run.resume.ResumePoint`) and then `Stopped` is raised. A second signal of the
  same kind stops at once (the last saved resume point stands).
* The command line prints one line and exits 128 + the signal's number (143 for SIGTERM, 130 for SIGINT).

A handler that someone else installed (submitit's, which requeues a preempted job; a shell's SIG_IGN for a
background job) is left alone.
"""
from __future__ import annotations

import signal
import threading

#: The signals a run stops on, gracefully during a fit.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Stopped(BaseException):
    """The process was asked to stop by `signum` (a BaseException, like KeyboardInterrupt: no `except Exception`
    swallows it).

    Args:
        signum: The signal's number.
        resume_step: The iteration of the resume point the fit saved on its way out, if it saved one.
    """

    def __init__(self, signum: int, resume_step: int | None = None):
        super().__init__(signum, resume_step)
        self.signum, self.resume_step = signum, resume_step

    @property
    def exit_code(self) -> int:
        return 128 + int(self.signum)

    def message(self) -> str:
        name = signal.Signals(self.signum).name
        saved = f"a resume point at iteration {self.resume_step} is saved; " if self.resume_step else ""
        return f"stopped by {name}: {saved}every finished record is on disk; run the same command again to resume"


def _raise_stopped(signum, frame):
    raise Stopped(signum)


def install() -> None:
    """SIGTERM raises `Stopped` in this process (where its handler is still the default one)."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_stopped)


def _ours(handler) -> bool:
    """A handler this module may replace during a fit: the default ones, or the one `install` set."""
    return handler in (signal.SIG_DFL, signal.default_int_handler, _raise_stopped)


class StopRequests:
    """During a fit: the first SIGTERM/SIGINT is noted (`requested`, the signal's number) for the fit to stop at its
    next iteration boundary; a second one of the same kind raises `Stopped` at once. `arm()` replaces the handlers
    that are ours to replace (from the main thread only: a signal handler cannot be set elsewhere), `disarm()` puts
    back what `arm` found.
    """

    def __init__(self):
        self.requested: int | None = None
        self._saved: dict[int, object] = {}

    def _note(self, signum, frame):
        if self.requested == signum:
            raise Stopped(signum)
        self.requested = signum

    def arm(self, handlers_before: dict | None = None) -> None:
        """Take over the stop signals. `handlers_before`: the handlers in effect before Lightning put its own (which
        it puts back when the fit ends); a signal whose handler then was not ours is left alone."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in STOP_SIGNALS:
            before = (handlers_before or {}).get(signum, signal.getsignal(signum))
            if _ours(before):
                self._saved[signum] = signal.getsignal(signum)
                signal.signal(signum, self._note)

    def disarm(self) -> None:
        for signum, handler in self._saved.items():
            signal.signal(signum, handler)
        self._saved.clear()


def handlers_now() -> dict:
    """The current handlers of the stop signals (`StopRequests.arm`'s `handlers_before`)."""
    return {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
