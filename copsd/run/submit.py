"""Running a sweep on a SLURM cluster through submitit: N worker tasks as one job array.

Each task is an ordinary sweep runner (`run_sweep`, as `copsd sweep run SPEC --db URL` runs it)
against the shared results DB: it claims jobs one at a time until none is left, then waits for the
jobs other tasks hold, taking over any that come free (given back by a signal, or stale).

Signals (what SLURM does at a time limit, at preemption and at `scancel`):

- SIGUSR2 (`sbatch --signal=USR2@<signal_delay_s>`: sent that long before the time limit, and at
  preemption where the cluster sets `PreemptParameters=send_user_signal`) is submitit's
  "checkpoint and requeue" signal. The task turns it into copsd's SIGTERM path first: the running
  job goes back to PENDING (its adapter checkpoints stay in runs/<job id>/), then submitit's own
  handler requeues the task (`scontrol requeue <array job>_<task>`). The job resumes from its last
  checkpoint in whichever task claims it next (another running task at once, or this one when it
  starts again).
- SIGTERM (`scancel`, preemption without the user signal, the time limit itself) is copsd's
  usual handling: the running job goes back to PENDING and the task exits (143); SLURM requeues the
  task itself where the cluster's PreemptMode is REQUEUE. Other tasks take the job over.

The job processes (`runner.isolate`) ignore SIGUSR2: SLURM signals every process of the step, and
only the task's main process may decide what it means.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copsd.errors import CopsdError
from copsd.paths import Workspace
from copsd.redact import MASK, display_url

EXECUTORS = ("slurm", "local")


@dataclass
class SubmitOptions:
    """Where and how the worker tasks run (never part of a job's identity)."""

    executor: str = "slurm"
    tasks: int = 1
    partition: str | None = None
    gpus_per_task: int = 1
    cpus_per_task: int | None = None
    time_min: int = 240
    array_parallelism: int | None = None
    slurm_args: dict[str, str] = field(default_factory=dict)
    folder: Path | None = None  # submitit's folder (scripts, pickles, logs); default <workspace>/slurm/<sweep>


@dataclass
class SubmittedTask:
    job_id: str  # SLURM "<array job>_<task>" (or submitit's local job id)
    stdout: str
    stderr: str


def parse_slurm_args(items: list[str] | None) -> dict[str, str]:
    """--slurm-arg key=value (repeatable) -> {key: value}."""
    out: dict[str, str] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CopsdError(f"--slurm-arg wants key=value (an sbatch option without '--'), not '{item}'")
        out[key.strip().lstrip("-")] = value.strip()
    return out


class SweepWorker:
    """One worker task: `run_sweep` over the sweep's jobs against the shared results DB.

    Picklable (submitit sends it to the task). `checkpoint()` makes it requeueable by submitit:
    the requeued task runs the same worker again; the DB says what is left and the jobs'
    checkpoints say where each one stands."""

    def __init__(
        self,
        name: str,
        job_jsons: list[str],
        all_job_jsons: list[str],
        run_opts: Any,  # copsd.run.sweep.RunOptions
        description: str = "",
        spec_path: str | None = None,
        spec_yaml: str | None = None,
    ) -> None:
        self.name = name
        self.job_jsons = job_jsons
        self.all_job_jsons = all_job_jsons
        self.run_opts = run_opts
        self.description = description
        self.spec_path = spec_path
        self.spec_yaml = spec_yaml

    def __call__(self, task: int, tasks: int) -> dict[str, Any]:
        from dataclasses import replace

        from copsd.config import JobConfig
        from copsd.run.sweep import SweepInterrupted, run_sweep

        jobs = [JobConfig.model_validate_json(js) for js in self.job_jsons]
        all_jobs = [JobConfig.model_validate_json(js) for js in self.all_job_jsons]
        # every task walks the whole list, rotated so that they start apart; claims make it exactly-once
        order = jobs[task::tasks] + [j for i, j in enumerate(jobs) if i % tasks != task]
        opts = replace(self.run_opts, workers=1, progress=False, db_url=_task_db_url(self.run_opts.db_url))
        label = _task_label()
        print(
            f"copsd worker {label}: sweep '{self.name}', {len(jobs)} job(s), results in {display_url(opts.db_url)}",
            flush=True,
        )
        requeue = _UserSignal()
        with requeue.installed(isolate=opts.isolate):
            try:
                summary = run_sweep(
                    self.name,
                    order,
                    opts,
                    all_jobs=all_jobs,
                    description=self.description,
                    spec_path=self.spec_path,
                    spec_yaml=self.spec_yaml,
                )
            except SweepInterrupted as exc:
                print(f"copsd worker {label}: {exc}", flush=True)
                if requeue.received:  # submitit's handler: checkpoint, `scontrol requeue`, exit
                    requeue.hand_to_submitit()
                raise SystemExit(128 + exc.signum) from None
        out = {"task": label, "done": summary.done, "failed": summary.failed, "skipped": summary.skipped}
        print(f"copsd worker {label}: finished: {out}", flush=True)
        return out

    def checkpoint(self, *args: Any, **kwargs: Any):
        """submitit calls this on its requeue signal: run the same worker again when requeued."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(self, *args, **kwargs)


def _task_db_url(shown: str) -> str:
    """The DB URL a task connects to. A URL with a password was submitted masked (submitit pickles
    the worker into its folder, readable by others); the real one comes from the task's
    environment, which SLURM and submitit's local executor pass on from the submitting shell."""
    if MASK not in shown:
        return shown
    real = os.environ.get("COPSD_DB", "")
    if display_url(real) != shown:
        raise CopsdError(
            f"the results DB {shown} has a password, which reaches a task only through COPSD_DB in its "
            "environment, and this task's COPSD_DB does not match; submit without --export=NONE (sbatch's "
            "default passes the environment on)"
        )
    return real


def _task_label() -> str:
    from copsd.run.identity import scheduler_task

    return scheduler_task() or f"pid {os.getpid()}"


class _UserSignal:
    """SIGUSR2 in a worker task: the running job goes back to PENDING (copsd's SIGTERM path) and
    then submitit's own handler, which was installed before the task started, requeues the task."""

    def __init__(self) -> None:
        self.received = False
        self._submitit_handler: Any = None

    def _handler(self, signum, _frame) -> None:
        if self.received:
            return
        self.received = True
        print(f"copsd worker {_task_label()}: SIGUSR2 (time limit or preemption): giving the job back", flush=True)
        os.kill(os.getpid(), signal.SIGTERM)  # copsd's handler: Terminated -> job PENDING -> SweepInterrupted

    def installed(self, isolate: bool):
        import contextlib

        @contextlib.contextmanager
        def cm():
            self._submitit_handler = signal.getsignal(signal.SIGUSR2)
            if isolate:
                # job processes are forked by a fork server started now, with SIGUSR2 ignored: the
                # disposition survives its exec and forks, so SLURM's signal to the whole step
                # does not kill a job before the task has given it back
                from copsd.run.isolate import warm_up

                signal.signal(signal.SIGUSR2, signal.SIG_IGN)
                warm_up()
            signal.signal(signal.SIGUSR2, self._handler)
            try:
                yield
            finally:
                signal.signal(signal.SIGUSR2, self._submitit_handler or signal.SIG_DFL)

        return cm()

    def hand_to_submitit(self) -> None:
        handler = self._submitit_handler
        if callable(handler):
            handler(signal.SIGUSR2, None)  # checkpoint() -> scontrol requeue -> sys.exit


def check_submit(opts: SubmitOptions) -> None:
    """The submit options, the executor and (for slurm) the scheduler's commands, checked before
    the sweep is registered or any folder made: a mistake here writes nothing."""
    import shutil

    if opts.executor not in EXECUTORS:
        raise CopsdError(f"--executor must be one of {', '.join(EXECUTORS)}, not '{opts.executor}'")
    if opts.tasks < 1:
        raise CopsdError("--tasks must be at least 1")
    if opts.executor != "slurm" and (opts.slurm_args or opts.partition):
        raise CopsdError("--partition and --slurm-arg apply to --executor slurm only")
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise CopsdError("copsd sweep submit needs submitit: pip install 'copsd[slurm]'") from None
    if opts.executor == "slurm":
        missing = [c for c in ("sbatch", "srun") if shutil.which(c) is None]
        if missing:
            raise CopsdError(
                f"no SLURM on this machine ({' and '.join(missing)} not on PATH); run this on a SLURM login node, "
                "or use --executor local to run the worker tasks here"
            )


@contextlib.contextmanager
def _db_url_in_environment(url: str | None):
    """COPSD_DB set to `url` while the tasks are submitted (they inherit it), then restored."""
    if url is None:
        yield
        return
    old = os.environ.get("COPSD_DB")
    os.environ["COPSD_DB"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("COPSD_DB", None)
        else:
            os.environ["COPSD_DB"] = old


def make_executor(opts: SubmitOptions, folder: Path, name: str):
    """A submitit executor for `opts` (submitit is the `slurm` extra: pip install 'copsd[slurm]')."""
    try:
        import submitit
    except ImportError:
        raise CopsdError("copsd sweep submit needs submitit: pip install 'copsd[slurm]'") from None
    if opts.executor not in EXECUTORS:
        raise CopsdError(f"--executor must be one of {', '.join(EXECUTORS)}, not '{opts.executor}'")
    try:
        ex = submitit.AutoExecutor(folder=folder, cluster=opts.executor)
    except RuntimeError as exc:  # "Could not detect srun": SLURM's commands are there but not working
        raise CopsdError(
            f"--executor {opts.executor}: submitit cannot use it here ({str(exc).splitlines()[0]}); "
            "use --executor local, or run on a SLURM login node"
        ) from None
    params: dict[str, Any] = {
        "name": f"copsd-{name}",
        "timeout_min": opts.time_min,
        "tasks_per_node": 1,
        "nodes": 1,
    }
    if opts.cpus_per_task:
        params["cpus_per_task"] = opts.cpus_per_task
    if opts.executor == "slurm":
        valid = submitit.SlurmExecutor._valid_parameters()
        extra: dict[str, Any] = {}
        for key, value in opts.slurm_args.items():
            k = key.replace("-", "_")
            typed: Any = int(value) if value.isdigit() else value
            if k in valid and k not in ("additional_parameters", "array_parallelism"):
                params[f"slurm_{k}"] = typed
            else:
                extra[key] = value
        if opts.partition:
            params["slurm_partition"] = opts.partition
        if opts.gpus_per_task:
            params["slurm_gpus_per_task"] = opts.gpus_per_task
        params["slurm_array_parallelism"] = opts.array_parallelism or opts.tasks
        if extra:
            params["slurm_additional_parameters"] = extra
    else:
        if opts.slurm_args or opts.partition:
            raise CopsdError("--partition and --slurm-arg apply to --executor slurm only")
        params["gpus_per_node"] = opts.gpus_per_task
    ex.update_parameters(**params)
    return ex


def submit_sweep(
    name: str,
    jobs: list,
    all_jobs: list,
    run_opts: Any,
    opts: SubmitOptions,
    *,
    description: str = "",
    spec_path: str | None = None,
    spec_yaml: str | None = None,
) -> list[SubmittedTask]:
    """Register the sweep in the results DB, then submit `opts.tasks` worker tasks (one job array).
    Each task's log paths are appended to <workspace>/slurm/submissions.jsonl (and returned)."""
    from dataclasses import replace

    from copsd.paths import sqlite_path
    from copsd.results.db import ResultsDB

    path = sqlite_path(run_opts.db_url)
    if path is not None and not path.is_absolute():  # the tasks may start in another directory
        run_opts = replace(run_opts, db_url=f"sqlite:///{path.resolve()}")
    db_url = run_opts.db_url
    check_submit(opts)  # every option checked before anything is written
    db = ResultsDB(db_url)  # registered once here, so that the tasks start on a known sweep
    try:
        db.register_sweep(name, all_jobs, description=description, spec_path=spec_path, spec_yaml=spec_yaml)
    finally:
        db.close()
    ws = Workspace(db_url)
    folder = opts.folder or ws.root / "slurm" / name
    ex = make_executor(opts, folder, name)
    shown = display_url(db_url)
    worker = SweepWorker(
        name,
        [j.model_dump_json() for j in jobs],
        [j.model_dump_json() for j in all_jobs],
        replace(run_opts, db_url=shown),  # pickled to disk: never the password (see _task_db_url)
        description=description,
        spec_path=spec_path,
        spec_yaml=spec_yaml,
    )
    with _db_url_in_environment(db_url if shown != db_url else None):
        submitted = ex.map_array(worker, list(range(opts.tasks)), [opts.tasks] * opts.tasks)
    tasks = [SubmittedTask(str(j.job_id), str(j.paths.stdout), str(j.paths.stderr)) for j in submitted]
    record = ws.root / "slurm" / "submissions.jsonl"
    record.parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    with record.open("a", encoding="utf-8") as fh:
        for t in tasks:
            fh.write(
                json.dumps(
                    {
                        "sweep": name,
                        "executor": opts.executor,
                        "job": t.job_id,
                        "stdout": t.stdout,
                        "stderr": t.stderr,
                        "submitted": stamp,
                    }
                )
                + "\n"
            )
    return tasks


def task_logs(db_url: str) -> dict[str, dict[str, str]]:
    """SLURM job id ("<array>_<task>") -> its recorded log paths (from submissions.jsonl)."""
    record = Workspace(db_url).root / "slurm" / "submissions.jsonl"
    out: dict[str, dict[str, str]] = {}
    if record.exists():
        for line in record.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
            except ValueError:
                continue
            out[str(d.get("job"))] = d
    return out


def holder(host: str | None) -> str | None:
    """The submitit job id in a claim's host label ("node17 slurm:123_4" -> "123_4")."""
    for tag in (" slurm:", " submitit-local:"):
        if host and tag in host:
            return host.rsplit(tag, 1)[1]
    return None
