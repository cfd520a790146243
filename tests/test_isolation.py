"""Job isolation (issue 16): each job in its own child process, so a job the kernel kills (out of
memory), a segfault or a CUDA fatal error fails that job with its cause in plain words and the
sweep finishes the others. Real processes: a test plugin's model kills its own process with
SIGKILL at load time, as the kernel's OOM killer would."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_SPEC, run_cli

from copsd.run.isolate import exit_cause

# fault injection through the plugin mechanism: `builtin:sigkill` dies while "loading"
PLUGIN = textwrap.dedent("""
    import os, signal
    from copsd.models.builtin import register_builtin

    def _die():
        os.kill(os.getpid(), signal.SIGKILL)  # what the kernel's OOM killer does

    def register():
        register_builtin("sigkill", _die)
""")

SPEC = textwrap.dedent("""
    name: iso
    defaults:
      model: builtin:tiny-qwen3
      dtype: float32
      eval:
        benchmark: mgsm
        limit: 2
        decoding: {n_samples: 1, max_new_tokens: 8}
        batch_size: 8
    matrix:
      model: [builtin:sigkill, builtin:tiny-qwen3]
      language: [swa]
      method: [base]
      seed: [0, 1]
    exclude:
      - {model: builtin:sigkill, seed: 1}
""")


def _rows(path, q):
    con = sqlite3.connect(path)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def test_exit_causes_in_plain_words():
    assert exit_cause(-9).startswith("job process killed by signal 9 (SIGKILL: likely out of memory")
    assert "train.micro_batch_size" in exit_cause(-9) and "eval.batch_size" in exit_cause(-9)
    assert "signal 11 (SIGSEGV: crashed in native code" in exit_cause(-11)
    assert "signal 6 (SIGABRT: aborted in native code" in exit_cause(-6)
    assert exit_cause(3).startswith("job process exited with status 3 without reporting a result")


def test_a_job_killed_by_sigkill_fails_with_its_cause_and_the_sweep_goes_on(workdir):
    (workdir / "sigkill_plugin.py").write_text(PLUGIN)
    (workdir / "iso.yaml").write_text(SPEC)
    env = {"COPSD_PLUGINS": "sigkill_plugin", "PYTHONPATH": str(workdir)}
    r = run_cli("sweep", "run", "iso.yaml", "--max-attempts", "1", cwd=workdir, env=env)
    assert r.returncode == 1, r.stderr + r.stdout  # the usual "some jobs failed" status
    assert "2 done, 1 failed" in r.stdout and "killed by signal 9" in r.stdout
    assert "Traceback" not in r.stderr
    rows = _rows(workdir / "experiments.db", "select model, status, attempts, last_error from jobs order by model")
    (model, status, attempts, err), *others = rows
    assert model == "builtin:sigkill" and status == "FAILED" and attempts == 1
    assert err.startswith("job process killed by signal 9 (SIGKILL: likely out of memory")
    assert [(o[1], o[3]) for o in others] == [("DONE", None), ("DONE", None)]
    assert _rows(workdir / "experiments.db", "select count(*) from results") == [(2,)]
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("copsd").experiment_id])
    jobs = {r.data.tags.get("model"): r for r in runs if r.data.tags.get("copsd.kind") == "job"}
    assert jobs["builtin:sigkill"].info.status == "FAILED"
    assert "killed by signal 9" in jobs["builtin:sigkill"].data.tags["copsd.error"]
    assert jobs["builtin:tiny-qwen3"].info.status == "FINISHED"
    # the evaluation metrics the child logged reached the job's MLflow run through the parent
    assert any(k.startswith("eval/swa/") for k in jobs["builtin:tiny-qwen3"].data.metrics)


def _descendants(pid: int) -> set[int]:
    """Every live process below `pid` (/proc; Linux)."""
    parents: dict[int, int] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(d.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {c for c, p in parents.items() if p in frontier} - found
        found |= frontier
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited (only its parent, maybe init, has not reaped it yet)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
def test_a_signalled_sweep_leaves_no_job_process_behind(workdir, sig):
    """SIGTERM: the job goes back to PENDING (exit 143) and its process is stopped; SIGKILL to the
    sweep process alone (no clean-up possible): the job process dies with it all the same."""
    spec = workdir / "long.yaml"
    spec.write_text(
        SMALL_SPEC.replace("limit: 3", "limit: 200")
        .replace("max_new_tokens: 16", "max_new_tokens: 64")
        .replace("seed: [0, 1]", "seed: [0]")
        .replace("language: [swa, eng]", "language: [swa]")
    )
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "sweep", "run", str(spec), "--no-mlflow"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = workdir / "experiments.db"
    deadline, below = time.time() + 120, set()
    while time.time() < deadline:  # RUNNING, and the job's process has started
        below = _descendants(proc.pid)
        try:
            running = db.exists() and _rows(db, "select count(*) from jobs where status='RUNNING'") == [(1,)]
        except sqlite3.OperationalError:
            running = False
        if running and len(below) >= 2:  # the fork server and the job's process (+ resource tracker)
            break
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the job was never seen RUNNING in its own process")
    time.sleep(1.0)
    below |= _descendants(proc.pid)
    os.kill(proc.pid, sig)
    out, err = proc.communicate(timeout=120)
    deadline = time.time() + 15
    while time.time() < deadline and any(_alive(p) for p in below):
        time.sleep(0.2)
    assert not [p for p in below if _alive(p)], f"left behind: {below}"
    if sig == signal.SIGTERM:
        assert proc.returncode == 128 + signal.SIGTERM, (err, out)
        assert "terminated (SIGTERM)" in err and "Traceback" not in err
        assert _rows(db, "select status, attempts, last_error from jobs") == [("PENDING", 0, "interrupted")]
    else:
        assert _rows(db, "select status from jobs") == [("RUNNING",)]  # an orphan, taken over by the next run


TUNE_SPEC = textwrap.dedent("""
    name: iso-tune
    defaults:
      model: builtin:sigkill
      dtype: float32
      eval: {benchmark: mgsm, limit: 2, decoding: {n_samples: 1, max_new_tokens: 8}, checkpoints: [2]}
      train: {batch_size: 2, micro_batch_size: 2, max_steps: 2, save_steps: 2, lora: {r: 4, alpha: 8},
              max_examples: 24, val_size: 8, max_completion_length: 8}
    matrix: {language: [swa], method: [copsd]}
    search:
      params:
        train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
      objective: {metric: accuracy, direction: maximize}
      n_trials: 4
      max_failures: 2
      sampler: random
      pruner: none
""")


def test_a_tune_trial_runs_in_its_own_process_so_a_killed_trial_fails_alone(workdir):
    """The pruner is a recorder hook in the tune process, so trials run isolated like every job:
    a trial whose job the kernel kills is FAILED with the cause, and the tune process lives on to
    stop after `max_failures` with one line (in-process trials would take the tune process down)."""
    (workdir / "sigkill_plugin.py").write_text(PLUGIN)
    (workdir / "tune.yaml").write_text(TUNE_SPEC)
    env = {"COPSD_PLUGINS": "sigkill_plugin", "PYTHONPATH": str(workdir)}
    r = run_cli("tune", "tune.yaml", "--no-mlflow", cwd=workdir, env=env)
    assert r.returncode == 1, r.stdout + r.stderr  # not -9: the tune process was not the one killed
    assert "stopped: 2 trials in a row failed" in r.stderr and "killed by signal 9" in r.stderr
    rows = _rows(workdir / "experiments.db", "select status, last_error from jobs")
    assert len(rows) == 2 and all(s == "FAILED" and e.startswith("job process killed by signal 9") for s, e in rows)
