"""Test-time scaling by truncation: `eval.budgets` grades the first b tokens of each sample, which
must equal decoding with `max_new_tokens=b` (same seed, same batch); budgets are hashed only
when set, so specs without them keep their job ids."""

from __future__ import annotations

import pytest

from copsd.config import EvalConfig, JobConfig
from copsd.data.benchmarks import load_problems
from copsd.evaluation.evaluate import evaluate
from copsd.models.load import load_model


def _cfg(max_new: int, budgets=()) -> EvalConfig:
    return EvalConfig(
        benchmark="testbed",
        batch_size=16,
        budgets=list(budgets),
        thinking=False,
        decoding={"n_samples": 2, "temperature": 1.0, "top_p": 0.95, "max_new_tokens": max_new},
        rollout_engine="hf",
    )


def test_truncated_budgets_equal_real_decodes_at_that_budget():
    lm = load_model("builtin:testbed")
    probs = load_problems("testbed", "synlo", limit=12)
    full = evaluate(lm.model, lm.tokenizer, probs, "synlo", _cfg(40, [6, 12, 18]), seed=3)
    assert sorted(full.by_budget) == [6, 12, 18]
    assert full.by_budget[6]["accuracy"] < full.metrics["accuracy"]  # the cut is real: few answers by token 6
    for b in (6, 12, 18):
        real = evaluate(lm.model, lm.tokenizer, probs, "synlo", _cfg(b), seed=3)
        assert full.by_budget[b] == pytest.approx(real.metrics), b


def test_budgets_validated_and_hashed_only_when_set():
    base = {"method": "base", "model": "builtin:testbed", "language": "synlo"}
    plain = JobConfig(**base, eval={"benchmark": "testbed"})
    assert "budgets" not in plain.canonical()["eval"]
    with_b = JobConfig(**base, eval={"benchmark": "testbed", "budgets": [512, 256, 512]})
    assert with_b.canonical()["eval"]["budgets"] == [256, 512] and with_b.job_id != plain.job_id
    assert with_b.eval.all_budgets() == [256, 512, 1024]
    with pytest.raises(ValueError, match="raise decoding.max_new_tokens"):
        JobConfig(**base, eval={"benchmark": "testbed", "budgets": [2048]})
