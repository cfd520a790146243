"""Job isolation: each job runs in a child process, so a job the kernel kills (out of memory), a
segfault or a CUDA fatal error fails that job with a plain-words cause instead of ending the sweep.

The parent (the sweep process) keeps the claim, the heartbeat, the signal handling and the MLflow
run; the child loads the model, trains, evaluates and writes the result rows (fenced by the
parent's owner token). The child sends its progress, its MLflow calls and its outcome (metrics,
or the one-line error) back through a pipe; the parent replays them, so the progress bars, log
lines and MLflow run look as they do in-process (`runner.isolate: false`).

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
from collections.abc import Callable
from typing import Any

from copsd.errors import CopsdError, one_line
from copsd.results.db import LostOwnership

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
    "copsd.reports.figures",  # each job draws its figures for MLflow
    "matplotlib.pyplot",
    "transformers.modeling_utils",
    "transformers.models.qwen3.modeling_qwen3",
    "peft",
    "sqlite3",
    "sqlalchemy.dialects.sqlite",
]

_NOTES_SAID: set[str] = set()  # the children's once-per-process notes, said once by this process
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


class _PipeRunLog:
    """The job's MLflow run as the child sees it: every call goes to the parent, which logs it."""

    def __init__(self, send: Callable[[tuple], None], run_id: str = ""):
        self._send = send
        self.run_id = run_id  # the parent's run, so the job knows whether anything is logged

    def log_metrics(self, metrics: dict[str, float], step: int = 0) -> None:
        self._send(("run", "log_metrics", (dict(metrics), step)))

    def set_tag(self, key: str, value: str) -> None:
        self._send(("run", "set_tag", (key, str(value))))

    def log_jsonl(self, records: list[dict], name: str, artifact_path: str = "generations") -> None:
        self._send(("run", "log_jsonl", (records, name, artifact_path)))

    def log_files(self, paths: list, artifact_path: str) -> None:  # files the parent can read too
        self._send(("run", "log_files", ([str(p) for p in paths], artifact_path)))

    def end(self, status: str = "FINISHED") -> None:  # the parent ends the run
        pass


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
    lock = threading.Lock()

    def send(msg: tuple) -> None:
        with lock:
            conn.send(msg)

    try:
        from copsd.config import JobConfig
        from copsd.results.db import ResultsDB
        from copsd.rollout import api as rollout_api
        from copsd.run.job import run_job

        # once-per-process notes ("note: rollout engine ...") are said once per sweep: by the parent
        rollout_api._note_once = lambda message: send(("note", message))  # type: ignore[assignment]

        job = JobConfig.model_validate_json(payload["job"])
        db = ResultsDB(payload["db_url"])
        try:
            metrics = run_job(
                job,
                db,
                run=_PipeRunLog(send, payload["run_id"]),  # type: ignore[arg-type]
                device=payload["device"],
                log_generations=payload["log_generations"],
                runs_dir=payload["runs_dir"],
                on_total=lambda n: send(("total", n)),
                on_advance=lambda n: send(("advance", n)),
                owner=payload["owner"],
                preflight=payload.get("preflight", True),
            )
        finally:
            db.close()
        send(("done", metrics))
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent as one line
        if os.environ.get("COPSD_DEBUG"):
            import traceback

            traceback.print_exc()
        with contextlib.suppress(Exception):
            send(("error", one_line(exc), isinstance(exc, LostOwnership)))
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
    job,
    *,
    db_url: str,
    owner: str,
    run,
    device: str | None,
    log_generations: bool,
    runs_dir,
    on_total: Callable[[int], None] | None,
    on_advance: Callable[[int], None],
    check_alive: Callable[[], None],
    poll_s: float = 0.2,
    preflight: bool = True,
) -> dict[int, dict[str, float]]:
    """`run_job` in a child process; returns its metrics or raises what it failed with (`JobError`,
    `LostOwnership`, `JobProcessDied`). `check_alive()` runs in the parent while it waits: when it
    raises (a signal, a lost claim) the child is stopped (SIGTERM, then SIGKILL) before the
    exception goes on, so the caller's clean-up never races a live child."""
    ctx = _context()
    payload = {
        "job": job.model_dump_json(),
        "db_url": db_url,
        "owner": owner,
        "device": device,
        "log_generations": log_generations,
        "runs_dir": runs_dir,
        "run_id": getattr(run, "run_id", "") or "",
        "preflight": preflight,
        "parent_pid": os.getpid(),
        "cwd": os.getcwd(),
        "env": dict(os.environ),
        "sys_path": list(sys.path),
    }
    receive, child_end = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(child_end, payload), name=f"copsd-job-{job.job_id}")
    proc.start()
    child_end.close()
    outcome: tuple | None = None
    try:
        while outcome is None:
            check_alive()
            if not receive.poll(poll_s):
                continue
            try:
                msg = receive.recv()
            except (EOFError, OSError):  # the child is gone (or going): its exit status says why
                break
            kind = msg[0]
            if kind == "total":
                if on_total:
                    on_total(msg[1])
            elif kind == "advance":
                on_advance(msg[1])
            elif kind == "note":
                if msg[1] not in _NOTES_SAID:
                    _NOTES_SAID.add(msg[1])
                    print(msg[1], file=sys.stderr, flush=True)
            elif kind == "run":
                getattr(run, msg[1])(*msg[2])
            else:
                outcome = msg
        if outcome is None:
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
        proc.join(30)  # it has reported; it exits by itself
    finally:
        _stop(proc)
        receive.close()
    if outcome[0] == "done":
        return outcome[1]
    if outcome[2]:
        raise LostOwnership(outcome[1])
    raise JobError(outcome[1])
