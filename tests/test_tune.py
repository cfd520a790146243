"""`copsd tune`: an Optuna study in the results DB (real Optuna, real jobs on the tiny model):
trials are hashed jobs, the study resumes, a pruner stops a trial at a checkpoint, and
`copsd report tune` prints the best trials and writes its plots."""

from __future__ import annotations

import optuna
import pytest
from conftest import run_cli

from copsd.results import ResultsDB

SPEC = """
name: tiny-tune
defaults:
  model: builtin:tiny-qwen3
  dtype: float32
  eval: {benchmark: mgsm, limit: 2, decoding: {n_samples: 1, temperature: 0.0, max_new_tokens: 8}, checkpoints: [1, 2]}
  train: {batch_size: 2, micro_batch_size: 2, max_steps: 2, save_steps: 1, lora: {r: 4, alpha: 8},
          max_examples: 24, val_size: 8, max_completion_length: 8}
matrix: {language: [swa], method: [copsd]}
search:
  params:
    train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
    train.clip: {type: categorical, choices: [null, 0.05]}
  objective: {metric: format_rate, direction: minimize}
  n_trials: 2
  sampler: random
  pruner: PRUNER
"""


def _study(url: str):
    return optuna.load_study(study_name="tiny-tune", storage=url)


@pytest.mark.slow
def test_tune_runs_trials_as_jobs_resumes_and_reports(workdir):
    spec = workdir / "tune.yaml"
    spec.write_text(SPEC.replace("PRUNER", "none"))
    url = f"sqlite:///{workdir / 'experiments.db'}"
    r = run_cli("tune", str(spec), cwd=workdir)  # with MLflow: each trial's job is a run tagged with it
    assert r.returncode == 0, r.stdout + r.stderr
    assert "study 'tiny-tune': 2 finished trial(s)" in r.stdout
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("copsd")
    runs = client.search_runs([exp.experiment_id], filter_string="tags.`copsd.kind` = 'job'")
    assert sorted(r.data.tags["copsd.trial"] for r in runs) == ["0", "1"]
    trials = _study(url).get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    db = ResultsDB(url)
    jobs = {j.id: j for j in db.jobs(sweep="tiny-tune")}
    for t in trials:  # each trial is an ordinary job, its value read back from the results
        (job_id,) = t.user_attrs["job_ids"]
        assert jobs[job_id].status == "DONE"
        df = db.results_frame("tiny-tune")
        assert t.value == pytest.approx(df[(df.job_id == job_id) & (df.step == 2)].format_rate.mean())
    db.close()
    r = run_cli("tune", str(spec), "--no-mlflow", cwd=workdir)  # resumed: nothing left to do
    assert r.returncode == 0 and "2 finished trial(s)" in r.stdout and "trial 2" not in r.stdout, r.stdout
    r = run_cli("tune", str(spec), "--no-mlflow", "--n-trials", "3", cwd=workdir)
    assert r.returncode == 0 and "trial 2:" in r.stdout and "3 finished trial(s)" in r.stdout, r.stdout + r.stderr
    r = run_cli("report", "tune", "tiny-tune", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "train.lr" in r.stdout and "COMPLETE" in r.stdout
    for name in ("history", "importance"):
        png = workdir / "reports" / f"tiny-tune_tune_{name}.png"
        assert png.read_bytes()[:4] == b"\x89PNG", name


@pytest.mark.slow
def test_a_pruned_trial_stops_at_its_first_checkpoint(workdir):
    spec = workdir / "tune.yaml"
    # format rate is >= 0, so "worse than -1" (minimizing: above it) prunes at the first report
    spec.write_text(SPEC.replace("PRUNER", "threshold\n  threshold: -1.0\n  n_startup_trials: 0").replace(
        "n_trials: 2", "n_trials: 1"))  # fmt: skip
    r = run_cli("tune", str(spec), "--no-mlflow", cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    url = f"sqlite:///{workdir / 'experiments.db'}"
    (t,) = _study(url).get_trials()
    assert t.state.name == "PRUNED" and t.last_step == 1
    db = ResultsDB(url)
    (job,) = db.jobs(sweep="tiny-tune")
    assert job.status == "FAILED" and "pruned at step 1" in job.last_error
    assert sorted(db.results_frame("tiny-tune").step) == [1]  # step 2 was never trained or evaluated
    db.close()


def test_search_block_errors_are_one_line(workdir):
    spec = workdir / "bad.yaml"
    spec.write_text(SPEC.replace("PRUNER", "none").replace("train.clip:", "train.clp:"))
    r = run_cli("tune", str(spec), cwd=workdir)
    assert r.returncode == 2 and "clp" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    spec.write_text(SPEC.replace("PRUNER", "threshold"))
    r = run_cli("tune", str(spec), cwd=workdir)
    assert r.returncode == 2 and "threshold" in r.stderr, r.stderr
    spec.write_text(SPEC.replace("PRUNER", "none").replace("search:", "nosearch:"))
    r = run_cli("tune", str(spec), cwd=workdir)
    assert r.returncode == 2 and "nosearch" in r.stderr, r.stderr


@pytest.mark.slow
def test_two_tune_processes_share_one_study_on_postgres(workdir, postgres):
    """Several workers (or SLURM tasks) on one study: together they stop at n_trials (give or take
    the trial each was running), every trial's job is DONE once."""
    import re
    import subprocess
    import sys

    from conftest import ROOT

    url = postgres.new_database()
    spec = workdir / "tune.yaml"
    spec.write_text(SPEC.replace("PRUNER", "none").replace("n_trials: 2", "n_trials: 3"))
    cmd = [sys.executable, str(ROOT / "cli.py"), "tune", str(spec), "--db", url, "--no-mlflow", "--worker"]
    procs = [
        subprocess.Popen([*cmd, str(i)], cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    trials = _study(url).get_trials()
    assert 3 <= len(trials) <= 4 and {t.state.name for t in trials} == {"COMPLETE"}
    assert all(re.search(r"^trial \d+: train", o, re.M) for o, _ in outs), outs  # both ran trials
    db = ResultsDB(url)
    ids = {i for t in trials for i in t.user_attrs["job_ids"]}
    assert {j.id: j.status for j in db.jobs(sweep="tiny-tune")} == dict.fromkeys(ids, "DONE")
    db.close()
