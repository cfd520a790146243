"""Results database access: open (with migrations), register sweeps, claim/finish jobs, store results.

Every state change is one short transaction, so a crash or Ctrl-C at any point leaves the
database consistent; job claims are a single conditional UPDATE, so several worker processes
(or machines sharing a database server) never run the same job twice.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, create_engine, event, false, inspect, or_, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DatabaseError, IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.orm import sessionmaker

from copsd.errors import CopsdError
from copsd.paths import db_url, sqlite_path
from copsd.redact import display_url, scrub
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
    Base,
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


def _v3(engine: Engine) -> None:
    _add_columns("jobs", {"owner": "VARCHAR(255)"})(engine)


def _v4(engine: Engine) -> None:
    _add_columns("results", dict.fromkeys(LANGUAGE_COLUMNS, "FLOAT"))(engine)


# version -> function(engine) that upgrades a database from version-1 to version.
MIGRATIONS: dict[int, Callable[[Engine], None]] = {2: _v2, 3: _v3, 4: _v4}


def _rowcount(result) -> int:
    """Rows an UPDATE matched (CursorResult.rowcount; typed loosely by SQLAlchemy's stubs)."""
    return int(getattr(result, "rowcount", 0))


def _db_error_hint(exc: Exception) -> str:
    text = " ".join(str(getattr(exc, "orig", exc)).split())  # a server's multi-line message on one line
    low = text.lower()
    if "not a database" in low or "malformed" in low:
        return f"{text} (not an SQLite results database, or damaged: point --db/COPSD_DB elsewhere)"
    if "disk is full" in low or "no space left" in low:
        return f"disk full: {text} (free space, or point --db/COPSD_DB elsewhere)"
    if "readonly" in low or "read-only" in low or "unable to open" in low:
        return f"{text} (check that the file and its directory are writable)"
    return text


def _is_race(exc: Exception) -> bool:
    """An error another process starting at the same moment causes, which a retry resolves."""
    text = str(getattr(exc, "orig", exc)).lower()
    return any(w in text for w in ("locked", "already exists", "duplicate", "unique", "busy"))


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


def lock_timeout_s() -> float:
    """How long a command waits for another process's write lock on a SQLite results DB
    (`COPSD_DB_LOCK_TIMEOUT`, seconds; default 60) before it gives up with one line."""
    raw = os.environ.get("COPSD_DB_LOCK_TIMEOUT", "60")
    try:
        value = float(raw)
    except ValueError:
        raise CopsdError(
            f"COPSD_DB_LOCK_TIMEOUT={raw!r} is not a number of seconds; e.g. COPSD_DB_LOCK_TIMEOUT=60"
        ) from None
    if not 0 <= value <= 86_400:
        raise CopsdError(f"COPSD_DB_LOCK_TIMEOUT={raw} is out of range; give 0 to 86400 seconds")
    return value


def _sqlite_pragmas(timeout_s: float, readonly: bool) -> Callable:
    def on_connect(dbapi_conn, _record) -> None:
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(timeout_s * 1000)}")
        if readonly:
            cur.execute("PRAGMA query_only=ON")  # a reading command cannot write, whatever it calls
        else:
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    return on_connect


def locked_message(shown: str, waited_s: float) -> str:
    return (
        f"results database {shown} is locked: another process holds its write lock (waited {waited_s:.0f} s); "
        "let that process finish (copsd sweep status shows RUNNING jobs), or wait longer with COPSD_DB_LOCK_TIMEOUT=SECONDS"
    )


def _wait_for_write_lock(path, shown: str, timeout_s: float) -> None:
    """Before a writing command starts: if another process holds the SQLite write lock, say so
    once, wait up to `timeout_s`, then stop with one line (instead of minutes of silence)."""
    import sqlite3
    import sys

    def try_lock(wait: float) -> bool:
        con = sqlite3.connect(path, timeout=wait, isolation_level=None)
        try:
            con.execute("BEGIN IMMEDIATE")
            con.execute("ROLLBACK")
            return True
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                return False
            return True  # not a lock: the real open reports it
        finally:
            con.close()

    if not path.exists() or try_lock(0.2):
        return
    print(f"copsd: waiting up to {timeout_s:.0f} s for the write lock on {shown} (held by another process; "
          "COPSD_DB_LOCK_TIMEOUT sets the wait)", file=sys.stderr, flush=True)  # fmt: skip
    t0 = time.monotonic()
    if not try_lock(timeout_s):
        raise CopsdError(locked_message(shown, time.monotonic() - t0 + 0.2))


