"""The results DB under concurrent workers, on SQLite and on a real PostgreSQL server: claims
are exclusive across processes, fenced writes hold, and a whole sweep (two workers) plus its
reports runs against PostgreSQL."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta

import pytest
from conftest import run_cli
from sqlalchemy import update

from copsd.config import JobConfig
from copsd.results import DONE, ResultsDB
from copsd.results.schema import JobRow, utcnow

WORKER = """
import random, sys, time
from copsd.results import DONE, ResultsDB
from copsd.results.schema import METRIC_COLUMNS
url, ids, start = sys.argv[1], sys.argv[2].split(","), float(sys.argv[3])
db = ResultsDB(url)
random.shuffle(ids)
while time.time() < start:
    time.sleep(0.005)
mine = []
for job_id in ids:
    owner = db.claim(job_id, max_attempts=1, stale_after_s=600)
    if owner is None:
        continue
    mine.append(job_id)
    db.heartbeat(job_id, owner)
    db.add_result(job_id, benchmark="mgsm", language="swa", split="test", step=0, max_new_tokens=16,
                  n_samples=1, n_problems=1, metrics=dict.fromkeys(METRIC_COLUMNS, 0.5), owner=owner)
    assert db.finish(job_id, DONE, owner=owner)
print(",".join(mine))
"""


def test_concurrent_workers_claim_each_job_exactly_once(db_url):
    import time

    jobs = [
        JobConfig(method="base", model="m/m", language="swa", seed=s, eval={"benchmark": "mgsm"}) for s in range(30)
    ]
    db = ResultsDB(db_url)
    db.register_sweep("race", jobs)
    ids = ",".join(j.job_id for j in jobs)
    start = time.time() + 4  # every worker past its imports before the first claim
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, db_url, ids, str(start)], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    claimed = []
    for p in procs:
        out, _ = p.communicate(timeout=120)
        assert p.returncode == 0
        claimed += [x for x in out.strip().split(",") if x]
    assert sorted(claimed) == sorted(j.job_id for j in jobs)  # each once: none twice, none lost
    rows = db.jobs(sweep="race")
    assert {r.status for r in rows} == {DONE} and {r.attempts for r in rows} == {1}
    assert len(db.results_frame("race")) == 30
    db.close()


def test_heartbeat_and_writes_are_fenced_by_owner(db_url):
    from copsd.results.db import LostOwnership

    j = JobConfig(method="base", model="m/m", language="swa", eval={"benchmark": "mgsm"})
    db = ResultsDB(db_url)
    db.register_sweep("s", [j])
    old = db.claim(j.job_id, max_attempts=3, stale_after_s=600)
    with db.Session.begin() as s:  # its worker paused for 20 minutes: stale, reclaimed
        s.execute(update(JobRow).where(JobRow.id == j.job_id).values(heartbeat_at=utcnow() - timedelta(minutes=20)))
    new = db.claim(j.job_id, max_attempts=3, stale_after_s=600)
    assert new and new != old
    assert not db.heartbeat(j.job_id, old) and db.heartbeat(j.job_id, new)
    with pytest.raises(LostOwnership):
        db.add_result(j.job_id, benchmark="mgsm", language="swa", split="test", step=0, max_new_tokens=16,
                      n_samples=1, n_problems=1, metrics={}, owner=old)  # fmt: skip
    assert not db.finish(j.job_id, DONE, owner=old) and db.finish(j.job_id, DONE, owner=new)
    db.close()


@pytest.mark.slow
def test_a_sweep_with_two_workers_and_its_reports_on_postgres(workdir, small_spec, postgres):
    url = postgres.new_database()
    r = run_cli("sweep", "run", str(small_spec), "--db", url, "--workers", "2", "--no-mlflow", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "4 done, 0 failed" in r.stdout
    db = ResultsDB(url)
    assert [j.status for j in db.jobs(sweep="small")] == [DONE] * 4 and len(db.results_frame("small")) == 4
    db.close()
    r = run_cli("sweep", "status", "--db", url, cwd=workdir)
    assert r.returncode == 0 and "small" in r.stdout, r.stdout + r.stderr
    r = run_cli("report", "table", "--by", "language", "--sweep", "small", "--db", url, cwd=workdir)
    assert r.returncode == 0 and "swa" in r.stdout, r.stdout + r.stderr
    assert not (workdir / "experiments.db").exists()  # nothing fell back to a local SQLite file
