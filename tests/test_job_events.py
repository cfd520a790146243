"""A job computes and yields typed events; it needs no results DB and no MLflow (copsd.run.job)."""

from __future__ import annotations

import pickle

import pytest

from copsd.config import JobConfig
from copsd.results.schema import METRIC_COLUMNS
from copsd.run import events
from copsd.run.job import JobPlan, pending_steps, result_key, run_job


def _job(**eval_) -> JobConfig:
    return JobConfig(
        method="copsd",
        model="builtin:tiny-qwen3",
        language="swa",
        dtype="float32",
        eval={"benchmark": "mgsm", "limit": 2, "checkpoints": [1, 2], "budgets": [4], "batch_size": 4,
              "decoding": {"n_samples": 2, "max_new_tokens": 8}, **eval_},
        train={"batch_size": 2, "micro_batch_size": 2, "max_steps": 2, "save_steps": 1, "max_examples": 8,
               "max_completion_length": 8, "lora": {"r": 4, "alpha": 8}, "val_size": 2},
    )  # fmt: skip


def test_a_job_runs_with_no_db_and_no_mlflow_and_says_what_happened_in_order(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything written where it should not be would land here
    job = _job()
    got = list(run_job(job, JobPlan(tmp_path / "runs", device="cpu")))
    kinds = [type(e).__name__ for e in got]
    # planned -> provenance -> one event per training step -> engine -> decoded batches -> a result per checkpoint
    assert kinds[0] == "Planned" and got[0] == events.Planned([1, 2], 2 * 2 * 2)
    train_steps = [e.step for e in got if isinstance(e, events.TrainStep)]
    assert train_steps == [1, 2] and kinds.index("Provenance") < kinds.index("TrainStep")
    assert all(isinstance(e.metrics["loss"], float) for e in got if isinstance(e, events.TrainStep))
    results = [e for e in got if isinstance(e, events.CheckpointResult)]
    assert [r.step for r in results] == [1, 2]
    decoded = [e.samples for e in got if isinstance(e, events.Decoded)]
    assert sum(decoded) == 2 * 2 * 2  # every sample of both checkpoints, reported as it is decoded
    assert kinds.index("EngineChosen") < kinds.index("Decoded") < kinds.index("CheckpointResult")
    for r in results:
        assert sorted(r.by_budget) == [4, 8] and set(METRIC_COLUMNS) <= set(r.metrics)
        assert r.metrics is r.by_budget[8] and len(r.records) == 2 * 2
    prov = next(e for e in got if isinstance(e, events.Provenance))
    assert prov.values["train_data_fingerprint"] and prov.data_counts
    notes = [e.message for e in got if isinstance(e, events.Note)]
    assert any("rollout engine 'hf'" in n for n in notes)  # CPU: auto fell back, and the job says why
    # the job wrote its checkpoints and nothing else: no DB, no MLflow store
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    assert pickle.loads(pickle.dumps(got)) == got  # every event can cross the isolation pipe


def test_a_job_evaluates_only_checkpoints_without_stored_rows(tmp_path):
    job = _job()
    stored = {result_key(job, 1, b) for b in (4, 8)} | {result_key(job, 2, 4)}  # step 2's full budget missing
    assert pending_steps(job, stored) == [2]
    plan = JobPlan(tmp_path / "runs", frozenset(stored), device="cpu")
    stream = run_job(job, plan)
    assert next(e for e in stream if isinstance(e, events.Planned)).steps == [2]
    stream.close()
    full = stored | {result_key(job, 2)}
    assert list(run_job(job, JobPlan(tmp_path / "runs", frozenset(full), device="cpu"))) == []


def test_a_caller_stops_a_job_between_two_events(tmp_path):
    """Closing the stream is how a runner stops a job (a signal, a lost claim, a pruned trial):
    after the first training step's event, nothing more is computed."""
    from copsd.training.adapters import saved_steps

    job = _job()
    stream = run_job(job, JobPlan(tmp_path / "runs", device="cpu"))
    for event in stream:
        if isinstance(event, events.TrainStep):
            break
    stream.close()
    with pytest.raises(StopIteration):
        next(stream)
    assert saved_steps(tmp_path / "runs" / job.job_id) == [1]  # step 2 never ran
