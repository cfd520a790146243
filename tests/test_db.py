"""The results database on SQLite and on a real PostgreSQL server (every test runs on both):
schema, job claims, retries, stale heartbeats, results, migrations."""

from __future__ import annotations

import os
import sqlite3
from datetime import timedelta

import pytest
from sqlalchemy import inspect, text, update

from copsd.config import JobConfig
from copsd.errors import CopsdError
from copsd.results import DONE, FAILED, PENDING, RUNNING, ResultsDB
from copsd.results.db import MIGRATIONS
from copsd.results.schema import GRADER_COLUMNS, LANGUAGE_COLUMNS, METRIC_COLUMNS, SCHEMA_VERSION, JobRow, utcnow
from copsd.run.identity import this_process


def _jobs(n=3):
    return [JobConfig(method="base", model="m/m", language="swa", seed=s, eval={"benchmark": "mgsm"}) for s in range(n)]


@pytest.fixture
def db(db_url):
    d = ResultsDB(db_url)
    yield d
    d.close()


def test_schema(db):
    assert db.schema_version() == SCHEMA_VERSION == 4
    insp = inspect(db.engine)
    assert {"sweeps", "jobs", "sweep_jobs", "results", "meta"} <= set(insp.get_table_names())
    cols = {c["name"] for c in insp.get_columns("results")}
    assert set(METRIC_COLUMNS) <= cols and {"step", "max_new_tokens", "split", "benchmark"} <= cols


def test_sqlite_runs_in_wal_mode(tmp_path):
    ResultsDB(f"sqlite:///{tmp_path / 'r.db'}").close()
    con = sqlite3.connect(tmp_path / "r.db")
    assert con.execute("pragma journal_mode").fetchone()[0] == "wal"
    con.close()


def test_register_is_idempotent_and_keeps_state(db):
    jobs = _jobs()
    db.register_sweep("s", jobs)
    assert db.claim(jobs[0].job_id, max_attempts=3, stale_after_s=600)
    db.finish(jobs[0].job_id, DONE)
    db.register_sweep("s", jobs)
    db.register_sweep("other", jobs[:1])  # a job shared by two sweeps
    assert [j.status for j in db.jobs(sweep="s")] == [DONE, PENDING, PENDING]
    assert [j.id for j in db.jobs(sweep="other")] == [jobs[0].job_id]
    assert JobConfig.model_validate_json(db.get_job(jobs[1].job_id).config_json) == jobs[1]


def test_claim_is_exclusive_and_counts_attempts(db):
    j = _jobs(1)[0]
    db.register_sweep("s", [j])
    assert db.claim(j.job_id, max_attempts=3, stale_after_s=600, claimant=this_process())
    assert not db.claim(j.job_id, max_attempts=3, stale_after_s=600)  # RUNNING with a fresh heartbeat
    row = db.get_job(j.job_id)
    assert (row.status, row.attempts, row.host is not None, row.heartbeat_at is not None) == (RUNNING, 1, True, True)
    assert row.pid == os.getpid() and row.owner.split("|")[1] == str(os.getpid())  # this_process's identity


def test_failed_jobs_retry_up_to_cap(db):
    j = _jobs(1)[0]
    db.register_sweep("s", [j])
    for attempt in range(2):
        assert db.claim(j.job_id, max_attempts=2, stale_after_s=600)
        db.finish(j.job_id, FAILED, f"boom {attempt}")
    assert not db.claim(j.job_id, max_attempts=2, stale_after_s=600)
    row = db.get_job(j.job_id)
    assert (row.status, row.attempts, row.last_error) == (FAILED, 2, "boom 1")
    assert not db.claim(j.job_id, max_attempts=5, stale_after_s=600, retry_failed=False)
    assert db.reset([j.job_id]) == 1 and db.get_job(j.job_id).attempts == 0


