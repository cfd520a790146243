# Over 350 lines on purpose: `ResultsDB` is the one class every row goes through (sweeps, claims, results).
"""Results database access: open (with migrations), register sweeps, claim/finish jobs, store results.

Every state change is one short transaction, so a crash or Ctrl-C at any point leaves the
database consistent; job claims are a single conditional UPDATE, so several worker processes
(or machines sharing a database server) never run the same job twice. Opening the engine (lock
waits, SQLite pragmas, error hints) is in `connection.py`, the schema's upgrades in `migrations.py`.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, and_, false, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import sessionmaker

from copsd.errors import CopsdError
from copsd.paths import db_url, sqlite_path
from copsd.redact import display_url, scrub
from copsd.results.connection import (
    is_race,
    lock_timeout_s,
    locked_message,  # noqa: F401 - importable from here, as before
    open_engine,
    raise_if_lock_timed_out,
    wait_for_write_lock,
)
from copsd.results.migrations import MIGRATIONS, Migration, migrate, schema_is_current
from copsd.results.schema import (
    DONE,
    FAILED,
    GRADER_COLUMNS,
    LANGUAGE_COLUMNS,
    METRIC_COLUMNS,
    PENDING,
    RESULT_UNIQUE,
    RUNNING,
    SCHEMA_VERSION,
    STATUSES,
    JobRow,
    Meta,
    ResultKey,
    ResultRow,
    SweepJob,
    SweepRow,
    utcnow,
)

# each backend's INSERT, whose `on_conflict_do_update` makes `add_result` one upsert statement
_INSERTS: dict[str, Any] = {"sqlite": sqlite.insert, "postgresql": postgresql.insert}


def _rowcount(result) -> int:
    """Rows an UPDATE matched (CursorResult.rowcount; typed loosely by SQLAlchemy's stubs)."""
    return int(getattr(result, "rowcount", 0))


class LostOwnership(CopsdError):
    """This worker's claim on a job was taken over (it was paused past stale_after_s)."""


@dataclass(frozen=True)
class Claimant:
    """Who claims a job: the owner token its fenced writes carry, the host and pid shown by
    `copsd sweep status`, and how to tell that a RUNNING job's owner is gone (its process died on
    this host: the job is taken over at once). `copsd.run.identity.this_process()` makes the one
    runners use; the default is for tools and tests (a random token, no orphan detection)."""

    token: str = field(default_factory=lambda: f"anonymous|{uuid.uuid4().hex[:12]}")
    host: str | None = None
    pid: int | None = None
    orphaned: Callable[[str | None], bool] = lambda _owner: False


class ResultsDB:
    """The results DB. `readonly=True` (status, plan, reports) never writes: no tables created, no
    migration, `query_only` on SQLite, read-only transactions on PostgreSQL; a SQLite file on a
    read-only disk or in a read-only folder is still read."""

    def __init__(
        self,
        url: str | None = None,
        *,
        migrations: dict[int, Migration] | None = None,
        schema_version: int = SCHEMA_VERSION,
        readonly: bool = False,
    ):
        self.url = db_url(url)
        self.shown = display_url(self.url)  # the URL as people may see it (no password)
        self.readonly = readonly
        path = sqlite_path(self.url)
        if path is not None and not path.parent.exists():
            raise CopsdError(f"database directory '{path.parent}' does not exist (from --db/COPSD_DB '{self.shown}')")
        timeout = lock_timeout_s()
        if path is not None and not readonly:
            wait_for_write_lock(path, self.shown, timeout)
        try:
            self.engine = open_engine(self.url, self.shown, path, timeout, readonly)
        except ModuleNotFoundError as exc:
            hint = " (pip install 'copsd[postgres]' and use postgresql+psycopg://...)" if "postgres" in self.url else ""
            raise CopsdError(f"cannot open database '{self.shown}': no driver {exc.name!r}{hint}") from None
        except CopsdError:
            raise
        except Exception as exc:
            raise CopsdError(f"cannot open database '{self.shown}': {scrub(str(exc))}") from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        if readonly:
            if not schema_is_current(
                self.Session, self.shown, schema_version
            ):  # an older DB is upgraded once, as before
                ResultsDB(self.url, migrations=migrations, schema_version=schema_version).close()
        else:
            migrate(
                self.engine, self.Session, self.shown, MIGRATIONS if migrations is None else migrations, schema_version
            )

    # ---- schema (copsd/results/migrations.py) -------------------------------------------------
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
        """Create/refresh the sweep row and add its jobs (new ones PENDING); existing jobs keep their
        state. Idempotent, and safe when several processes register the same sweep at once."""
        jobs = list(jobs)
        t0 = time.monotonic()
        for attempt in range(20):
            try:
                self._register_once(name, jobs, description, spec_path, spec_yaml)
                return
            except (IntegrityError, OperationalError) as exc:
                raise_if_lock_timed_out(exc, t0, self.shown)
                if not is_race(exc) or attempt == 19:
                    raise
                time.sleep(0.05 * (attempt + 1))

    def _register_once(
        self, name: str, jobs: list, description: str, spec_path: str | None, spec_yaml: str | None
    ) -> None:
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

    def set_sweep_mlflow_run(self, name: str, run_id: str, *, only_if_unset: bool = False) -> str:
        """Record the sweep's MLflow run; with `only_if_unset`, the first process to record one wins
        and every process gets the winner's id back (processes starting together share one run)."""
        with self.Session.begin() as s:
            q = update(SweepRow).where(SweepRow.name == name)
            if only_if_unset:
                q = q.where(SweepRow.mlflow_run_id.is_(None))
            s.execute(q.values(mlflow_run_id=run_id))
        row = self.get_sweep(name)
        return (row.mlflow_run_id if row else None) or run_id

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

    def claim(
        self,
        job_id: str,
        *,
        max_attempts: int,
        stale_after_s: float,
        retry_failed: bool = True,
        claimant: Claimant | None = None,
    ) -> str | None:
        """Atomically move a runnable job to RUNNING; returns the new owner token, or None if another
        worker has it or it is finished. A RUNNING job is runnable when its heartbeat is stale, or
        at once when `claimant.orphaned` says its owner is gone (a process on this host that died)."""
        now = utcnow()
        who = claimant or Claimant()
        token = who.token
        with self.Session.begin() as s:
            current = s.get(JobRow, job_id)
            orphan = current is not None and current.status == RUNNING and who.orphaned(current.owner)
            runnable = or_(
                JobRow.status == PENDING,
                and_(JobRow.status == FAILED, JobRow.attempts < max_attempts) if retry_failed else false(),
                and_(JobRow.status == RUNNING, JobRow.heartbeat_at < now - timedelta(seconds=stale_after_s)),
                and_(JobRow.status == RUNNING, JobRow.owner == current.owner) if orphan and current else false(),
            )
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, runnable)
                .values(
                    status=RUNNING,
                    attempts=JobRow.attempts + 1,
                    host=who.host,
                    pid=who.pid,
                    owner=token,
                    started_at=now,
                    heartbeat_at=now,
                    ended_at=None,
                )
            )
            return token if _rowcount(res) == 1 else None

    @staticmethod
    def _mine(job_id: str, owner: str | None):
        """The WHERE clause of a fenced update (owner None = unfenced, for tools and tests)."""
        cond = [JobRow.id == job_id]
        if owner is not None:
            cond += [JobRow.owner == owner, JobRow.status == RUNNING]
        return and_(*cond)

    def heartbeat(self, job_id: str, owner: str | None = None) -> bool:
        """Refresh the heartbeat; False when `owner` no longer holds the job."""
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow).where(self._mine(job_id, owner), JobRow.status == RUNNING).values(heartbeat_at=utcnow())
            )
            return _rowcount(res) == 1

    def finish(self, job_id: str, status: str, error: str | None = None, owner: str | None = None) -> bool:
        """Set DONE/FAILED; with `owner`, only if it still holds the job (False otherwise)."""
        assert status in (DONE, FAILED)
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow)
                .where(self._mine(job_id, owner))
                .values(status=status, ended_at=utcnow(), last_error=error if status == FAILED else None)
            )
            return _rowcount(res) == 1

    def release(self, job_id: str, owner: str | None = None, reason: str = "interrupted") -> bool:
        """Give a job back (PENDING) without counting the interrupted attempt (Ctrl-C, SIGTERM)."""
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow)
                .where(self._mine(job_id, owner), JobRow.status == RUNNING)
                .values(status=PENDING, attempts=JobRow.attempts - 1, ended_at=utcnow(), last_error=reason, owner=None)
            )
            return _rowcount(res) == 1

    def reset_orphan(self, job_id: str, owner: str | None) -> bool:
        """Reset a RUNNING job only if it is still held by `owner` (checked dead by the caller)."""
        with self.Session.begin() as s:
            res = s.execute(
                update(JobRow)
                .where(JobRow.id == job_id, JobRow.status == RUNNING, JobRow.owner == owner)
                .values(status=PENDING, attempts=0, last_error=None, owner=None)
            )
            return _rowcount(res) == 1

    def reset(self, job_ids: Iterable[str], *, running: bool = False) -> int:
        """Make jobs PENDING again with a fresh attempt count (`copsd sweep reset`). RUNNING jobs
        only with `running=True` (the caller has checked their owners are dead, or was forced)."""
        cond: ColumnElement[bool] = JobRow.id.in_(list(job_ids))
        if not running:
            cond = and_(cond, JobRow.status != RUNNING)
        with self.Session.begin() as s:
            res = s.execute(update(JobRow).where(cond).values(status=PENDING, attempts=0, last_error=None, owner=None))
            return _rowcount(res)

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
    def result_keys(self, job_id: str) -> set[ResultKey]:
        """The keys of the job's stored result rows (what a resumed job need not evaluate again)."""
        with self.Session() as s:
            rows = s.execute(
                select(*(getattr(ResultRow, f) for f in ResultKey._fields)).where(ResultRow.job_id == job_id)
            )
            return {ResultKey(*r) for r in rows}

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
        owner: str | None = None,
    ) -> None:
        """Insert or replace the job's row at this `ResultKey` (one statement: the dialect's upsert on
        the unique key); with `owner`, only while it still holds the job (else LostOwnership, nothing written)."""
        key = ResultKey(benchmark, language, split, step, max_new_tokens)
        with self.Session.begin() as s:
            if owner is not None:  # a write first: it takes the write lock, so the check holds until commit
                held = s.execute(update(JobRow).where(self._mine(job_id, owner)).values(heartbeat_at=utcnow()))
                if _rowcount(held) != 1:
                    raise LostOwnership(f"job {job_id} was reclaimed by another worker; this worker stops")
            values = {
                "n_samples": n_samples,
                "n_problems": n_problems,
                "created_at": utcnow(),
                **{col: float(metrics[col]) for col in METRIC_COLUMNS},
                **{
                    col: float(v) if (v := metrics.get(col)) is not None else None
                    for col in (*GRADER_COLUMNS, *LANGUAGE_COLUMNS)
                },
            }
            insert = _INSERTS[self.engine.dialect.name](ResultRow).values(job_id=job_id, **key._asdict(), **values)
            s.execute(insert.on_conflict_do_update(index_elements=list(RESULT_UNIQUE), set_=values))

    def results_frame(
        self,
        sweep: str | None = None,
        *,
        model: str | None = None,
        language: str | None = None,
        job_id: str | None = None,
    ):
        """Results joined with their jobs, as a pandas DataFrame (one row per result); narrowed to
        a sweep, a model, a language or one job when given."""
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
            *[getattr(ResultRow, c) for c in (*METRIC_COLUMNS, *GRADER_COLUMNS, *LANGUAGE_COLUMNS)],
        ]
        q = select(*cols).join(JobRow, JobRow.id == ResultRow.job_id)
        if sweep is not None:
            q = q.join(SweepJob, SweepJob.job_id == JobRow.id).where(SweepJob.sweep_name == sweep)
        if model is not None:
            q = q.where(JobRow.model == model)
        if language is not None:
            q = q.where(ResultRow.language == language)
        if job_id is not None:
            q = q.where(ResultRow.job_id == job_id)
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
    rdb = ResultsDB(url, readonly=True)
    try:
        return {j.id: (j.status, j.attempts, j.last_error) for j in rdb.jobs(ids=ids)}
    finally:
        rdb.close()


def status_counts(jobs: list[JobRow]) -> dict[str, int]:
    return {k: sum(1 for j in jobs if j.status == k) for k in STATUSES}
