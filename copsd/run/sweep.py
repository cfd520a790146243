"""Running a sweep: register jobs, claim them one at a time, run, record, go on.

Sequential by default; `workers > 1` starts that many processes that claim jobs from the same
database (each gets its own GPU when there are GPUs). DONE jobs are skipped, RUNNING jobs with a
stale heartbeat are reclaimed, FAILED jobs are retried until `max_attempts`, a failing job never
stops the sweep, and Ctrl-C gives the current job back (PENDING) before exiting.

Each job runs in its own child process (`runner.isolate`, on by default; `copsd.run.isolate`): a
job the kernel kills or that crashes in native code is FAILED with the cause in plain words and
the sweep goes on. The claim, heartbeat, signals and MLflow run stay in this process.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

from copsd.config import JobConfig
from copsd.errors import one_line
from copsd.paths import Workspace
from copsd.results.db import LostOwnership, ResultsDB
from copsd.results.schema import DONE, FAILED, PENDING, RUNNING
from copsd.results.tracking import NullTracker, RunLog, Tracker
from copsd.spec import SweepSpec


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


def _alive_check(beat: _Heartbeat):
    """After every training step / before every evaluation: a signal received, or a lost claim, stops the job."""

    def check() -> None:
        raise_if_signalled()
        beat.check()

    return check


def _checked(on_advance):
    """The progress callback, with a look at the signal flag on every evaluation batch."""

    def advance(n: int) -> None:
        raise_if_signalled()
        if on_advance:
            on_advance(n)

    return advance


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


@dataclass
class RunOptions:
    """How a sweep runs (never part of a job's identity). `from_spec` takes the spec's `runner`
    and `mlflow` blocks; the CLI's flags override them."""

    db_url: str
    device: str | None = None
    workers: int = 1
    max_attempts: int = 3
    stale_after_s: float = 600.0
    heartbeat_s: float = 30.0
    retry_failed: bool = True
    mlflow: bool = True
    experiment: str = "copsd"
    log_generations: bool = True
    progress: bool = True
    isolate: bool = True  # each job in its own child process (copsd.run.isolate)
    preflight: bool = True  # refuse a job whose estimated peak memory cannot fit (copsd.training.memory)

    @classmethod
    def from_spec(cls, spec: SweepSpec, db_url: str, **overrides) -> RunOptions:
        r, m = spec.runner, spec.mlflow
        base = dict(
            max_attempts=r.max_attempts,
            stale_after_s=r.stale_after_s,
            heartbeat_s=r.heartbeat_s,
            experiment=m.experiment,
            log_generations=m.log_generations,
            isolate=r.isolate,
        )
        return cls(db_url=db_url, **{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.db_url)


@dataclass
class SweepSummary:
    ran: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)


class _Heartbeat:
    """Refreshes a RUNNING job's heartbeat from a background thread while it runs; notices when
    the claim was lost (the fenced update matches nothing) so the job can stop without writing."""

    def __init__(self, db: ResultsDB, job_id: str, owner: str, every_s: float):
        self._stop = threading.Event()
        self.lost = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(db, job_id, owner, every_s), daemon=True)

    def _loop(self, db, job_id, owner, every_s):
        while not self._stop.wait(every_s):
            try:
                if not db.heartbeat(job_id, owner):
                    self.lost.set()
                    return
            except Exception:
                pass

    def check(self) -> None:
        if self.lost.is_set():
            raise LostOwnership("this worker's claim was taken over by another worker")

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join(timeout=5)


@dataclass
class JobOutcome:
    """What running (or trying to run) one job came to."""

    status: str  # DONE, FAILED or SKIPPED (not claimable)
    error: str | None = None
    seconds: float = 0.0
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics evaluated now

    def line(self, job: JobConfig) -> str:
        """One log line: status, id, label, seconds, headline metric (or the error)."""
        head = f"{self.status:<6} {job.job_id} {job.label} {self.seconds:.0f}s"
        if self.error:
            return f"{head}: {self.error}"
        if self.metrics:
            step = max(self.metrics)
            acc = self.metrics[step].get("accuracy")
            if acc is not None:
                head += f" accuracy {100 * acc:.1f}% ({job.language}, {job.eval.benchmark}, step {step})"
        elif self.status == DONE:
            head += " (results already stored)"
        return head


