"""Job isolation: each job runs in a child process, so a job the kernel kills (out of memory), a
segfault or a CUDA fatal error fails that job with a plain-words cause instead of ending the sweep.

The parent (the sweep process) keeps the claim, the heartbeat, the signal handling, the results
DB and the MLflow run; the child loads the model, trains and evaluates, and sends the job's events
(`copsd.run.events`) through a pipe, then `Finished` or `Failed` (its one-line error). The parent
yields them to the same loop and recorder an in-process job (`runner.isolate: false`) goes
through, so progress bars, log lines, DB rows and MLflow runs are the same either way.

Children come from a `forkserver` that has imported torch, transformers and the job code once per
sweep process: after the first job a child starts in a fraction of a second (a fresh `spawn`ed
interpreter pays 5-9 s of imports per job). The server is a clean process started by exec (no
threads, CUDA never initialised in it), so this is not the unsafe fork of a threaded torch process.

A child never outlives the sweep: on Linux it asks the kernel for SIGKILL when its parent dies
(`PR_SET_PDEATHSIG`), and everywhere it polls its parents once a second.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Generator
from typing import Any

from copsd.config import JobConfig
from copsd.errors import CopsdError, one_line
from copsd.run import events
from copsd.run.job import JobPlan

# imported once in the fork server, so each job's child starts with them loaded; a module missing
# here (an optional extra) is skipped by multiprocessing, it is only imported later
PRELOAD = [
    "copsd.cli",  # what `copsd`/cli.py, re-run as the child's __mp_main__, imports
    "copsd.spec",
    "copsd.data.benchmarks",
    "copsd.run.job",
    "copsd.models.load",
    "copsd.evaluation.evaluate",
    "copsd.training",
    "copsd.training.adapters",
    "copsd.rollout",
    "transformers.modeling_utils",
    "transformers.models.qwen3.modeling_qwen3",
    "peft",
    "sqlite3",
    "sqlalchemy.dialects.sqlite",
]

TERMINATE_GRACE_S = 10.0  # SIGTERM, then SIGKILL after this long

_OOM_HINT = "likely out of memory; lower train.micro_batch_size, train.max_completion_length or eval.batch_size"
_NATIVE = "crashed in native code (torch, CUDA or a driver); the Python stack is on stderr above"
_SIGNAL_HINTS: dict[int, str] = {
    int(signal.SIGKILL): _OOM_HINT,
    int(signal.SIGSEGV): _NATIVE,
    int(signal.SIGBUS): "bad memory access, e.g. /dev/shm or the disk full under a mapped file",
    int(signal.SIGABRT): "aborted in native code, e.g. a CUDA fatal error or a failed C++ assertion; see stderr above",
    int(signal.SIGFPE): _NATIVE,
    int(signal.SIGILL): _NATIVE,
    int(signal.SIGTERM): "stopped from outside copsd",
    int(signal.SIGINT): "stopped from outside copsd",
    int(signal.SIGHUP): "its terminal went away",
}


class JobProcessDied(CopsdError):
    """The job's child process ended without reporting a result (killed, crashed, exited)."""


class JobError(CopsdError):
    """The job failed in its child process; the message is the child's one-line error, as is."""


def exit_cause(exitcode: int | None) -> str:
    """A child's exit status in plain words (negative: killed by that signal)."""
    if exitcode is None:
        return "job process did not exit"
    if exitcode < 0:
        sig = -exitcode
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        hint = _SIGNAL_HINTS.get(sig)
        return f"job process killed by signal {sig} ({name}{': ' + hint if hint else ''})"
    return (
        f"job process exited with status {exitcode} without reporting a result "
        "(a native library ended it; see stderr above)"
    )


def _context():
    if "forkserver" not in mp.get_all_start_methods():  # Windows
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)
    return ctx


def warm_up() -> None:
    """Start the fork server now (it imports torch & co. while the sweep sets up its database)."""
    ctx = _context()
    if ctx.get_start_method() == "forkserver":
        from multiprocessing import forkserver

        with contextlib.suppress(Exception):
            forkserver.ensure_running()


