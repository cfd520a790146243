"""Crash-test harness: random `kill -9` of a running sweep (any moment: training, checkpoint
writes, evaluation, result writes), then one rerun; and N `copsd sweep run` processes started at
the same moment on one new database. After each trial it asserts: every job DONE, each result
row exactly once, one MLflow run per job, nothing RUNNING, `PRAGMA integrity_check` ok.

    python scripts/crash_harness.py --kills 20 --checkpoint-kills 5 --concurrent 8   # docs/crash_safety.md
    python scripts/crash_harness.py --kills 1 --checkpoint-kills 1 --concurrent 3 --json  # the slow test

Real processes, real signals, a real SQLite file and MLflow store; nothing is simulated.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# one COPSD job that trains and checkpoints every step (so kills land in checkpoint writes too),
# and two base jobs; small enough that a clean run takes seconds on a CPU
SPEC = """
name: crash
description: crash-test harness sweep
defaults:
  model: builtin:tiny-qwen3
  dtype: float32
  eval: {benchmark: mgsm, limit: 4, decoding: {n_samples: 2, max_new_tokens: 12}, batch_size: 8, checkpoints: [2, 4]}
  train: {batch_size: 2, micro_batch_size: 1, max_steps: 4, save_steps: 1, lr: 1.0e-3, lora: {r: 4, alpha: 8},
          max_completion_length: 8, val_size: 2}
runner: {heartbeat_s: 1, stale_after_s: 600}
matrix:
  language: [swa]
  method: [base, copsd]
  seed: [0, 1]
exclude:
  - {method: base, seed: 1}