class ResultsDB:
    """The results DB. `readonly=True` (status, plan, reports) never writes: no tables created, no
    migration, `query_only` on SQLite, read-only transactions on PostgreSQL; a SQLite file on a
    read-only disk or in a read-only folder is still read."""

    def __init__(
        self,
        url: str | None = None,
        *,
        migrations: dict[int, Callable[[Engine], None]] | None = None,
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
            _wait_for_write_lock(path, self.shown, timeout)
        try:
            self.engine = self._engine(path, timeout)
        except ModuleNotFoundError as exc:
            hint = " (pip install 'copsd[postgres]' and use postgresql+psycopg://...)" if "postgres" in self.url else ""
            raise CopsdError(f"cannot open database '{self.shown}': no driver {exc.name!r}{hint}") from None
        except CopsdError:
            raise
        except Exception as exc:
            raise CopsdError(f"cannot open database '{self.shown}': {scrub(str(exc))}") from None
        self.Session = sessionmaker(self.engine, expire_on_commit=False)
        if readonly:
            if not self._schema_is_current(schema_version):  # an older DB is upgraded once, as before
                ResultsDB(self.url, migrations=migrations, schema_version=schema_version).close()
        else:
            self._migrate(MIGRATIONS if migrations is None else migrations, schema_version)

    def _engine(self, path, timeout: float) -> Engine:
        if path is None:
            args: dict = {}
            if self.readonly and self.url.startswith("postgresql"):
                args = {"options": "-c default_transaction_read_only=on"}
            return create_engine(self.url, connect_args=args)
        if not self.readonly:
            engine = create_engine(self.url, connect_args={"timeout": timeout})
            event.listen(engine, "connect", _sqlite_pragmas(timeout, readonly=False))
            return engine
        # read-only: the file as SQLite opens it read-only; if even that needs a write (a WAL
        # database without its -shm file on a read-only disk), as an immutable file
        for flags in ("mode=ro", "immutable=1"):
            engine = create_engine(
                f"sqlite:///file:{path.resolve()}?{flags}&uri=true", connect_args={"timeout": timeout}
            )
            event.listen(engine, "connect", _sqlite_pragmas(timeout, readonly=True))
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT count(*) FROM sqlite_master"))
                return engine
            except OperationalError as exc:
                engine.dispose()
                low = str(exc).lower()
                if flags == "immutable=1" or not any(w in low for w in ("unable to open", "readonly", "read-only")):
                    raise CopsdError(f"cannot open database '{self.shown}': {_db_error_hint(exc)}") from None
            except DatabaseError as exc:
                engine.dispose()
                raise CopsdError(f"cannot open database '{self.shown}': {_db_error_hint(exc)}") from None
        raise AssertionError("unreachable")

    def _raise_if_lock_timed_out(self, exc: Exception, t0: float) -> None:
        """A lock that outlasted the busy timeout is another process's, not a start-up race: one
        line naming it, instead of 20 retries of a minute each."""
        text_ = str(getattr(exc, "orig", exc)).lower()
        waited = time.monotonic() - t0
        if ("locked" in text_ or "busy" in text_) and waited >= min(1.0, lock_timeout_s()):
            raise CopsdError(locked_message(self.shown, waited)) from None

    def _schema_is_current(self, target: int) -> bool:
        """Read-only open: the DB's schema is this copsd's (True), older (False), or refused."""
        try:
            with self.Session() as s:
                row = s.get(Meta, "schema_version")
        except (OperationalError, ProgrammingError, DatabaseError) as exc:
            text_ = str(getattr(exc, "orig", exc)).lower()
            if "no such table" in text_ or "does not exist" in text_:
                raise CopsdError(
                    f"database '{self.shown}' holds no copsd results (no 'meta' table); point --db/COPSD_DB at a "
                    "results database, or run a sweep first"
                ) from None
            raise CopsdError(f"cannot open database '{self.shown}': {_db_error_hint(exc)}") from None
        current = int(row.value) if row else None
        if current is None:
            raise CopsdError(f"database '{self.shown}' has no schema version; it is not a copsd results database")
        if current > target:
            raise CopsdError(
                f"database '{self.shown}' has schema v{current}, newer than this copsd (v{target}); upgrade copsd"
            )
        return current >= target

    # ---- schema ----------------------------------------------------------------------------
    def _migrate(self, migrations: dict[int, Callable[[Engine], None]], target: int) -> None:
        """Create tables and run migrations; safe when several processes start on one DB at once
        (a race on table creation, the version row or a column shows up as an error that a retry
        resolves, since every step re-checks what exists)."""
        t0 = time.monotonic()
        for attempt in range(20):
            try:
                self._migrate_once(migrations, target)
                return
            except (OperationalError, IntegrityError, ProgrammingError, DatabaseError) as exc:
                self._raise_if_lock_timed_out(exc, t0)
                if not _is_race(exc) or attempt == 19:
                    raise CopsdError(f"cannot open database '{self.shown}': {_db_error_hint(exc)}") from None
                time.sleep(0.05 * (attempt + 1))

    def _migrate_once(self, migrations: dict[int, Callable[[Engine], None]], target: int) -> None:
        Base.metadata.create_all(self.engine)  # new tables only; never alters existing ones
        with self.Session.begin() as s:
            row = s.get(Meta, "schema_version")
            current = int(row.value) if row else None
            if current is None:
                s.add(Meta(key="schema_version", value=str(target)))
                return
        if current > target:
            raise CopsdError(
                f"database '{self.shown}' has schema v{current}, newer than this copsd (v{target}); upgrade copsd"
            )
        for version in range(current + 1, target + 1):
            migrations[version](self.engine)  # idempotent: re-checks the columns it adds
            with self.Session.begin() as s:
                row = s.get(Meta, "schema_version")
                if row is None or int(row.value) < version:
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
        """Create/refresh the sweep row and add its jobs (new ones PENDING); existing jobs keep their
        state. Idempotent, and safe when several processes register the same sweep at once."""
        jobs = list(jobs)
        t0 = time.monotonic()
        for attempt in range(20):
            try:
                self._register_once(name, jobs, description, spec_path, spec_yaml)
                return
            except (IntegrityError, OperationalError) as exc:
                self._raise_if_lock_timed_out(exc, t0)
                if not _is_race(exc) or attempt == 19:
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
        upsert = _INSERTS[self.engine.dialect.name](ResultRow).values(job_id=job_id, **key._asdict(), **values)
        with self.Session.begin() as s:
            if owner is not None:  # a write first: it takes the write lock, so the check holds until commit
                held = s.execute(update(JobRow).where(self._mine(job_id, owner)).values(heartbeat_at=utcnow()))
                if _rowcount(held) != 1:
                    raise LostOwnership(f"job {job_id} was reclaimed by another worker; this worker stops")
            s.execute(upsert.on_conflict_do_update(index_elements=list(RESULT_UNIQUE), set_=values))

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