# ---------------------------------------------------------------- child side


def _die_with_parent(parents: tuple[int, ...]) -> None:
    """Never outlive the sweep: SIGKILL from the kernel when the parent dies (Linux), and a watch
    thread for everything else (also covers the sweep process when the fork server is the parent)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    ppid = os.getppid()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    if os.getppid() != ppid or any(gone(p) for p in parents):  # died before prctl took effect
        os.kill(os.getpid(), signal.SIGKILL)

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != ppid or any(gone(p) for p in parents):
                os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watch, name="copsd-parent-watch", daemon=True).start()


def _child_main(conn, payload: dict[str, Any]) -> None:
    """Entry point of a job's child process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's: it stops us with SIGTERM
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _die_with_parent((payload["parent_pid"],))
    import faulthandler

    faulthandler.enable()  # a segfault prints the Python stack to stderr
    # the fork server was started earlier: take the sweep process's current directory and environment
    os.chdir(payload["cwd"])
    os.environ.clear()
    os.environ.update(payload["env"])
    for p in reversed(payload["sys_path"]):
        if p not in sys.path:
            sys.path.insert(0, p)
    send = conn.send
    try:
        from copsd.run.job import run_job

        for event in run_job(JobConfig.model_validate_json(payload["job"]), payload["plan"]):
            send(event)
        send(events.Finished())
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one line
        if os.environ.get("COPSD_DEBUG"):
            import traceback

            traceback.print_exc()
        with contextlib.suppress(Exception):
            send(events.Failed(one_line(exc)))
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# ---------------------------------------------------------------- parent side


def _stop(proc, grace_s: float = TERMINATE_GRACE_S) -> None:
    """SIGTERM, then SIGKILL after `grace_s`; returns once the child is gone."""
    if proc.is_alive():
        with contextlib.suppress(Exception):
            proc.terminate()
        proc.join(grace_s)
    if proc.is_alive():
        with contextlib.suppress(Exception):
            proc.kill()
        proc.join(30)


def run_job_isolated(
    job: JobConfig, plan: JobPlan, check_alive: Callable[[], None], poll_s: float = 0.2
) -> Generator[events.Event, None, None]:
    """`run_job` in a child process: yields its events, ends at its `Finished`, raises `JobError`
    at its `Failed` or `JobProcessDied` when it ended without either. `check_alive()` runs here
    while the child computes: when it raises (a signal, a lost claim) the child is stopped
    (SIGTERM, then SIGKILL) before the exception goes on; so is it when the caller stops
    iterating (close the generator), so the caller's clean-up never races a live child."""
    ctx = _context()
    payload = {
        "job": job.model_dump_json(),
        "plan": plan,
        "parent_pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "sys_path": list(sys.path),
    }
    receive, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child_end, payload), name=f"copsd-job-{job.job_id}")
    proc.start()
    child_end.close()
    try:
        while True:
            check_alive()
            if not receive.poll(poll_s):
                continue
            try:
                event = receive.recv()
            except (EOFError, OSError):  # the child is gone (or going): its exit status says why
                break
            if isinstance(event, events.Finished | events.Failed):
                proc.join(30)  # it has reported; it exits by itself (a SIGTERM now would skip its clean-up)
                if isinstance(event, events.Failed):
                    raise JobError(event.message)
                return
            yield event
        proc.join(5)
        check_alive()
        if proc.exitcode in (-signal.SIGTERM, -signal.SIGINT, -signal.SIGHUP):
            # a signal to the whole process group (SLURM, a terminal) reaches us too: give our
            # handler a moment, so the job goes back to PENDING rather than FAILED
            for _ in range(10):
                time.sleep(0.1)
                check_alive()
        _stop(proc)
        raise JobProcessDied(exit_cause(proc.exitcode))
    finally:
        _stop(proc)
        receive.close()
