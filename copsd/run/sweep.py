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

import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass, field

from copsd.config import JobConfig
from copsd.results.db import ResultsDB
from copsd.results.schema import DONE, FAILED, PENDING, RUNNING
from copsd.run.execute import SKIPPED, JobHooks, JobOutcome, execute_one
from copsd.run.mlflow_sink import SweepTracking
from copsd.run.options import RunOptions, make_tracker
from copsd.run.recorder import Display, NotesSaid
from copsd.run.signals import SweepInterrupted, Terminated, raise_if_signalled, signals_return_jobs


@dataclass
class SweepSummary:
    ran: int = 0
    done: int = 0
    failed: int = 0
    skipped: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    def count(self, job_id: str, status: str, error: str | None) -> None:
        """One job this run tried, by the status it ended in (DONE, FAILED; else it was not run)."""
        if status in (DONE, FAILED):
            self.ran += 1
        if status == DONE:
            self.done += 1
        elif status == FAILED:
            self.failed += 1
            self.errors[job_id] = error or ""
        else:
            self.skipped += 1


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
    known = sw.mlflow_run_id if sw else None
    sweep_run = SweepTracking(tracker)
    if sweep_run.open(name, known, description) and sweep_run.run_id != known:
        winner = db.set_sweep_mlflow_run(name, sweep_run.run_id, only_if_unset=not known)
        if winner != sweep_run.run_id:  # another process started at the same moment recorded its run first
            sweep_run.yield_to(winner)
    parent = sweep_run.run_id or None
    try:
        with signals_return_jobs():
            if opts.workers <= 1 or len(todo) <= 1:
                _run_sequential(todo, db, opts, tracker, parent, name, summary)
            else:
                _run_parallel(todo, opts, parent, name, summary)
    except (KeyboardInterrupt, Terminated) as exc:
        sweep_run.close("KILLED")
        db.close()
        signum = signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT
        raise SweepInterrupted(
            f"{'terminated (SIGTERM)' if signum == signal.SIGTERM else 'interrupted'}: {summary.done} job(s) "
            "finished, the running one was returned to PENDING; run the same command again to resume",
            signum,
        ) from None
    sweep_run.close("FINISHED", failed_jobs=summary.failed)
    db.close()
    return summary


def _run_sequential(todo, db, opts, tracker, parent, name, summary):
    notes = NotesSaid()
    with _progress(opts.progress) as prog:
        overall = prog.add_task(f"sweep {name}", total=len(todo))
        live = prog.console.is_terminal  # a terminal shows the bars; a log file gets a line per start
        counted: set[str] = set()

        def run_one(job: JobConfig) -> JobOutcome:
            inner = prog.add_task(f"  {job.label}", total=None)
            hooks = JobHooks(
                Display(lambda n: prog.update(inner, total=n), lambda n: prog.advance(inner, n)),
                (lambda: None)
                if live
                else lambda: prog.console.print(f"start  {job.job_id} {job.label}", highlight=False, soft_wrap=True),
                notes,
            )
            outcome = execute_one(job, db, opts, tracker=tracker, parent_run_id=parent, sweep=name, hooks=hooks)
            prog.remove_task(inner)
            if outcome.outcome == SKIPPED:
                return outcome
            summary.count(job.job_id, outcome.outcome, outcome.error)
            prog.console.print(outcome.line(job), highlight=False, soft_wrap=True, markup=False)
            if job.job_id not in counted and outcome.outcome in (DONE, FAILED):
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
            if run_one(job).outcome != SKIPPED:
                progressed = True
        if not progressed:
            if not announced:
                say(f"waiting for {len(waiting)} job(s) that other workers are running", highlight=False)
                announced = True
            time.sleep(min(opts.heartbeat_s, 2.0))


def _worker_main(
    worker: int, gpu: int | None, job_jsons: list[str], opts: RunOptions, parent: str | None, name: str
) -> None:
    """Entry point of a worker process: claim jobs from the shared list until none is left."""
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu)
    db = ResultsDB(opts.db_url)
    ignore_sigint = True  # Ctrl-C reaches the whole process group; the parent passes it on as one SIGTERM
    tracker = make_tracker(opts)
    hooks = JobHooks()  # one per worker: its notes are said once
    try:
        with signals_return_jobs(ignore_sigint=ignore_sigint):
            jobs = [JobConfig.model_validate_json(js) for js in job_jsons]

            def run_one(job: JobConfig) -> JobOutcome:
                outcome = execute_one(job, db, opts, tracker=tracker, parent_run_id=parent, sweep=name, hooks=hooks)
                if outcome.outcome != SKIPPED:
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
        tried = r.attempts > before.get(r.id, 0) and r.status in (DONE, FAILED)
        if tried or r.status in (PENDING, RUNNING):  # others: finished by another worker, not counted
            summary.count(r.id, r.status if tried else SKIPPED, r.last_error)
    db.close()
