"""Signals during a sweep: SIGTERM (SLURM's timeout and preemption) and Ctrl-C give the running
job back (PENDING) instead of killing the process mid-write; a second signal exits at once.

The handler raises in the main thread; because a handler's exception can be lost (Python ignores
exceptions raised inside a garbage-collector callback), the signal is also kept in a flag that the
runner checks at safe points (`raise_if_signalled`: every event of a job, every job).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading


class SweepInterrupted(Exception):
    """Ctrl-C or SIGTERM during a sweep; the database has been left consistent."""

    def __init__(self, message: str, signum: int = signal.SIGINT):
        super().__init__(message)
        self.signum = signum


class Terminated(BaseException):
    """SIGTERM (SLURM's timeout and preemption signal), raised in the main thread like Ctrl-C."""


class _SignalState:
    """The signal this process received, if any. A handler's exception can be lost (Python ignores
    exceptions raised inside a garbage-collector callback, where a signal may happen to land), so
    the runner also checks this flag at safe points: every training step, evaluation batch and job."""

    pending: int | None = None


_SIGNALS = _SignalState()  # per process, like the signal handlers themselves


def raise_if_signalled() -> None:
    sig = _SIGNALS.pending
    if sig is not None:
        raise Terminated() if sig == signal.SIGTERM else KeyboardInterrupt()


@contextlib.contextmanager
def signals_return_jobs(ignore_sigint: bool = False):
    """SIGTERM and SIGINT interrupt the running job, which goes back to PENDING; a second signal
    exits at once (exit status 128 + signal). Worker processes ignore SIGINT (`ignore_sigint`):
    their parent turns a Ctrl-C into one SIGTERM each."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if ignore_sigint:
        signal.signal(signal.SIGINT, signal.SIG_IGN)

    def handler(signum, _frame):
        if _SIGNALS.pending is not None:
            os._exit(128 + signum)
        _SIGNALS.pending = signum
        raise Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()

    def unraisable(info) -> None:
        # our exception was raised where Python cannot propagate it (a GC callback): the flag
        # carries the signal to the next safe point, so Python's "Exception ignored" report is noise
        if isinstance(info.exc_value, (Terminated, KeyboardInterrupt)) and _SIGNALS.pending is not None:
            return
        previous_hook(info)

    sigs = (signal.SIGTERM,) if ignore_sigint else (signal.SIGTERM, signal.SIGINT)
    old = {sig: signal.signal(sig, handler) for sig in sigs}
    previous_hook = sys.unraisablehook
    sys.unraisablehook = unraisable
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)
        sys.unraisablehook = previous_hook
        _SIGNALS.pending = None
