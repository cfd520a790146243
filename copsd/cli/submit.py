"""`copsd sweep submit`: a sweep's worker tasks on SLURM (or locally) through submitit; and the
RUNNING-jobs lines `copsd sweep status` prints (which host / SLURM task holds each job)."""

from __future__ import annotations

import typer
from rich.markup import escape

from copsd.cli.common import DB_OPT, ONLY_HELP, console


def submit(
    spec: str = typer.Argument(..., help="spec file or embedded spec name"),
    executor: str = typer.Option("slurm", "--executor", help="slurm (sbatch job array) or local (processes here)"),
    tasks: int = typer.Option(1, "--tasks", "-n", min=1, help="worker tasks (array tasks): each claims jobs"),
    partition: str | None = typer.Option(None, "--partition", "-p", help="SLURM partition"),
    gpus_per_task: int = typer.Option(1, "--gpus-per-task", min=0, help="GPUs per task (0: CPU-only)"),
    cpus_per_task: int | None = typer.Option(None, "--cpus-per-task", min=1, help="CPUs per task"),
    time_min: int = typer.Option(
        240, "--time", min=1, help="time limit per task, minutes; a task that reaches it is requeued"
    ),
    array_parallelism: int | None = typer.Option(
        None, "--array-parallelism", min=1, help="at most this many tasks at once (default: all)"
    ),
    slurm_arg: list[str] | None = typer.Option(
        None,
        "--slurm-arg",
        help="key=value: an sbatch option (e.g. account=proj, qos=high, mem=32G, signal_delay_s=120); repeatable",
    ),
    db: str | None = DB_OPT,
    only: list[str] | None = typer.Option(None, "--only", help="submit only matching jobs: " + ONLY_HELP),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, ...; default: cuda if available"),
    max_attempts: int | None = typer.Option(None, "--max-attempts", help="spec: runner.max_attempts"),
    no_retry: bool = typer.Option(False, "--no-retry", help="leave FAILED jobs alone"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="do not log to MLflow"),
    isolate: bool | None = typer.Option(None, "--isolate/--no-isolate", help="each job in its own child process"),
):
    """Submit a sweep's worker tasks (one job array): each runs `copsd sweep run` against the
    shared results DB (use PostgreSQL across nodes), claiming jobs until none is left. A task
    signalled before its time limit or preempted gives its job back (PENDING) and is requeued."""
    from copsd.paths import db_url
    from copsd.run.submit import SubmitOptions, parse_slurm_args, submit_sweep
    from copsd.run.sweep import RunOptions
    from copsd.spec import select

    sel = select(spec, only)
    run_opts = RunOptions.from_spec(
        sel.spec,
        db_url(db),
        device=device,
        max_attempts=max_attempts,
        retry_failed=not no_retry,
        mlflow=not no_mlflow,
        isolate=isolate,
    )
    sub = SubmitOptions(
        executor=executor,
        tasks=tasks,
        partition=partition,
        gpus_per_task=gpus_per_task,
        cpus_per_task=cpus_per_task,
        time_min=time_min,
        array_parallelism=array_parallelism,
        slurm_args=parse_slurm_args(slurm_arg),
    )
    submitted = submit_sweep(
        sel.spec.name,
        sel.jobs,
        sel.all_jobs,
        run_opts,
        sub,
        description=sel.spec.description,
        spec_path=str(sel.path.resolve()),
        spec_yaml=sel.path.read_text(encoding="utf-8"),
    )
    console.print(
        f"sweep '{sel.spec.name}': {len(sel.jobs)} job(s), {len(submitted)} {executor} task(s) submitted",
        highlight=False,
    )
    for t in submitted:
        console.print(f"  task {t.job_id}: log {t.stdout} (stderr {t.stderr})", highlight=False, soft_wrap=True)
    console.print("follow with `copsd sweep status`", highlight=False)


def print_running(rdb, names: list[str]) -> None:
    """One line per RUNNING job: where it runs (host, SLURM task) and its task's log."""
    from datetime import datetime, timezone

    from copsd.results.schema import RUNNING
    from copsd.run.submit import holder, task_logs

    logs: dict | None = None
    for n in names:
        for j in rdb.jobs(sweep=n):
            if j.status != RUNNING:
                continue
            where = j.host or "?"
            task = holder(j.host)
            if task:
                logs = task_logs(rdb.url) if logs is None else logs
                if task in logs:
                    where += f" log {logs[task].get('stdout')}"
            beat = ""
            if j.heartbeat_at is not None:
                hb = j.heartbeat_at if j.heartbeat_at.tzinfo else j.heartbeat_at.replace(tzinfo=timezone.utc)
                beat = f", heartbeat {(datetime.now(timezone.utc) - hb).total_seconds():.0f}s ago"
            console.print(
                f"RUNNING {n} {j.id} {j.method}/{j.language}/seed{j.seed} on {escape(where)} (pid {j.pid}{beat})",
                soft_wrap=True,
                highlight=False,
            )
