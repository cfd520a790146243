"""One claimed job, start to end: claim it, keep its heartbeat, pull its events (from a child
process, or in-process) through one loop into its recorder, and finish it DONE, FAILED or given
back (PENDING) on a signal. A failing job never stops the sweep."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from copsd.config import JobConfig
from copsd.errors import one_line
from copsd.results.db import LostOwnership, ResultsDB
from copsd.results.schema import DONE, FAILED
from copsd.results.tracking import NullTracker, Tracker
from copsd.run.db_sink import JobRows
from copsd.run.identity import this_process
from copsd.run.job import JobPlan, run_job
from copsd.run.mlflow_sink import JobTracking
from copsd.run.options import RunOptions
from copsd.run.recorder import Display, NotesSaid, Recorder
from copsd.run.signals import Terminated, raise_if_signalled

SKIPPED, LOST = "SKIPPED", "LOST"  # outcomes that are not job statuses: not claimable; claim taken over


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
        """A signal received, or a lost claim, stops the job (called between its events)."""
        raise_if_signalled()
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
    """What trying to run one job came to: `outcome` is DONE or FAILED (the status the job was
    given), SKIPPED (not claimable) or LOST (another worker took the claim over)."""

    outcome: str
    error: str | None = None
    seconds: float = 0.0
    metrics: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics evaluated now

    def line(self, job: JobConfig) -> str:
        """One log line: outcome, id, label, seconds, headline metric (or the error)."""
        head = f"{self.outcome:<6} {job.job_id} {job.label} {self.seconds:.0f}s"
        if self.error:
            return f"{head}: {self.error}"
        if self.metrics:
            step = max(self.metrics)
            acc = self.metrics[step].get("accuracy")
            if acc is not None:
                head += f" accuracy {100 * acc:.1f}% ({job.language}, {job.eval.benchmark}, step {step})"
        elif self.outcome == DONE:
            head += " (results already stored)"
        return head


@dataclass
class JobHooks:
    """What the caller sees of a running job: progress, its start, notes said once per sweep
    process, and checkpoint hooks (tuning's pruner)."""

    display: Display = field(default_factory=Display)
    on_start: Callable[[], None] = lambda: None
    notes: NotesSaid = field(default_factory=NotesSaid)
    on_checkpoint: list[Callable[[int, dict[str, float]], None]] = field(default_factory=list)


def execute_one(
    job: JobConfig,
    db: ResultsDB,
    opts: RunOptions,
    *,
    tracker: Tracker | None = None,
    parent_run_id: str | None = None,
    sweep: str | None = None,
    hooks: JobHooks | None = None,
) -> JobOutcome:
    """Claim and run one job; SKIPPED if it was not claimable."""
    from copsd.run.isolate import run_job_isolated, warm_up

    tracker, hooks = tracker or NullTracker(), hooks or JobHooks()
    owner = db.claim(
        job.job_id,
        max_attempts=opts.max_attempts,
        stale_after_s=opts.stale_after_s,
        retry_failed=opts.retry_failed,
        claimant=this_process(),
    )
    if owner is None:
        return JobOutcome(SKIPPED)
    t0 = time.perf_counter()
    tracking: JobTracking | None = None
    try:
        hooks.on_start()
        if opts.isolate:  # started once a job is ours (a process that claims nothing imports no torch)
            warm_up()  # the fork server imports torch & co. while the MLflow run is set up
        with _Heartbeat(db, job.job_id, owner, opts.heartbeat_s) as beat:
            row = db.get_job(job.job_id)
            tracking = JobTracking.open(tracker, job, parent_run_id, row.mlflow_run_id if row else None, sweep)
            if tracking.run_id:
                db.set_job_mlflow_run(job.job_id, tracking.run_id)
            plan = JobPlan(opts.workspace.runs_dir, frozenset(db.result_keys(job.job_id)), opts.device, opts.preflight)
            recorder = Recorder(
                JobRows(job, db, owner),
                tracking,
                log_generations=opts.log_generations,
                figures_dir=plan.runs_dir / job.job_id / "figures",
                display=hooks.display,
                notes=hooks.notes,
                on_checkpoint=hooks.on_checkpoint,
            )
            # in a child process, a job that dies is FAILED with its cause (copsd.run.isolate)
            stream = run_job_isolated(job, plan, beat.check) if opts.isolate else run_job(job, plan)
            with contextlib.closing(stream):
                for event in stream:
                    beat.check()
                    recorder.record(event)
            beat.check()
            recorder.finish()
    except (KeyboardInterrupt, Terminated):
        # back to PENDING, attempt not counted; a job another worker took over is left to it
        if db.release(job.job_id, owner) and tracking is not None:
            tracking.killed()
        raise
    except LostOwnership as exc:  # another worker runs it now: write nothing, leave its MLflow run alone
        return JobOutcome(LOST, one_line(exc), time.perf_counter() - t0)
    except Exception as exc:  # noqa: BLE001 - any failure is recorded and the sweep goes on
        err = one_line(exc)
        if not db.finish(job.job_id, FAILED, err, owner=owner):
            return JobOutcome(LOST, f"claim taken over (then: {err})", time.perf_counter() - t0)
        if tracking is not None:
            tracking.failed(err)
        return JobOutcome(FAILED, err, time.perf_counter() - t0)
    if not db.finish(job.job_id, DONE, owner=owner):
        return JobOutcome(LOST, "the claim was taken over before the job could be marked DONE")
    assert tracking is not None
    tracking.finished()
    return JobOutcome(DONE, None, time.perf_counter() - t0, recorder.evaluated)