def test_stale_running_job_is_reclaimed(db):
    j = _jobs(1)[0]
    db.register_sweep("s", [j])
    assert db.claim(j.job_id, max_attempts=3, stale_after_s=600)
    with db.Session.begin() as s:  # a worker that died 20 minutes ago
        s.execute(update(JobRow).where(JobRow.id == j.job_id).values(heartbeat_at=utcnow() - timedelta(minutes=20)))
    assert db.claim(j.job_id, max_attempts=3, stale_after_s=600)
    assert db.get_job(j.job_id).attempts == 2


def test_release_returns_job_without_counting(db):
    j = _jobs(1)[0]
    db.register_sweep("s", [j])
    db.claim(j.job_id, max_attempts=3, stale_after_s=600)
    db.release(j.job_id)
    row = db.get_job(j.job_id)
    assert (row.status, row.attempts) == (PENDING, 0)


def test_results_upsert_and_frame(db):
    j = _jobs(1)[0]
    db.register_sweep("s", [j])
    metrics = {c: 0.5 for c in METRIC_COLUMNS}
    key = dict(benchmark="mgsm", language="swa", split="test", step=0, max_new_tokens=16, n_samples=2, n_problems=3)
    db.add_result(j.job_id, **key, metrics=metrics)
    db.add_result(j.job_id, **key, metrics={**metrics, "accuracy": 0.75})
    df = db.results_frame("s")
    assert len(df) == 1 and df.accuracy.iloc[0] == 0.75 and df.method.iloc[0] == "base"
    assert db.result_keys(j.job_id) == {("mgsm", "swa", "test", 0, 16)}


def test_migrations_run_in_order_on_older_databases(db_url):
    url = db_url
    ResultsDB(url).close()  # made by the current version
    calls = []

    def v5(engine):
        calls.append(5)
        with engine.begin() as c:
            c.execute(text("ALTER TABLE results ADD COLUMN extra_metric FLOAT"))

    def v6(engine):
        calls.append(6)

    newer = ResultsDB(url, migrations={**MIGRATIONS, 5: v5, 6: v6}, schema_version=6)
    assert calls == [5, 6] and newer.schema_version() == 6
    newer.close()
    again = ResultsDB(url, migrations={**MIGRATIONS, 5: v5, 6: v6}, schema_version=6)  # nothing left to do
    assert calls == [5, 6]
    again.close()
    with pytest.raises(CopsdError, match="newer than this copsd"):
        ResultsDB(url)  # this copsd knows only v4


def test_a_version_1_database_is_upgraded_keeping_its_rows(db_url):
    """A DB written before provenance and per-grader columns: the real v2 migration adds them."""
    db = ResultsDB(db_url)
    j = JobConfig(method="base", model="m", language="swa", eval={"benchmark": "mgsm"})
    db.register_sweep("s", [j])
    metrics = dict.fromkeys(METRIC_COLUMNS, 0.5)
    db.add_result(
        j.job_id,
        benchmark="mgsm",
        language="swa",
        split="test",
        step=0,
        max_new_tokens=16,
        n_samples=1,
        n_problems=4,
        metrics=metrics,
    )
    with db.engine.begin() as con:  # turn it back into the v1 layout
        con.execute(text("ALTER TABLE jobs DROP COLUMN provenance_json"))
        con.execute(text("ALTER TABLE jobs DROP COLUMN owner"))
        for col in (*GRADER_COLUMNS, *LANGUAGE_COLUMNS):
            con.execute(text(f"ALTER TABLE results DROP COLUMN {col}"))
        con.execute(text("UPDATE meta SET value='1' WHERE key='schema_version'"))
    db.close()
    up = ResultsDB(db_url)
    assert up.schema_version() == 4 and up.get_job(j.job_id).owner is None
    df = up.results_frame()
    assert df.accuracy.iloc[0] == 0.5 and df.accuracy_paper.isna().all() and df.target_language_rate.isna().all()
    up.set_provenance(j.job_id, {"copsd_version": "x"})
    assert '"copsd_version"' in up.get_job(j.job_id).provenance_json
    up.close()


def test_missing_database_directory_is_a_clear_error(tmp_path):
    with pytest.raises(CopsdError, match="does not exist"):
        ResultsDB(f"sqlite:///{tmp_path / 'no' / 'such' / 'r.db'}")
