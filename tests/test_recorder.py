"""The recorder: the one place a job's events become DB rows, MLflow logs, figures and notes
(copsd.run.recorder), against a real SQLite results DB and a real MLflow store."""

from __future__ import annotations

import json

import pytest

from copsd.config import JobConfig
from copsd.paths import Workspace
from copsd.results.db import Claimant, LostOwnership, ResultsDB
from copsd.results.schema import METRIC_COLUMNS, ResultKey, ResultRow
from copsd.results.tracking import Tracker
from copsd.run import events
from copsd.run.db_sink import JobRows
from copsd.run.mlflow_sink import JobTracking
from copsd.run.recorder import NotesSaid, Recorder


def _job(seed: int = 0, method: str = "base") -> JobConfig:
    extra = {"train": {"max_steps": 10, "save_steps": 5}} if method != "base" else {}
    return JobConfig(method=method, model="m/m", language="swa", seed=seed,
                     eval={"benchmark": "mgsm", "budgets": [8], "decoding": {"max_new_tokens": 16},
                           **({"checkpoints": [5, 10]} if method != "base" else {})}, **extra)  # fmt: skip


def _metrics(acc: float) -> dict[str, float]:
    return {**dict.fromkeys(METRIC_COLUMNS, 0.5), "accuracy": acc}


def _result(step: int, acc: float) -> events.CheckpointResult:
    records = [{"problem_id": "p1", "sample": 0, "response": "jibu ni 3", "correct": True}]
    return events.CheckpointResult(step, {8: _metrics(acc / 2), 16: _metrics(acc)}, 16, 12, 250, records)


@pytest.fixture
def store(tmp_path):
    url = f"sqlite:///{tmp_path / 'experiments.db'}"
    db = ResultsDB(url)
    tracker = Tracker(Workspace(url).tracking_uri, "copsd")
    yield db, tracker
    db.close()


def test_results_are_stored_full_budget_last_and_logged_with_generations_and_figures(store, tmp_path):
    db, tracker = store
    job, other = _job(method="copsd"), _job(method="base")
    db.register_sweep("s", [job, other])
    owner = db.claim(job.job_id, max_attempts=3, stale_after_s=600)
    # another sweep's base job of the same model and language: not part of this job's figures
    db.add_result(other.job_id, **ResultKey("mgsm", "swa", "test", 0, 16)._asdict(), n_samples=12, n_problems=250,
                  metrics=_metrics(0.9))  # fmt: skip
    run = tracker.job_run(job, None)
    seen: list[tuple[int, set]] = []
    rec = Recorder(JobRows(job, db, owner), JobTracking(job, run), figures_dir=tmp_path / "figs",
                   on_checkpoint=[lambda step, m: seen.append((step, db.result_keys(job.job_id)))])  # fmt: skip
    for event in (events.Planned([5, 10], 24), events.TrainStep(1, {"loss": 0.7}), _result(5, 0.2), _result(10, 0.4)):
        rec.record(event)
    rec.finish()
    with db.Session() as s:  # per checkpoint: the smaller budget first, the full one (completeness) last
        rows = s.query(ResultRow).filter_by(job_id=job.job_id).order_by(ResultRow.id).all()
    assert [(r.step, r.max_new_tokens) for r in rows] == [(5, 8), (5, 16), (10, 8), (10, 16)]
    assert [r.accuracy for r in rows] == [0.1, 0.2, 0.2, 0.4] and rows[1].n_problems == 250
    # a hook sees the checkpoint's rows already stored (a pruner reads the objective from the DB)
    assert seen[0] == (5, {ResultKey("mgsm", "swa", "test", 5, b) for b in (8, 16)})
    assert rec.evaluated == {5: _metrics(0.2), 10: _metrics(0.4)}
    client = tracker.client
    hist = client.get_metric_history(run.run_id, "eval/swa/accuracy")
    assert [(m.step, m.value) for m in hist] == [(5, 0.2), (10, 0.4)]
    assert [m.value for m in client.get_metric_history(run.run_id, "eval_budget8/swa/accuracy")] == [0.1, 0.2]
    assert client.get_metric_history(run.run_id, "train/loss")[0].value == 0.7
    arts = {a.path for a in client.list_artifacts(run.run_id, "generations")}
    assert arts == {"generations/step00005_mgsm_swa_test.jsonl", "generations/step00010_mgsm_swa_test.jsonl"}
    text = client.download_artifacts(run.run_id, "generations/step00005_mgsm_swa_test.jsonl", str(tmp_path))
    assert [json.loads(line) for line in open(text, encoding="utf-8")] == _result(5, 0.2).records
    figures = {a.path for a in client.list_artifacts(run.run_id, "figures")}
    assert {"figures/curves_accuracy.png", "figures/scaling.png"} <= figures
    # the job's own rows only: the other sweep's base job is not in its figures' data
    assert set(db.results_frame(job_id=job.job_id).job_id) == {job.job_id}


def test_a_recorder_whose_claim_was_taken_over_writes_nothing(store):
    db, _ = store
    job = _job()
    db.register_sweep("s", [job])
    first = db.claim(job.job_id, max_attempts=3, stale_after_s=600)
    db.reset([job.job_id], running=True)  # e.g. `sweep reset --force`: another worker claims it next
    assert db.claim(job.job_id, max_attempts=3, stale_after_s=600, claimant=Claimant())
    rec = Recorder(JobRows(job, db, first), JobTracking(job))
    with pytest.raises(LostOwnership):
        rec.record(_result(0, 0.5))
    assert db.result_keys(job.job_id) == set() and rec.evaluated == {}


def test_notes_are_said_once_per_sweep_process_and_unknown_events_are_refused(store, capsys):
    db, _ = store
    notes = NotesSaid()
    for seed in (0, 1):  # two jobs of one sweep, one NotesSaid
        rec = Recorder(JobRows(_job(seed), db), JobTracking(_job(seed)), notes=notes)
        rec.record(events.Note("note: rollout engine 'hf' (CUDA graphs need a GPU)"))
    assert capsys.readouterr().err.count("note: rollout engine 'hf'") == 1
    with pytest.raises(TypeError, match="not an event"):
        rec.record(events.Finished())
