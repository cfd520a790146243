"""`copsd sweep plan --estimate`'s GPU time (copsd/training/cost.py): the length assumption's
integrals against draws, the recorded-throughput lookup, and the plan's output for the paper grid."""

from __future__ import annotations

import json
import math
import random

import pytest
from conftest import ROOT, run_cli

from copsd.spec import select
from copsd.speed.workload import make_workload
from copsd.training import cost


def test_length_integrals_match_draws_of_the_same_distribution():
    rng = random.Random(0)
    budget = 1024
    median = cost.LENGTH_MEDIAN * budget
    draws = [min(budget, rng.lognormvariate(math.log(median), cost.LENGTH_SIGMA)) for _ in range(40_000)]
    assert cost.mean_length(budget) == pytest.approx(sum(draws) / len(draws), rel=0.01)
    waves = [max(draws[i : i + 4]) for i in range(0, len(draws), 4)]
    assert cost.expected_max(budget, 4) == pytest.approx(sum(waves) / len(waves), rel=0.01)
    assert 0.13 < sum(d >= budget for d in draws) / len(draws) < 0.17  # ~15% truncated, as documented
    assert cost.expected_max(budget, 64) > 0.999 * budget  # a wave of 64 almost always hits the budget
    # the workload benchmark decodes the same distribution
    w = make_workload(250, 12, 400, 0.9, 1024, 151936, seed=0)
    assert sum(w.lengths) / len(w.lengths) == pytest.approx(cost.mean_length(1024), rel=0.03)


def test_decode_ms_follows_the_recorded_points():
    rec = cost.throughput()["h100"]["decode_ms"]["qwen3-1.7b"]
    assert cost.decode_ms("h100", "qwen3-1.7b", 128) == pytest.approx(rec[128])
    mid = cost.decode_ms("h100", "qwen3-1.7b", 64)
    assert rec[32] < mid < rec[128]
    assert cost.decode_ms("h100", "qwen3-8b", 128) > cost.decode_ms("h100", "qwen3-4b", 128) > rec[128]
    assert cost.decode_ms("h100", "qwen3-1.7b", 128, no_top_k=True) > rec[128]
    assert cost.shape_key("Qwen/Qwen3-4B") == "qwen3-4b" and cost.shape_key("builtin:testbed") is None


def test_paper_grid_cost_per_job_and_in_total(workdir):
    jobs = select(str(ROOT / "sweeps/main.yaml"), None).jobs
    costs = {j.job_id: cost.estimate_cost(j) for j in jobs}
    assert all(c is not None for c in costs.values())
    for j in jobs:
        c = costs[j.job_id]
        assert c.total_hours == pytest.approx(sum(c.hours.values()))
        assert c.static_total_hours > c.total_hours  # static waves wait for their longest sequence
        assert c.before["evaluation"] > c.hours["evaluation"]
        assert ("rollouts" in c.hours) == (j.method in ("copsd", "grpo"))
        assert set(c.hours) == {"evaluation"} if j.method == "base" else "loss" in c.hours
    by = {(j.method, j.model): costs[j.job_id].total_hours for j in jobs}
    assert by[("copsd", "Qwen/Qwen3-8B")] > by[("copsd", "Qwen/Qwen3-1.7B")] > by[("base", "Qwen/Qwen3-1.7B")]
    r = run_cli("sweep", "plan", str(ROOT / "sweeps/main.yaml"), "--estimate", "--format", "json", cwd=workdir)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    total = sum(x["cost"]["total_gpu_hours"] for x in doc["jobs"])
    assert total == pytest.approx(sum(c.total_hours for c in costs.values()), rel=1e-3)
    r = run_cli("sweep", "plan", str(ROOT / "sweeps/main.yaml"), "--estimate", "--gpus", "8", cwd=workdir)
    assert r.returncode == 0 and "GPU-hours" in r.stdout and "on 8 GPUs" in r.stdout, r.stdout[-500:]
    bad = run_cli("sweep", "plan", str(ROOT / "sweeps/main.yaml"), "--estimate", "--gpu", "a100", cwd=workdir)
    assert bad.returncode == 2 and "no recorded throughput for 'a100'" in bad.stderr and "Traceback" not in bad.stderr
