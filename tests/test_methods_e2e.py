"""A tiny sweep with base/copsd/grpo/sft on two languages, end to end through the CLI."""

from __future__ import annotations

import json
import sqlite3

import pytest
from conftest import run_cli

SPEC = """
name: methods
defaults:
  model: builtin:tiny-qwen3
  dtype: float32
  eval:
    benchmark: mgsm
    limit: 2
    decoding: {n_samples: 2, max_new_tokens: 12}
    checkpoints: [0, 2, 4]
  train: {batch_size: 2, micro_batch_size: 2, max_steps: 4, save_steps: 2, lr: 1.0e-3, lora: {r: 4, alpha: 8}, val_size: 8,
          data_path: "DATA/translated_{language}.json"}
methods:
  copsd: {train: {max_completion_length: 12}}
  grpo: {train: {max_completion_length: 12, num_generations: 2, batch_size: 4, micro_batch_size: 4}}
matrix:
  language: [swa, eng]
  method: [base, copsd, grpo, sft]
"""


@pytest.mark.slow
def test_four_methods_two_languages(workdir):
    from copsd.data.training import load_training_data

    data = workdir / "data"
    data.mkdir()
    train, val = load_training_data("swa", val_size=8)
    recs = [{"problem": e.problem_en, "solution": e.solution_en, "problem_swa": e.problem} for e in (train + val)[:40]]
    (data / "translated_swa.json").write_text(json.dumps(recs))
    (data / "translated_eng.json").write_text(
        json.dumps([{"problem": r["problem"], "solution": r["solution"], "problem_eng": r["problem"]} for r in recs])
    )
    spec = workdir / "methods.yaml"
    spec.write_text(SPEC.replace("DATA", str(data)))
    r = run_cli("sweep", "run", str(spec), cwd=workdir)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "8 done, 0 failed" in r.stdout
    con = sqlite3.connect(workdir / "experiments.db")
    steps = con.execute(
        "select j.method, j.language, group_concat(r.step) from results r join jobs j on j.id=r.job_id "
        "group by j.method, j.language order by j.method, j.language"
    ).fetchall()
    con.close()
    got = {(m, lang): sorted(map(int, s.split(","))) for m, lang, s in steps}
    assert got[("base", "swa")] == [0]
    for m in ("copsd", "grpo", "sft"):
        for lang in ("swa", "eng"):
            assert got[(m, lang)] == [0, 2, 4]
    assert len(list((workdir / "runs").iterdir())) == 6

    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("copsd")
    runs = {
        (x.data.tags["method"], x.data.tags["language"]): x
        for x in client.search_runs([exp.experiment_id])
        if x.data.tags.get("copsd.kind") == "job"
    }
    hist = client.get_metric_history(runs[("copsd", "swa")].info.run_id, "train/loss")
    assert [m.step for m in hist] == [1, 2, 3, 4]
    assert "train/clipped_share" in runs[("copsd", "swa")].data.metrics
    assert "train/zero_variance_group_share" in runs[("grpo", "eng")].data.metrics
    acc = client.get_metric_history(runs[("sft", "eng")].info.run_id, "eval/eng/accuracy")
    assert sorted(m.step for m in acc) == [0, 2, 4]

    t = run_cli("report", "table", "--by", "language", "--sweep", "methods", "--format", "csv", cwd=workdir)
    header = t.stdout.splitlines()[0]
    for m in ("base", "sft", "grpo", "copsd"):
        assert f"tiny-qwen3/{m}" in header
