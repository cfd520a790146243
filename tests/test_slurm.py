"""`copsd sweep submit` against a real single-node SLURM (tests/services.py `SlurmCluster`: Debian
slurm-wlm and munge, started by the `slurm` fixture): worker tasks as a job array claim jobs from a
shared SQLite results DB; `scancel` of a task mid-job and SLURM's requeue signal lose nothing."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

import pytest
from conftest import SMALL_SPEC, run_cli

pytestmark = pytest.mark.slow

TWO_JOBS = SMALL_SPEC.replace("seed: [0, 1]", "seed: [0]").replace("limit: 3", "limit: 12")


def _rows(db: Path, q: str) -> list[tuple]:
    con = sqlite3.connect(db)
    try:
        return con.execute(q).fetchall()
    except sqlite3.OperationalError:  # not created yet
        return []
    finally:
        con.close()


def _submit(slurm, workdir: Path, spec_text: str, *extra: str) -> tuple[Path, list[str]]:
    """`copsd sweep submit`; the results DB and the SLURM ids of the tasks ("12_0", "12_1"; "12" alone)."""
    spec = workdir / "spec.yaml"
    spec.write_text(spec_text)
    r = run_cli(
        "sweep", "submit", str(spec), "--executor", "slurm", "--gpus-per-task", "0", "--no-mlflow",
        "--db", "r.db", "--partition", slurm.PARTITION, *extra,
        cwd=workdir, env=slurm.env, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr + r.stdout
    tasks = [line.split()[1].rstrip(":") for line in r.stdout.splitlines() if line.startswith("  task ")]
    return workdir / "r.db", tasks


def _wait(slurm, db: Path, until, what: str, timeout: float = 150) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if until():
            return
        time.sleep(0.5)
    logs = "\n".join(p.read_text()[-1500:] for p in sorted((db.parent / "slurm").rglob("*_log.*")))
    squeue = slurm.run("squeue", "-h").stdout
    pytest.fail(
        f"timed out waiting for {what}; jobs {_rows(db, 'select id, status, host from jobs')}\n{squeue}\n{logs}"
    )


def _all_done(db: Path, n: int) -> bool:
    return _rows(db, "select count(*) from jobs where status='DONE'") == [(n,)]


def _queue_empty(slurm, tasks: list[str]) -> bool:
    return slurm.run("squeue", "-h", "-j", tasks[0].split("_")[0]).stdout.strip() == ""


def _one_result_each(db: Path) -> None:
    per_job = _rows(db, "select job_id, count(*) from results group by job_id")
    assert len(per_job) == len(_rows(db, "select id from jobs")) and len({n for _, n in per_job}) == 1, per_job


def _running_on(db: Path, task: str) -> list[tuple]:
    """The jobs RUNNING under SLURM task `task` (the claim's host label names it)."""
    return _rows(db, f"select id from jobs where status='RUNNING' and host like '% slurm:{task}'")


def test_a_sweep_on_two_tasks_completes_and_a_scancel_mid_job_loses_nothing(slurm, workdir):
    """Two array tasks share the sweep; `sweep status` names the task (and its log) that runs each
    job; `scancel` of one task mid-job gives its job back, and the other task finishes it."""
    t0 = time.time()
    db, tasks = _submit(slurm, workdir, TWO_JOBS, "--tasks", "2")
    assert len(tasks) == 2 and tasks[0].endswith("_0") and tasks[1].endswith("_1"), tasks
    _wait(slurm, db, lambda: _running_on(db, tasks[0]), "task 0 to run a job")
    (job,) = _running_on(db, tasks[0])[0]
    status = run_cli("sweep", "status", "--db", "r.db", cwd=workdir)
    line = next((x for x in status.stdout.splitlines() if x.startswith(f"RUNNING small {job}")), status.stdout)
    assert f"slurm:{tasks[0]} log {workdir}/slurm/small/{tasks[0]}_0_log.out" in line, line
    assert slurm.run("scancel", tasks[0]).returncode == 0
    _wait(slurm, db, lambda: _all_done(db, 2) and _queue_empty(slurm, tasks), "2 DONE jobs after scancel")
    # given back (the attempt not counted), then taken over by the other task
    assert _rows(db, f"select attempts, host from jobs where id='{job}'") == [(1, f"{_hostname()} slurm:{tasks[1]}")]
    _one_result_each(db)
    assert "terminated (SIGTERM)" in _log(workdir, tasks[0])
    assert "copsd worker slurm:" in _log(workdir, tasks[1])
    print(f"2 tasks, 2 jobs, scancel mid-job: {time.time() - t0:.0f}s")


def _hostname() -> str:
    import socket

    return socket.gethostname()


def _log(workdir: Path, task: str) -> str:
    """A task's stdout, found through the log paths `copsd sweep submit` recorded."""
    recorded = [json.loads(x) for x in (workdir / "slurm" / "submissions.jsonl").read_text().splitlines()]
    return Path(next(d["stdout"] for d in recorded if d["job"] == task)).read_text()


def test_the_requeue_signal_gives_the_job_back_and_the_task_is_requeued(slurm, workdir):
    """SIGUSR2 is what `--signal=USR2@N` sends N seconds before the time limit (and at preemption
    with send_user_signal): the job goes back to PENDING, submitit requeues the task, and the
    requeued task finishes the sweep."""
    t0 = time.time()
    db, tasks = _submit(slurm, workdir, TWO_JOBS, "--tasks", "1")
    (task,) = tasks
    _wait(slurm, db, lambda: _running_on(db, task), "the task to run a job")
    (job,) = _running_on(db, task)[0]
    time.sleep(1)
    assert slurm.run("scancel", "--signal=USR2", task).returncode == 0

    def requeued() -> bool:
        state = slurm.run("scontrol", "show", "job", task).stdout
        return "Restarts=1" in state and "JobState=PENDING" in state

    _wait(slurm, db, requeued, "the task to be requeued", timeout=60)
    assert _rows(db, f"select status, attempts from jobs where id='{job}'") == [("PENDING", 0)]
    # SLURM holds a requeued batch job back for about two minutes (its BeginTime); start it now
    assert slurm.run("scontrol", "update", f"JobId={task}", "StartTime=now").returncode == 0
    _wait(slurm, db, lambda: _all_done(db, 2) and _queue_empty(slurm, tasks), "2 DONE jobs after requeue")
    assert _rows(db, f"select attempts from jobs where id='{job}'") == [(1,)]  # the interrupted try is not counted
    _one_result_each(db)
    state = slurm.run("scontrol", "show", "job", task).stdout
    assert "Restarts=1" in state and "JobState=COMPLETED" in state, state
    log = _log(workdir, task)
    assert "SIGUSR2" in log and "Requeued job" in log, log
    print(f"requeue signal, 2 jobs: {time.time() - t0:.0f}s")
