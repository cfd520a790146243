"""Results database access: open (with migrations), register sweeps, claim/finish jobs, store results.

Every state change is one short transaction, so a crash or Ctrl-C at any point leaves the
database consistent; job claims are a single conditional UPDATE, so several worker processes
(or machines sharing a database server) never run the same job twice.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable
from datetime import timedelta

from sqlalchemy import Engine, and_, create_engine, event, false, inspect, or_, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import sessionmaker

from copsd.errors import CopsdError
from copsd.paths import db_url, sqlite_path
from copsd.results.schema import (
    DONE,
    FAILED,
    GRADER_COLUMNS,
    METRIC_COLUMNS,
    PENDING,
    RUNNING,
    SCHEMA_VERSION,
    STATUSES,
    Base,
    JobRow,
    Meta,
    ResultRow,
    SweepJob,
    SweepRow,
    utcnow,
)


def _add_columns(table: str, columns: dict[str, str]) -> Callable[[Engine], None]:
    """A migration that adds nullable columns (skipping any a half-finished earlier run added)."""

    def migrate(engine: Engine) -> None:
        have = {c["name"] for c in inspect(engine).get_columns(table)}
        with engine.begin() as conn:
            for name, sql_type in columns.items():
                if name not in have:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))

    return migrate


def _v2(engine: Engine) -> None:
    _add_columns("jobs", {"provenance_json": "TEXT"})(engine)
    _add_columns("results", dict.fromkeys(GRADER_COLUMNS, "FLOAT"))(engine)


# version -> function(engine) that upgrades a database from version-1 to version.
MIGRATIONS: dict[int, Callable[[Engine], None]] = {2: _v2}


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


class ResultsDB:
    def __init__(
        self,
        url: str | None = None,
        *,
        migrations: dict[int, Callable[[Engine], None]] | None = None,
        schema_version: int = SCHEMA_VERSION,
    ):
        self.url = db_url(url)
        path = sqlite_path(self.url)
        if path is not None and not path.parent.exists():
            raise CopsdError(f"database directory '{path.parent}' does not exist (from --db/COPSD_DB '{self.url}')")
        try:
            self.engine = create_engine(self.url, connect_args={"timeout": 30} if path is not None else {})
        except Exception as exc:
            raise CopsdError(f"cannot open database '{self.url}': {exc}") from None
        if self.url.startswith("sqlite"):
            event.listen(self.engine, "connect", _sqlite_pragmas)
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        self._migrate(MIGRATIONS if migrations is None else migrations, schema_version)

    # ---- schema ----------------------------------------------------------------------------
    def _migrate(self, migrations: dict[int, Callable[[Engine], None]], target: int) -> None:
        try:
            Base.metadata.create_all(self.engine)  # new tables only; never alters existing ones
            with self.Session.begin() as s:
                row = s.get(Meta, "schema_version")
                current = int(row.value) if row else None
                if current is None:
                    s.add(Meta(key="schema_version", value=str(target)))
                    return
        except OperationalError as exc:
            raise CopsdError(f"cannot open database '{self.url}': {exc.orig}") from None
        if current > target:
            raise CopsdError(
                f"database '{self.url}' has schema v{current}, newer than this copsd (v{target}); upgrade copsd"
            )
        for version in range(current + 1, target + 1):
            migrations[version](self.engine)
            with self.Session.begin() as s:
                s.merge(Meta(key="schema_version", value=str(version)))

    def schema_version(self) -> int:
        with self.Session() as s:
            return int(s.get(Meta, "schema_version").value)

    # ---- sweeps and jobs ---------------------------------------------------------------------
    def register_sweep(
        self,
        name: str,
        jobs: Iterable,
        *,
        description: str = "",
        spec_path: str | None = None,
        spec_yaml: str | None = None,
    ) -> None:
        """Create/refresh the sweep row and add its jobs (new ones PENDING); existing jobs keep their state."""
        jobs = list(jobs)
        with self.Session.begin() as s:
            sw = s.get(SweepRow, name)
            if sw is None:
                sw = SweepRow(name=name)
                s.add(sw)
            sw.description, sw.spec_path, sw.spec_yaml = description, spec_path, spec_yaml
            existing = set(s.scalars(select(JobRow.id).where(JobRow.id.in_([j.job_id for j in jobs]))))
            linked = set(s.scalars(select(SweepJob.job_id).where(SweepJob.sweep_name == name)))
            for pos, j in enumerate(jobs):
                if j.job_id not in existing:
                    s.add(
                        JobRow(
                            id=j.job_id,
                            status=PENDING,
                            method=j.method,
                            model=j.model,
                            language=j.language,
                            seed=j.seed,
                            config_json=j.model_dump_json(),
                            attempts=0,
                        )
                    )
                    existing.add(j.job_id)
                if j.job_id not in linked:
                    s.add(SweepJob(sweep_name=name, job_id=j.job_id, position=pos))
                    linked.add(j.job_id)

    def get_sweep(self, name: str) -> SweepRow | None:
        with self.Session() as s:
            return s.get(SweepRow, name)

    def sweeps(self) -> list[SweepRow]:
        with self.Session() as s:
            return list(s.scalars(select(SweepRow).order_by(SweepRow.created_at)))

    def set_sweep_mlflow_run(self, name: str, run_id: str) -> None:
        with self.Session.begin() as s:
            s.get(SweepRow, name).mlflow_run_id = run_id

    def get_job(self, job_id: str) -> JobRow | None:
        with self.Session() as s:
            return s.get(JobRow, job_id)

    def jobs(self, ids: Iterable[str] | None = None, sweep: str | None = None) -> list[JobRow]:
        with self.Session() as s:
            q = select(JobRow)
            if sweep is not None:
                q = (
                    q.join(SweepJob, SweepJob.job_id == JobRow.id)
                    .where(SweepJob.sweep_name == sweep)
                    .order_by(SweepJob.position)
                )
            if ids is not None:
                q = q.where(JobRow.id.in_(list(ids)))
            return list(s.scalars(q))

    def claim(self, job_id: str, *, max_attempts: int, stale_after_s: float, retry_failed: bool = True) -> bool:
        """Atomically move a runnable job to RUNNING; False if another worker has it or it is finished."""
        now = utcnow()
        runnable = or_(
            JobRow.status == PENDING,
            and_(JobRow.status == FAILED, JobRow.attempts < max_attempts) if retry_failed else false(),
            and_(JobRow.status == RUNNING, JobRow.heartbeat_at < now - timedelta(seconds=stale_after_s)),
        )
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, runnable)
                .values(
                    status=RUNNING,
                    attempts=JobRow.attempts + 1,
                    host=socket.gethostname(),
                    pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    ended_at=None,
                )
            )
            return res.rowcount == 1

    def heartbeat(self, job_id: str) -> None:
        with self.Session.begin() as s:
            s.execute(update(JobRow).where(JobRow.id == job_id, JobRow.status == RUNNING).values(heartbeat_at=utcnow()))

    def finish(self, job_id: str, status: str, error: str | None = None) -> None:
        assert status in (DONE, FAILED)
        with self.Session.begin() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id)
                .values(status=status, ended_at=utcnow(), last_error=error if status == FAILED else None)
            )

    def release(self, job_id: str) -> None:
        """Ctrl-C: give the job back (PENDING) without counting the interrupted attempt."""
        with self.Session.begin() as s:
            s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == RUNNING)
                .values(status=PENDING, attempts=JobRow.attempts - 1, ended_at=utcnow(), last_error="interrupted")
            )

    def reset(self, job_ids: Iterable[str]) -> int:
        """Make jobs PENDING again with a fresh attempt count (`copsd sweep reset`)."""
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id.in_(list(job_ids)), JobRow.status != RUNNING)
                .values(status=PENDING, attempts=0, last_error=None)
            )
            return res.rowcount

    def set_provenance(self, job_id: str, provenance: dict) -> None:
        import json

        with self.Session.begin() as s:
            s.execute(
                update(JobRow).where(JobRow.id == job_id).values(provenance_json=json.dumps(provenance, sort_keys=True))
            )

    def set_job_mlflow_run(self, job_id: str, run_id: str) -> None:
        with self.Session.begin() as s:
            s.get(JobRow, job_id).mlflow_run_id = run_id

    # ---- results -------------------------------------------------------------------------------
    def result_keys(self, job_id: str) -> set[tuple]:
        with self.Session() as s:
            rows = s.execute(
                select(
                    ResultRow.benchmark, ResultRow.language, ResultRow.split, ResultRow.step, ResultRow.max_new_tokens
                ).where(ResultRow.job_id == job_id)
            )
            return {tuple(r) for r in rows}

    def add_result(
        self,
        job_id: str,
        *,
        benchmark: str,
        language: str,
        split: str,
        step: int,
        max_new_tokens: int,
        n_samples: int,
        n_problems: int,
        metrics: dict[str, float],
    ) -> None:
        """Insert or replace the row for this (job, benchmark, language, split, step, budget)."""
        with self.Session.begin() as s:
            row = s.scalars(
                select(ResultRow).where(
                    ResultRow.job_id == job_id,
                    ResultRow.benchmark == benchmark,
                    ResultRow.language == language,
                    ResultRow.split == split,
                    ResultRow.step == step,
                    ResultRow.max_new_tokens == max_new_tokens,
                )
            ).first()
            if row is None:
                row = ResultRow(
                    job_id=job_id,
                    benchmark=benchmark,
                    language=language,
                    split=split,
                    step=step,
                    max_new_tokens=max_new_tokens,
                )
                s.add(row)
            row.n_samples, row.n_problems, row.created_at = n_samples, n_problems, utcnow()
            for col in METRIC_COLUMNS:
                setattr(row, col, float(metrics[col]))
            for col in GRADER_COLUMNS:
                setattr(row, col, float(metrics[col]) if col in metrics else None)

    def results_frame(self, sweep: str | None = None):
        """Results joined with their jobs, as a pandas DataFrame (one row per result)."""
        import pandas as pd

        cols = [
            ResultRow.job_id,
            JobRow.method,
            JobRow.model,
            JobRow.seed,
            JobRow.status,
            ResultRow.benchmark,
            ResultRow.language,
            ResultRow.split,
            ResultRow.step,
            ResultRow.max_new_tokens,
            ResultRow.n_samples,
            ResultRow.n_problems,
            *[getattr(ResultRow, c) for c in (*METRIC_COLUMNS, *GRADER_COLUMNS)],
        ]
        q = select(*cols).join(JobRow, JobRow.id == ResultRow.job_id)
        if sweep is not None:
            q = q.join(SweepJob, SweepJob.job_id == JobRow.id).where(SweepJob.sweep_name == sweep)
        with self.engine.connect() as conn:
            return pd.read_sql(q, conn)

    def close(self) -> None:
        self.engine.dispose()


def open_db(url: str | None = None) -> ResultsDB:
    return ResultsDB(url)


def existing_statuses(url: str | None, ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    """{job id: (status, attempts, last error)} without creating the database (for dry runs)."""
    url = db_url(url)
    p = sqlite_path(url)
    if p is not None and not p.exists():
        return {}
    rdb = ResultsDB(url)
    try:
        return {j.id: (j.status, j.attempts, j.last_error) for j in rdb.jobs(ids=ids)}
    finally:
        rdb.close()


def status_counts(jobs: list[JobRow]) -> dict[str, int]:
    return {k: sum(1 for j in jobs if j.status == k) for k in STATUSES}
