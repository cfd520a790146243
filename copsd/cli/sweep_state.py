"""`copsd sweep status|reset`: the jobs' states in the results DB, shown (status, with one job's
provenance) and set back to PENDING (reset).

Apart from `copsd.cli.sweep` (plan and run: a spec -> jobs -> runs) because these two only read or
repair rows; `copsd.cli.sweep` registers them on the `sweep` group, in the same order as before.
"""

from __future__ import annotations

import json

import typer
from rich.markup import escape

from copsd.cli import submit as submit_cmd
from copsd.cli.common import DB_OPT, ONLY_HELP, console
from copsd.errors import CopsdError


def status(
    spec: str | None = typer.Argument(None, help="spec file or name; default: every sweep in the database"),
    db: str | None = DB_OPT,
    errors: bool = typer.Option(True, "--errors/--no-errors", help="list failed jobs with their last error"),
    job: str | None = typer.Option(
        None, "--job", help="one job id: its status and provenance (versions, commit, device, fingerprints)"
    ),
):
    """Counts of PENDING/RUNNING/DONE/FAILED jobs per sweep, and why jobs failed; `--job ID` shows
    what one job's numbers were made with."""
    from rich.table import Table

    from copsd.cli.common import existing_db_url
    from copsd.results.db import ResultsDB, status_counts
    from copsd.results.schema import FAILED, STATUSES
    from copsd.spec import select

    rdb = ResultsDB(existing_db_url(db), readonly=True)
    try:
        if job:
            _show_job(rdb, job)
            return
        names = [select(spec).spec.name] if spec else [s.name for s in rdb.sweeps()]
        if not names:
            console.print("no sweeps in the database yet; run one with `copsd sweep run SPEC`")
            return
        t = Table(title=f"sweeps in {rdb.shown}")
        for c in ("sweep", "jobs", *STATUSES):
            t.add_column(c)
        failed = []
        for n in names:
            jobs = rdb.jobs(sweep=n)
            counts = status_counts(jobs)
            t.add_row(n, str(len(jobs)), *(str(counts[k]) for k in STATUSES))
            failed += [(n, j) for j in jobs if j.status == FAILED]
        console.print(t)
        submit_cmd.print_running(rdb, names)
        if errors:
            for n, j in failed:
                console.print(
                    f"[red]FAILED[/red] {n} {j.id} {j.method}/{j.language}/seed{j.seed} "
                    f"(attempts {j.attempts}): {escape(j.last_error or '')}",
                    soft_wrap=True,
                )
    finally:
        rdb.close()


def _show_job(rdb, job_id: str) -> None:
    from rich.table import Table

    row = rdb.get_job(job_id)
    if row is None:
        raise CopsdError(f"--job: no job '{job_id}' in {rdb.shown}; `copsd sweep plan SPEC` lists job ids")
    t = Table(title=f"job {row.id}: {row.method}/{row.language}/seed{row.seed}", show_header=False)
    t.add_column("field")
    t.add_column("value")
    for key, value in (
        ("status", row.status),
        ("attempts", str(row.attempts)),
        ("model", row.model),
        ("mlflow run", row.mlflow_run_id or "-"),
        ("last error", row.last_error or "-"),
    ):
        t.add_row(key, escape(value))
    prov = json.loads(row.provenance_json) if row.provenance_json else {}
    for key, value in sorted(prov.items()):
        t.add_row(key, escape(str(value)))
    if not prov:
        t.add_row("provenance", "not recorded yet (the job has not started, or ran before copsd recorded it)")
    console.print(t)


def reset(
    spec: str = typer.Argument(..., help="spec file or embedded spec name"),
    only: list[str] | None = typer.Option(None, "--only", help=ONLY_HELP),
    status: str = typer.Option(
        "FAILED", "--status", help="reset jobs in this status (FAILED, DONE, PENDING or RUNNING)"
    ),
    force: bool = typer.Option(
        False,
        "--force",
        help="RUNNING: reset even jobs whose worker may be alive (another host, or a live process here)",
    ),
    db: str | None = DB_OPT,
):
    """Make jobs PENDING again with a fresh attempt count (results already stored are kept).

    RUNNING jobs are reset only when their worker is a process on this host that no longer
    exists; jobs held by a live process, or by another host (which cannot be checked from here),
    need --force (a worker that is in fact alive then stops at its next heartbeat without writing).
    """
    from copsd.results.db import ResultsDB
    from copsd.results.schema import RUNNING, STATUSES
    from copsd.run.identity import owner_is_dead_here
    from copsd.spec import select

    wanted = status.upper()
    if wanted not in STATUSES:
        raise CopsdError(f"--status must be one of {', '.join(STATUSES)}, not '{status}'")
    sel = select(spec, only)
    rdb = ResultsDB(db)
    kept: list[str] = []
    try:
        rows = [j for j in rdb.jobs(ids=[j.job_id for j in sel.jobs]) if j.status == wanted]
        if wanted == RUNNING and not force:
            kept = [j.id for j in rows if not owner_is_dead_here(j.owner)]
            # only while the dead owner still holds it (a worker may have taken it over meanwhile)
            n = sum(rdb.reset_orphan(j.id, j.owner) for j in rows if j.id not in kept)
        else:
            n = rdb.reset([j.id for j in rows], running=wanted == RUNNING)
    finally:
        rdb.close()
    console.print(f"reset {n} {wanted} job(s) of sweep '{sel.spec.name}' to PENDING")
    if kept:
        console.print(
            f"left {len(kept)} RUNNING job(s) whose worker may be alive ({', '.join(kept)}): "
            "check them, then use --force",
            soft_wrap=True,
        )