def make_tracker(opts: RunOptions) -> Tracker:
    return Tracker(opts.workspace.tracking_uri, opts.experiment) if opts.mlflow else NullTracker()


def execute_one(
    job: JobConfig,
    db: ResultsDB,
    opts: RunOptions,
    *,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    sweep: str | None = None,
    on_total=None,
    on_advance=None,
    on_start=None,
    on_result=None,
) -> JobOutcome:
    """Claim and run one job; SKIPPED if it was not claimable. `on_start()` runs once claimed;
    `on_result(step, metrics)` after each checkpoint is stored (in-process jobs only)."""
    from copsd.run.isolate import run_job_isolated, warm_up

    tracker = tracker or NullTracker()
    owner = db.claim(
        job.job_id, max_attempts=opts.max_attempts, stale_after_s=opts.stale_after_s, retry_failed=opts.retry_failed
    )
    if owner is None:
        return JobOutcome("SKIPPED")
    isolate = opts.isolate and on_result is None
    t0 = time.perf_counter()
    run: RunLog | None = None
    try:
        if on_start:
            on_start()
        if isolate:  # started once a job is ours (a process that claims nothing imports no torch)
            warm_up()  # the fork server imports torch & co. while the MLflow run is set up
        with _Heartbeat(db, job.job_id, owner, opts.heartbeat_s) as beat:
            row = db.get_job(job.job_id)
            run = tracker.job_run(job, parent_run_id, existing=row.mlflow_run_id if row else None, sweep=sweep)
            if run.run_id:
                db.set_job_mlflow_run(job.job_id, run.run_id)
            if isolate:  # in a child process: a job that dies is FAILED with its cause
                metrics = run_job_isolated(
                    job,
                    db_url=opts.db_url,
                    owner=owner,
                    run=run,
                    device=opts.device,
                    log_generations=opts.log_generations,
                    runs_dir=opts.workspace.runs_dir,
                    on_total=on_total,
                    on_advance=_checked(on_advance),
                    check_alive=_alive_check(beat),
                    preflight=opts.preflight,
                )
            else:
                from copsd.run.job import run_job

                metrics = run_job(
                    job,
                    db,
                    run=run,
                    device=opts.device,
                    log_generations=opts.log_generations,
                    runs_dir=opts.workspace.runs_dir,
                    on_total=on_total,
                    on_advance=_checked(on_advance),
                    owner=owner,
                    check_alive=_alive_check(beat),
                    on_result=on_result,
                    preflight=opts.preflight,
                )
            raise_if_signalled()
            beat.check()
    except (KeyboardInterrupt, Terminated):
        # back to PENDING, attempt not counted; a job another worker took over is left to it
        if db.release(job.job_id, owner) and run is not None:
            run.end("KILLED")
        raise
    except LostOwnership as exc:  # another worker runs it now: write nothing, leave its MLflow run alone
        return JobOutcome("LOST", one_line(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        err = one_line(exc)
        if not db.finish(job.job_id, FAILED, err, owner=owner):
            return JobOutcome("LOST", f"claim taken over (then: {err})", time.perf_counter() - t0)
        if run is not None:
            run.set_tag("copsd.error", err)
            run.end("FAILED")
        return JobOutcome(FAILED, err, time.perf_counter() - t0)
    if not db.finish(job.job_id, DONE, owner=owner):
        return JobOutcome("LOST", "the claim was taken over before the job could be marked DONE")
    run.end("FINISHED")
    return JobOutcome(DONE, None, time.perf_counter() - t0, metrics)


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def run_sweep(
    name: str,
    jobs: list[JobConfig],
    opts: RunOptions,
    *,
    all_jobs: list[JobConfig] | None = None,
    description: str = "",
    spec_path: str | None = None,
    spec_yaml: str | None = None,
) -> SweepSummary:
    """Run `jobs` (a subset of the sweep's `all_jobs` when filtered with --only)."""
    tracker = make_tracker(opts)  # first: an unreachable MLflow server fails before the DB is touched
    db = ResultsDB(opts.db_url)
    db.register_sweep(name, all_jobs or jobs, description=description, spec_path=spec_path, spec_yaml=spec_yaml)
    summary = SweepSummary()
    rows = {j.id: j for j in db.jobs(ids=[j.job_id for j in jobs])}

    def runnable(j: JobConfig) -> bool:
        r = rows.get(j.job_id)
        if r is None or r.status in (PENDING, RUNNING):
            return True
        return r.status == FAILED and opts.retry_failed and r.attempts < opts.max_attempts

    todo = [j for j in jobs if runnable(j)]
    summary.skipped = len(jobs) - len(todo)
    if not todo:  # nothing to do: no sweep run in MLflow
        db.close()
        return summary
    sw = db.get_sweep(name)
    sweep_run = tracker.sweep_run(name, sw.mlflow_run_id if sw else None, description)
    if sweep_run.run_id and sweep_run.run_id != (sw.mlflow_run_id if sw else None):
        winner = db.set_sweep_mlflow_run(name, sweep_run.run_id, only_if_unset=not (sw and sw.mlflow_run_id))
        if winner != sweep_run.run_id:  # another process started at the same moment recorded its run first
            sweep_run = tracker.adopt(sweep_run, winner)
    parent = sweep_run.run_id or None
    try:
        with signals_return_jobs():
            if opts.workers <= 1 or len(todo) <= 1:
                _run_sequential(todo, db, opts, tracker, parent, name, summary)
            else:
                _run_parallel(todo, opts, parent, name, summary)
    except (KeyboardInterrupt, Terminated) as exc:
        sweep_run.end("KILLED")
        db.close()
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise SweepInterrupted(
            f"{'terminated (SIGTERM)' if signum == signal.SIGTERM else 'interrupted'}: {summary.done} job(s) "
            "finished, the running one was returned to PENDING; run the same command again to resume",
            signum,
        ) from None
    sweep_run.set_tag("copsd.failed_jobs", str(summary.failed))
    sweep_run.end("FINISHED")
    db.close()
    return summary


def _run_sequential(todo, db, opts, tracker, parent, name, summary):
    with _progress(opts.progress) as prog:
        overall = prog.add_task(f"sweep {name}", total=len(todo))
        live = prog.console.is_terminal  # a terminal shows the bars; a log file gets a line per start
        counted: set[str] = set()

        def run_one(job: JobConfig) -> JobOutcome:
            inner = prog.add_task(f"  {job.label}", total=None)
            outcome = execute_one(
                job,
                db,
                opts,
                tracker=tracker,
                parent_run_id=parent,
                sweep=name,
                on_total=lambda n, t=inner: prog.update(t, total=n),
                on_advance=lambda n, t=inner: prog.advance(t, n),
                on_start=(lambda: None)
                if live
                else lambda: prog.console.print(f"start  {job.job_id} {job.label}", highlight=False, soft_wrap=True),
            )
            prog.remove_task(inner)
            if outcome.status == "SKIPPED":
                return outcome
            _count(summary, job, outcome.status, outcome.error)
            prog.console.print(outcome.line(job), highlight=False, soft_wrap=True, markup=False)
            if job.job_id not in counted and outcome.status in (DONE, FAILED):
                counted.add(job.job_id)
                prog.advance(overall)
            return outcome

        for job in todo:
            raise_if_signalled()
            run_one(job)
        _wait_for_others(todo, db, opts, run_one, prog.console.print)
        prog.update(overall, completed=len(todo))


def _wait_for_others(todo, db: ResultsDB, opts: RunOptions, run_one, say) -> None:
    """Jobs another worker holds (or gave back): wait for them, taking over any that come free
    (given back by a signal, orphaned by a dead process, or stale). FAILED jobs are not retried here."""
    by_id = {j.job_id: j for j in todo}
    announced = False
    while True:
        rows = db.jobs(ids=list(by_id))
        waiting = [by_id[r.id] for r in rows if r.status in (PENDING, RUNNING)]
        if not waiting:
            return
        progressed = False
        for job in waiting:
            raise_if_signalled()
            if run_one(job).status != "SKIPPED":
                progressed = True
        if not progressed:
            if not announced:
                say(f"waiting for {len(waiting)} job(s) that other workers are running", highlight=False)
                announced = True
            time.sleep(min(opts.heartbeat_s, 2.0))


def _count(summary: SweepSummary, job: JobConfig, status: str, err: str | None) -> None:
    if status == DONE:
        summary.ran += 1
        summary.done += 1
    elif status == FAILED:
        summary.ran += 1
        summary.failed += 1
        summary.errors[job.job_id] = err or ""
    else:
        summary.skipped += 1


def _worker_main(
    worker: int, gpu: int | None, job_jsons: list[str], opts: RunOptions, parent: str | None, name: str
) -> None:
    """Entry point of a worker process: claim jobs from the shared list until none is left."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    db = ResultsDB(opts.db_url)
    ignore_sigint = True  # Ctrl-C reaches the whole process group; the parent passes it on as one SIGTERM
    tracker = make_tracker(opts)
    try:
        with signals_return_jobs(ignore_sigint=ignore_sigint):
            jobs = [JobConfig.model_validate_json(js) for js in job_jsons]

            def run_one(job: JobConfig) -> JobOutcome:
                outcome = execute_one(job, db, opts, tracker=tracker, parent_run_id=parent, sweep=name)
                if outcome.status != "SKIPPED":
                    print(f"[worker {worker}] {outcome.line(job)}", file=sys.stderr, flush=True)
                return outcome

            for job in jobs:
                raise_if_signalled()
                run_one(job)
            _wait_for_others(jobs, db, opts, run_one, lambda *a, **k: None)
    except (KeyboardInterrupt, Terminated):
        pass  # the running job was given back (PENDING)
    finally:
        db.close()


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def _run_parallel(todo, opts, parent, name, summary):
    ctx = mp.get_context("spawn")
    gpus = _gpu_count()
    job_jsons = [j.model_dump_json() for j in todo]
    db = ResultsDB(opts.db_url)
    ids = [j.job_id for j in todo]
    before = {j.id: j.attempts for j in db.jobs(ids=ids)}  # before any worker can claim
    procs = []
    for w in range(opts.workers):
        # every worker walks the whole list (rotated so they start apart); claims make it exactly-once
        rot = job_jsons[w :: opts.workers] + [js for i, js in enumerate(job_jsons) if i % opts.workers != w]
        p = ctx.Process(
            target=_worker_main, args=(w, w % gpus if gpus else None, rot, opts, parent, name), name=f"copsd-worker-{w}"
        )
        p.start()
        procs.append(p)
    try:
        with _progress(opts.progress) as prog:
            task = prog.add_task(f"sweep {name} ({opts.workers} workers)", total=len(todo))
            while any(p.is_alive() for p in procs):
                rows = db.jobs(ids=ids)
                finished = sum(1 for r in rows if r.status in (DONE, FAILED) and r.attempts > before.get(r.id, 0))
                prog.update(task, completed=finished)
                time.sleep(1.0)
            for p in procs:
                p.join()
    except (KeyboardInterrupt, Terminated):
        # workers that got the signal themselves (SLURM signals every process) are giving their
        # jobs back; the others (Ctrl-C reaches only us: workers ignore SIGINT) get one SIGTERM
        deadline = time.time() + 5
        for p in procs:
            p.join(timeout=max(0.0, deadline - time.time()))
        for p in procs:
            if p.is_alive() and p.pid:
                os.kill(p.pid, signal.SIGTERM)
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
        raise
    for r in db.jobs(ids=ids):
        if r.attempts > before.get(r.id, 0) and r.status == DONE:
            summary.ran += 1
            summary.done += 1
        elif r.attempts > before.get(r.id, 0) and r.status == FAILED:
            summary.ran += 1
            summary.failed += 1
            summary.errors[r.id] = r.last_error or ""
        elif r.status in (PENDING, RUNNING):
            summary.skipped += 1
    db.close()
