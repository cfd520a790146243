"""Running a sweep on a SLURM cluster through submitit: N worker tasks as one job array.

Each task is an ordinary sweep runner (`run_sweep`, as `copsd sweep run SPEC --db URL` runs it)
against the shared results DB: it claims jobs one at a time until none is left, then waits for the
jobs other tasks hold, taking over any that come free (given back by a signal, or stale).

The worker task's side (`SweepWorker`, its DB URL, how SIGUSR2 and SIGTERM give a running job back
and requeue the task) is in `copsd.run.submit_worker`.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from copsd.errors import CopsdError
from copsd.paths import Workspace
from copsd.redact import display_url
from copsd.run.submit_worker import SweepWorker  # importable here too: pickles of earlier submissions name it here

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
        replace(run_opts, db_url=shown),  # pickled to disk: never the password (see submit_worker._task_db_url)
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