"""
EXPECTED_JOBS = 3
EXPECTED_RESULTS = 1 + 2 + 2  # base step 0; copsd seeds 0 and 1 at steps 2 and 4


def _cli(*args: str) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), *args]


def _rows(db: Path, q: str) -> list:
    con = sqlite3.connect(db)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def check(work: Path) -> dict:
    """The invariants after a trial; raises AssertionError with what broke."""
    db = work / "experiments.db"
    statuses = _rows(db, "select status from jobs")
    assert [s for (s,) in statuses] == ["DONE"] * EXPECTED_JOBS, statuses
    n_results = _rows(db, "select count(*) from results")[0][0]
    assert n_results == EXPECTED_RESULTS, n_results
    dup = _rows(
        db,
        "select job_id, step, count(*) from results group by job_id, benchmark, language, split, step, "
        "max_new_tokens having count(*) > 1",
    )
    assert not dup, dup
    assert _rows(db, "pragma integrity_check") == [("ok",)]
    out = {"attempts": sum(a for (a,) in _rows(db, "select attempts from jobs"))}
    mlflow_db = work / "mlflow.db"
    if mlflow_db.exists():
        per_job = _rows(
            mlflow_db,
            "select t.value, count(*) from tags t join runs r on r.run_uuid = t.run_uuid "
            "where t.key = 'copsd.job_id' and r.lifecycle_stage = 'active' group by t.value",
        )
        assert len(per_job) == EXPECTED_JOBS and all(n == 1 for _, n in per_job), per_job
        steps = _rows(
            mlflow_db,
            "select run_uuid, key, step, count(*) from metrics group by run_uuid, key, step having count(*) > 1",
        )
        assert not steps, f"MLflow steps logged twice: {steps[:5]}"
    return out


def _spawn(work: Path, spec: Path) -> subprocess.Popen:
    """`copsd sweep run` in its own process group (so a kill reaches every process of it)."""
    return subprocess.Popen(
        _cli("sweep", "run", str(spec)),
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_trial(work: Path, spec: Path, rng: random.Random, max_delay: float) -> dict:
    """Start the sweep, kill -9 it at a random moment, rerun once, check."""
    proc = _spawn(work, spec)
    delay = rng.uniform(0.5, max_delay)
    time.sleep(delay)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    ckpt = work / "runs"
    in_checkpoint_write = any(".tmp" in p.name for p in ckpt.rglob("*")) if ckpt.exists() else False
    t0 = time.perf_counter()
    again = subprocess.run(_cli("sweep", "run", str(spec)), cwd=work, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:] + again.stdout[-2000:]
    assert "Traceback" not in again.stderr
    res = check(work)
    return {
        "delay_s": round(delay, 2),
        "killed": not finished_first,
        "tmp_left": in_checkpoint_write,
        "rerun_s": round(time.perf_counter() - t0, 1),
        **res,
    }


def checkpoint_kill_trial(work: Path, spec: Path, timeout: float = 120.0) -> dict:
    """Kill -9 the moment a checkpoint write is under way (a `step_N.tmp-PID` dir exists), rerun, check."""
    proc = _spawn(work, spec)
    runs = work / "runs"
    deadline = time.time() + timeout
    caught = None
    while time.time() < deadline and proc.poll() is None:
        if runs.exists():
            caught = next((p for p in runs.glob("*/checkpoints/*.tmp-*")), None)
            if caught is not None:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        time.sleep(0.001)
    proc.wait()
    tmp_left = bool(list(runs.glob("*/checkpoints/*.tmp-*"))) if runs.exists() else False
    again = subprocess.run(_cli("sweep", "run", str(spec)), cwd=work, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr[-2000:] + again.stdout[-2000:]
    assert not list(runs.glob("*/checkpoints/*.tmp-*")), "leftover temp checkpoint after the rerun"
    res = check(work)
    return {"caught_write": caught.name if caught else None, "tmp_left": tmp_left, **res}


def concurrent_trial(work: Path, spec: Path, n: int) -> dict:
    """n processes started together on one new database: all must exit 0, each job runs once."""
    procs = [
        subprocess.Popen(
            _cli("sweep", "run", str(spec)), cwd=work, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(n)
    ]
    outs = [p.communicate(timeout=1800) for p in procs]
    codes = [p.returncode for p in procs]
    bad = [err[-1500:] for p, (_, err) in zip(procs, outs) if p.returncode != 0 or "Traceback" in err]
    assert not bad, bad[0]
    res = check(work)
    assert res["attempts"] == EXPECTED_JOBS, res  # every job ran exactly once
    return {"processes": n, "exit_codes": codes, **res}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--checkpoint-kills", type=int, default=5, help="kills timed to land in a checkpoint write")
    ap.add_argument("--concurrent", type=int, default=8)
    ap.add_argument("--max-delay", type=float, default=10.0, help="kill within this many seconds of the start")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    report: dict = {"kills": [], "concurrent": None}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.kills):
            work = Path(tmp) / f"kill{i}"
            work.mkdir()
            spec = work / "crash.yaml"
            spec.write_text(SPEC)
            report["kills"].append(kill_trial(work, spec, rng, args.max_delay))
            if not args.json:
                print(f"kill trial {i + 1}/{args.kills}: {report['kills'][-1]}", flush=True)
        report["checkpoint_kills"] = []
        for i in range(args.checkpoint_kills):
            work = Path(tmp) / f"ckpt{i}"
            work.mkdir()
            spec = work / "crash.yaml"
            spec.write_text(SPEC)
            report["checkpoint_kills"].append(checkpoint_kill_trial(work, spec))
            if not args.json:
                print(
                    f"checkpoint-write kill {i + 1}/{args.checkpoint_kills}: {report['checkpoint_kills'][-1]}",
                    flush=True,
                )
        if args.concurrent:
            work = Path(tmp) / "concurrent"
            work.mkdir()
            spec = work / "crash.yaml"
            spec.write_text(SPEC)
            report["concurrent"] = concurrent_trial(work, spec, args.concurrent)
    k = report["kills"]
    report["summary"] = {
        "kill_trials": len(k),
        "killed_mid_run": sum(x["killed"] for x in k),
        "killed_during_checkpoint_write": sum(x["tmp_left"] for x in k)
        + sum(x["tmp_left"] for x in report["checkpoint_kills"]),
        "checkpoint_write_trials": len(report["checkpoint_kills"]),
        "all_invariants_held": True,
        "wall_s": round(time.perf_counter() - t0, 1),
    }
    print(json.dumps(report if args.json else report["summary"], indent=None if args.json else 2))
    return report


if __name__ == "__main__":
    main()
