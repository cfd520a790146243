"""Crash safety (issue 12): claims with owners and fenced writes, orphans, signals, atomic
checkpoints, concurrent starts, resets of RUNNING jobs, MLflow without repeated steps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta

import pytest
from conftest import ROOT, SMALL_SPEC, run_cli
from sqlalchemy import update

from copsd.config import JobConfig
from copsd.results import DONE, PENDING, RUNNING, ResultsDB
from copsd.results.db import LostOwnership
from copsd.results.schema import METRIC_COLUMNS, JobRow, utcnow
from copsd.run.identity import host_namespace as _host
from copsd.run.identity import owner_is_dead_here, this_process
from copsd.run.identity import process_start as _process_start

KEY = dict(benchmark="mgsm", language="swa", split="test", step=0, max_new_tokens=16, n_samples=1, n_problems=1)


@pytest.fixture
def db(db_url):  # on SQLite and on a real PostgreSQL server
    d = ResultsDB(db_url)
    yield d
    d.close()


def _job(seed=0):
    return JobConfig(method="base", model="m/m", language="swa", seed=seed, eval={"benchmark": "mgsm"})


def _age_heartbeat(db, job_id, seconds=3600):
    with db.Session.begin() as s:
        s.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_reclaimed_jobs_old_worker_can_write_nothing(db):
    j = _job()
    db.register_sweep("s", [j])
    first = db.claim(j.job_id, max_attempts=3, stale_after_s=60)
    assert first and db.heartbeat(j.job_id, first)
    _age_heartbeat(db, j.job_id)  # the first worker was paused past stale_after_s
    second = db.claim(j.job_id, max_attempts=3, stale_after_s=60)
    assert second and second != first
    assert not db.heartbeat(j.job_id, first)  # the old worker learns it lost the job
    with pytest.raises(LostOwnership):
        db.add_result(j.job_id, **KEY, metrics=dict.fromkeys(METRIC_COLUMNS, 1.0), owner=first)
    assert not db.finish(j.job_id, DONE, owner=first) and not db.release(j.job_id, first)
    assert db.result_keys(j.job_id) == set() and db.get_job(j.job_id).status == RUNNING
    db.add_result(j.job_id, **KEY, metrics=dict.fromkeys(METRIC_COLUMNS, 0.5), owner=second)
    assert db.finish(j.job_id, DONE, owner=second) and db.get_job(j.job_id).attempts == 2


def test_an_orphan_on_this_host_is_reclaimed_at_once_a_live_owner_is_not(db):
    j, k = _job(0), _job(1)
    db.register_sweep("s", [j, k])
    host = _host()
    with db.Session.begin() as s:  # j: RUNNING with a fresh heartbeat, owned by a process that exited
        s.execute(
            update(JobRow)
            .where(JobRow.id == j.job_id)
            .values(status=RUNNING, attempts=1, heartbeat_at=utcnow(), owner=f"{host}|{_dead_pid()}|1|x")
        )
        me = f"{host}|{os.getpid()}|{_process_start(os.getpid())}|y"
        s.execute(
            update(JobRow)
            .where(JobRow.id == k.job_id)
            .values(status=RUNNING, attempts=1, heartbeat_at=utcnow(), owner=me)
        )
    assert owner_is_dead_here(db.get_job(j.job_id).owner) and not owner_is_dead_here(me)
    assert not owner_is_dead_here("otherhost|1|1|z")  # another host cannot be checked: wait out the heartbeat
    assert db.claim(j.job_id, max_attempts=3, stale_after_s=600, claimant=this_process())
    assert db.claim(k.job_id, max_attempts=3, stale_after_s=600, claimant=this_process()) is None
    assert db.get_job(j.job_id).pid == os.getpid()  # the claimant's process, shown by sweep status
    # a reused pid (same pid, another start time) is not the owner
    assert owner_is_dead_here(f"{host}|{os.getpid()}|{int(_process_start(os.getpid())) + 1}|w")


def test_checkpoint_leftovers_are_removed_and_never_parsed_as_steps(tmp_path):
    from copsd.training.adapters import remove_leftovers, saved_steps

    ck = tmp_path / "run" / "checkpoints"
    good = ck / "step_00002"
    good.mkdir(parents=True)
    (good / "trainer_state.pt").write_bytes(b"x")
    (good / "adapter_model.safetensors").write_bytes(b"x")
    partial = ck / "step_00004.tmp-1234"  # killed mid-write
    partial.mkdir()
    (partial / "trainer_state.pt").write_bytes(b"x")
    (partial / "adapter_model.safetensors").write_bytes(b"")
    old_style = ck / "step_00006.tmp"
    old_style.mkdir()
    (old_style / "trainer_state.pt").write_bytes(b"x")
    incomplete = ck / "step_00008"  # no trainer state: not a checkpoint
    incomplete.mkdir()
    assert saved_steps(tmp_path / "run") == [2]
    assert sorted(remove_leftovers(tmp_path / "run")) == ["step_00004.tmp-1234", "step_00006.tmp", "step_00008"]
    assert [p.name for p in ck.iterdir()] == ["step_00002"]


def _long_spec(workdir, steps=200):
    spec = workdir / "long.yaml"
    spec.write_text(
        SMALL_SPEC.replace("name: small", "name: long")
        .replace("limit: 3", f"limit: {steps}")
        .replace("max_new_tokens: 16", "max_new_tokens: 64")
        .replace("seed: [0, 1]", "seed: [0]")
        .replace("language: [swa, eng]", "language: [swa]")
    )
    return spec


def _start(workdir, spec, *extra):
    return subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "sweep", "run", str(spec), *extra],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _rows(path, q):
    con = sqlite3.connect(path)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def _wait_running(db, proc, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            if db.exists() and _rows(db, "select count(*) from jobs where status='RUNNING'") == [(1,)]:
                return
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    proc.kill()
    pytest.fail("the job was never seen RUNNING")


@pytest.mark.slow
def test_sigterm_returns_the_job_marks_mlflow_killed_and_a_rerun_finishes(workdir):
    spec = _long_spec(workdir)
    proc = _start(workdir, spec)
    db = workdir / "experiments.db"
    _wait_running(db, proc)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)  # what SLURM sends at a timeout or preemption
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, (err, out)
    assert "terminated (SIGTERM)" in err and "Traceback" not in err
    assert _rows(db, "select status, attempts, last_error from jobs") == [("PENDING", 0, "interrupted")]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copsd").experiment_id])
    assert runs and all(r.info.status == "KILLED" for r in runs)  # the sweep run and the job run
    again = run_cli("sweep", "run", str(spec), cwd=workdir)
    assert again.returncode == 0, again.stderr
    assert _rows(db, "select status, attempts from jobs") == [("DONE", 1)]
    assert _rows(db, "select count(*) from results") == [(1,)]


@pytest.mark.slow
def test_a_kill_9_leaves_an_orphan_that_the_next_run_takes_over_at_once(workdir):
    spec = _long_spec(workdir)
    proc = _start(workdir, spec, "--no-mlflow")
    db = workdir / "experiments.db"
    _wait_running(db, proc)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGKILL)  # no chance to clean up: the job stays RUNNING, its owner dead
    proc.communicate(timeout=60)
    assert _rows(db, "select status from jobs") == [("RUNNING",)]
    t0 = time.time()
    again = run_cli("sweep", "run", str(spec), "--no-mlflow", cwd=workdir)  # stale_after_s is 600 s
    assert again.returncode == 0, again.stderr + again.stdout
    assert time.time() - t0 < 300 and _rows(db, "select status, attempts from jobs") == [("DONE", 2)]


@pytest.mark.slow
def test_eight_processes_starting_at_once_on_a_new_database(workdir, small_spec):
    procs = [_start(workdir, small_spec, "--no-mlflow") for _ in range(8)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, (out, err)
        assert "Traceback" not in err and "locked" not in err
    db = workdir / "experiments.db"
    assert _rows(db, "select status, attempts from jobs") == [("DONE", 1)] * 4  # each ran exactly once
    assert _rows(db, "select count(*) from results") == [(4,)]
    assert _rows(db, "pragma integrity_check") == [("ok",)]


def test_a_second_signal_exits_at_once(tmp_path):
    """The first SIGTERM starts the clean-up (job back to PENDING); a second one during a slow
    clean-up ends the process at once with 128 + SIGTERM."""
    code = (
        "import time\n"
        "from copsd.run.sweep import Terminated, signals_return_jobs\n"
        "with signals_return_jobs():\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    except Terminated:\n"
        "        print('cleaning up', flush=True); time.sleep(60)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "ready"
    p.send_signal(signal.SIGTERM)
    assert p.stdout.readline().strip() == "cleaning up"
    t0 = time.time()
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 128 + signal.SIGTERM and time.time() - t0 < 10


def test_reset_running_only_dead_owners_unless_forced(workdir, small_spec):
    db_url = f"sqlite:///{workdir / 'experiments.db'}"
    from copsd.spec import select

    sel = select(str(small_spec))
    d = ResultsDB(db_url)
    d.register_sweep("small", sel.jobs)
    host = _host()
    dead, alive = sel.jobs[0].job_id, sel.jobs[1].job_id
    with d.Session.begin() as s:
        s.execute(update(JobRow).where(JobRow.id == dead).values(status=RUNNING, owner=f"{host}|{_dead_pid()}|1|a"))
        s.execute(
            update(JobRow)
            .where(JobRow.id == alive)
            .values(status=RUNNING, owner=f"{host}|{os.getpid()}|{_process_start(os.getpid())}|b")
        )
    d.close()
    r = run_cli("sweep", "reset", str(small_spec), "--status", "RUNNING", cwd=workdir)
    assert r.returncode == 0 and "reset 1 RUNNING" in r.stdout and alive in r.stdout and "--force" in r.stdout
    r = run_cli("sweep", "reset", str(small_spec), "--status", "running", "--force", cwd=workdir)
    assert r.returncode == 0 and "reset 1 RUNNING" in r.stdout
    d = ResultsDB(db_url)
    assert {d.get_job(x).status for x in (dead, alive)} == {PENDING}
    d.close()


def test_a_resumed_mlflow_run_does_not_log_a_step_twice(tmp_path):
    from copsd.results.tracking import Tracker

    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}")
    j = _job()
    first = tracker.job_run(j, None)
    for step in (1, 2, 3):
        first.log_metrics({"train/loss": float(step)}, step)
    again = tracker.job_run(j, None, existing=first.run_id)  # a retry after a crash at step 3
    for step in (2, 3, 4):  # resumed from the checkpoint at step 1
        again.log_metrics({"train/loss": 10.0 * step, "train/lr": 1.0}, step)
    history = tracker.client.get_metric_history(first.run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(1, 1.0), (2, 2.0), (3, 3.0), (4, 40.0)]
    assert len(tracker.client.get_metric_history(first.run_id, "train/lr")) == 3  # a new key logs every step


def test_unreachable_mlflow_server_is_one_line_quickly(workdir, small_spec):
    t0 = time.time()
    r = run_cli("sweep", "run", str(small_spec), cwd=workdir, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
    assert r.returncode == 2 and time.time() - t0 < 60
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "unreachable" in lines[0] and "--no-mlflow" in lines[0]


def test_a_store_mlflow_refuses_is_one_line_with_the_fix(workdir, small_spec):
    """MLflow 3 refuses a `file:` store by default; the user gets the store, MLflow's reason and
    the fix, not an "unexpected MlflowException"."""
    r = run_cli("sweep", "run", str(small_spec), cwd=workdir, env={"MLFLOW_TRACKING_URI": f"file://{workdir}/mlruns"})
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "cannot be opened" in lines[0] and "sqlite:///" in lines[0] and "unexpected" not in lines[0]


def test_an_unexpected_exception_is_one_line_not_a_traceback(workdir):
    code = (
        "import sys; sys.argv = ['copsd', 'data', 'list']; import copsd.cli.data as d; "
        "d.data_list = None; from copsd.data import benchmarks; "
        "benchmarks.benchmarks = lambda: (_ for _ in ()).throw(RuntimeError('boom')); "
        "from copsd.cli.app import main; main()"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=workdir, capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr and "unexpected RuntimeError: boom" in r.stderr


@pytest.mark.slow
def test_crash_harness_random_kills_and_concurrent_starts(tmp_path):
    """The harness in scripts/ (20 kills + 8 concurrent starts for the documented figures), small here:
    one random kill, one timed into a checkpoint write, three concurrent starts (the targeted kill
    tests above cover the other moments)."""
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "crash_harness.py"),
            "--kills",
            "1",
            "--checkpoint-kills",
            "1",
            "--concurrent",
            "3",
            "--max-delay",
            "12",
            "--seed",
            "1",
            "--json",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    report = json.loads(r.stdout.strip().splitlines()[-1])
    assert report["summary"]["kill_trials"] == 1 and report["summary"]["all_invariants_held"]
    assert report["concurrent"]["exit_codes"] == [0, 0, 0]
    assert report["checkpoint_kills"][0]["caught_write"]  # a kill landed inside a checkpoint write


def test_a_training_file_with_a_bad_line_names_that_line(tmp_path):
    from copsd.data.training import load_training_data
    from copsd.errors import DataError

    good = '{"problem": "P", "solution": "S \\\\boxed{1}", "problem_hau": "H"}'
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join([good, good, '{"problem": "P", "solution": oops}', good]) + "\n")
    with pytest.raises(DataError, match=r"bad\.jsonl:3: invalid JSON"):
        load_training_data("hau", str(path), val_size=1)


def test_a_signal_that_lands_in_a_gc_callback_is_not_lost(tmp_path):
    """Python drops an exception raised inside a weakref/GC callback (it happened in CI: SQLAlchemy's
    `_collection_gced`); the flag carries the signal to the next check, silently."""
    code = (
        "import gc, os, signal, time, weakref\n"
        "from copsd.run.sweep import Terminated, signals_return_jobs, raise_if_signalled\n"
        "class A: pass\n"
        "with signals_return_jobs():\n"
        "    a = A()\n"
        "    def cb(_ref):\n"
        "        os.kill(os.getpid(), signal.SIGTERM); time.sleep(0.05)\n"
        "    r = weakref.ref(a, cb)\n"
        "    try:\n"
        "        del a; gc.collect(); time.sleep(0.2)\n"
        "        print('still running', flush=True)\n"
        "        raise_if_signalled()\n"
        "    except Terminated:\n"
        "        print('terminated via the flag', flush=True)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.stdout.split("\n")[:2] == ["still running", "terminated via the flag"], (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and "Exception ignored" not in r.stderr
