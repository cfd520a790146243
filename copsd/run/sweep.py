"""Running a sweep: register jobs, claim them one at a time, run, record, go on.

Sequential by default; `workers > 1` starts that many processes that claim jobs from the same
database (each gets its own GPU when there are GPUs). DONE jobs are skipped, RUNNING jobs with a
stale heartbeat are reclaimed, FAILED jobs are retried until `max_attempts`, a failing job never
stops the sweep, and Ctrl-C gives the current job back (PENDING) before exiting.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import threading
import time
from dataclasses import dataclass, field

from copsd.config import JobConfig
from copsd.errors import one_line
from copsd.paths import Workspace
from copsd.results.db import ResultsDB
from copsd.results.schema import DONE, FAILED, PENDING, RUNNING
from copsd.results.tracking import NullTracker, RunLog, Tracker
from copsd.spec import SweepSpec


class SweepInterrupted(Exception):
    """Ctrl-C during a sweep; the database has been left consistent."""


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

    @classmethod
    def from_spec(cls, spec: SweepSpec, db_url: str, **overrides) -> RunOptions:
        r, m = spec.runner, spec.mlflow
        base = dict(
            max_attempts=r.max_attempts,
            stale_after_s=r.stale_after_s,
            heartbeat_s=r.heartbeat_s,
            experiment=m.experiment,
            log_generations=m.log_generations,
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
    """Refreshes a RUNNING job's heartbeat from a background thread while it runs."""

    def __init__(self, db: ResultsDB, job_id: str, every_s: float):
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, args=(db, job_id, every_s), daemon=True)

    def _loop(self, db, job_id, every_s):
        while not self._stop.wait(every_s):
            try:
                db.heartbeat(job_id)
            except Exception:
                pass

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
) -> JobOutcome:
    """Claim and run one job; SKIPPED if it was not claimable."""
    from copsd.run.job import run_job

    tracker = tracker or NullTracker()
    if not db.claim(
        job.job_id, max_attempts=opts.max_attempts, stale_after_s=opts.stale_after_s, retry_failed=opts.retry_failed
    ):
        return JobOutcome("SKIPPED")
    t0 = time.perf_counter()
    run: RunLog | None = None
    try:
        with _Heartbeat(db, job.job_id, opts.heartbeat_s):
            row = db.get_job(job.job_id)
            run = tracker.job_run(job, parent_run_id, existing=row.mlflow_run_id if row else None, sweep=sweep)
            if run.run_id:
                db.set_job_mlflow_run(job.job_id, run.run_id)
            metrics = run_job(
                job,
                db,
                run=run,
                device=opts.device,
                log_generations=opts.log_generations,
                runs_dir=opts.workspace.runs_dir,
                on_total=on_total,
                on_advance=on_advance,
            )
    except KeyboardInterrupt:
        db.release(job.job_id)
        if run is not None:
            run.end("KILLED")
        raise
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        err = one_line(exc)
        db.finish(job.job_id, FAILED, err)
        if run is not None:
            run.set_tag("copsd.error", err)
            run.end("FAILED")
        return JobOutcome(FAILED, err, time.perf_counter() - t0)
    db.finish(job.job_id, DONE)
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
    if not todo:  # nothing to do: do not even open MLflow
        db.close()
        return summary
    tracker = make_tracker(opts)
    sw = db.get_sweep(name)
    sweep_run = tracker.sweep_run(name, sw.mlflow_run_id if sw else None, description)
    if sweep_run.run_id:
        db.set_sweep_mlflow_run(name, sweep_run.run_id)
    parent = sweep_run.run_id or None
    try:
        if opts.workers <= 1 or len(todo) <= 1:
            _run_sequential(todo, db, opts, tracker, parent, name, summary)
        else:
            _run_parallel(todo, opts, parent, name, summary)
    except KeyboardInterrupt:
        sweep_run.end("KILLED")
        raise SweepInterrupted(
            f"interrupted: {summary.done} job(s) finished, the running one was returned to PENDING; "
            "run the same command again to resume"
        ) from None
    sweep_run.set_tag("copsd.failed_jobs", str(summary.failed))
    sweep_run.end("FINISHED")
    db.close()
    return summary


def _run_sequential(todo, db, opts, tracker, parent, name, summary):
    with _progress(opts.progress) as prog:
        overall = prog.add_task(f"sweep {name}", total=len(todo))
        live = prog.console.is_terminal  # a terminal shows the bars; a log file gets a line per start
        for job in todo:
            if not live:
                prog.console.print(f"start  {job.job_id} {job.label}", highlight=False, soft_wrap=True)
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
            )
            prog.remove_task(inner)
            _count(summary, job, outcome.status, outcome.error)
            if outcome.status != "SKIPPED":
                prog.console.print(outcome.line(job), highlight=False, soft_wrap=True, markup=False)
            prog.advance(overall)


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
    tracker = make_tracker(opts)
    try:
        for js in job_jsons:
            job = JobConfig.model_validate_json(js)
            outcome = execute_one(job, db, opts, tracker=tracker, parent_run_id=parent, sweep=name)
            if outcome.status != "SKIPPED":
                print(f"[worker {worker}] {outcome.line(job)}", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        pass
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
    procs = []
    for w in range(opts.workers):
        # every worker walks the whole list (rotated so they start apart); claims make it exactly-once
        rot = job_jsons[w :: opts.workers] + [js for i, js in enumerate(job_jsons) if i % opts.workers != w]
        p = ctx.Process(
            target=_worker_main, args=(w, w % gpus if gpus else None, rot, opts, parent, name), name=f"copsd-worker-{w}"
        )
        p.start()
        procs.append(p)
    db = ResultsDB(opts.db_url)
    ids = [j.job_id for j in todo]
    before = {j.id: j.attempts for j in db.jobs(ids=ids)}
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
    except KeyboardInterrupt:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
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
