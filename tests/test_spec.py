"""Spec expansion, job ids, and the errors a malformed spec gives."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, run_cli

from copsd.config import JobConfig
from copsd.errors import SpecError
from copsd.spec import expand, filter_jobs, load_jobs, parse_spec

MAIN = ROOT / "sweeps" / "main.yaml"


def test_main_grid_has_204_unique_stable_ids():
    _, jobs = load_jobs(MAIN)
    assert len(jobs) == 204
    ids = [j.job_id for j in jobs]
    assert len(set(ids)) == 204
    _, again = load_jobs(MAIN)
    assert [j.job_id for j in again] == ids
    by_method = {m: sum(j.method == m for j in jobs) for m in ("base", "copsd", "grpo", "sft")}
    assert by_method == {"base": 51, "copsd": 51, "grpo": 51, "sft": 51}


@pytest.mark.parametrize(
    "spec, first, last, digest",
    [
        ("main", ["5279b9d6ada6", "8967e17f5832", "154588eb78b0"], "ff9db2351c2f", "f9938f181ca92271"),
        ("demo", ["eea07fdba869", "5f68890426bf", "235d3aab401a"], "a38e48a85595", "38f9e32aa69a962b"),
    ],
)
def test_job_ids_are_pinned(spec, first, last, digest):
    """Job ids are results' keys: a refactor must not move them (re-pinned in 0.2.0, when the
    schedule, grader and prompt fingerprint joined the config; demo re-pinned in 0.3.0 for its budgets; a deliberate change of what is
    hashed updates these and says so in CHANGELOG.md)."""
    import hashlib

    _, jobs = load_jobs(ROOT / "sweeps" / f"{spec}.yaml")
    ids = [j.job_id for j in jobs]
    assert ids[:3] == first and ids[-1] == last
    assert hashlib.sha256(",".join(ids).encode()).hexdigest()[:16] == digest


def test_main_grid_uses_paper_settings():
    _, jobs = load_jobs(MAIN)
    c = next(j for j in jobs if j.method == "copsd")
    assert (c.train.lr, c.train.max_grad_norm, c.train.batch_size, c.train.max_steps) == (5e-6, 0.1, 32, 100)
    assert (c.train.temperature, c.train.top_p, c.train.top_k, c.train.clip) == (1.1, 0.95, 20, 0.05)
    assert (c.train.lora.r, c.train.lora.alpha, c.train.divergence, c.train.teacher) == (64, 128, "forward_kl", "fixed")
    d = c.eval.decoding
    assert (d.n_samples, d.temperature, d.top_p, d.top_k, d.max_new_tokens) == (12, 1.0, 0.95, 0, 1024)
    assert c.eval.thinking


def test_main_grid_follows_the_released_protocol():
    """Base + steps 5..50 per trained job, linear decay to 0 over 100 steps, the paper grader."""
    _, jobs = load_jobs(MAIN)
    for j in jobs:
        assert j.eval.grader == "paper" and j.eval.benchmark == "afrimgsm" and j.eval.split == "test"
        if j.method == "base":
            assert j.eval_steps() == [0]
        else:
            assert j.eval_steps() == list(range(5, 51, 5))
            assert (j.train.lr_scheduler, j.train.warmup_steps, j.train.max_steps) == ("linear", 0, 100)
    g = next(j for j in jobs if j.method == "grpo")
    assert (g.train.loss_type, g.train.num_generations, g.train.temperature) == ("dapo", 8, 1.2)


def test_polymath_spec_is_the_released_generalization_recipe():
    _, jobs = load_jobs(ROOT / "sweeps" / "polymath.yaml")
    assert {j.language for j in jobs} == {"ben", "swa", "tel", "tha", "zho", "spa", "rus", "jpn"}
    assert {j.method for j in jobs} == {"base", "copsd"} and len(jobs) == 16
    for j in jobs:
        assert j.model == "Qwen/Qwen3-4B" and (j.eval.benchmark, j.eval.split) == ("polymath_hub", "low")
        d = j.eval.decoding
        assert (d.n_samples, d.temperature, d.top_p, d.max_new_tokens) == (12, 1.0, 0.95, 8192)
        if j.method == "copsd":
            assert j.eval_steps() == list(range(5, 51, 5))
            assert (j.train.max_steps, j.train.max_examples, j.train.max_completion_length) == (100, 3000, 2048)


def test_plan_json_is_identical_across_processes(workdir):
    a = run_cli("sweep", "plan", str(MAIN), "--format", "json", cwd=workdir)
    b = run_cli("sweep", "plan", str(MAIN), "--format", "json", cwd=workdir)
    assert a.returncode == 0, a.stderr
    ja, jb = json.loads(a.stdout), json.loads(b.stdout)
    assert ja["n_jobs"] == 204
    assert [j["id"] for j in ja["jobs"]] == [j["id"] for j in jb["jobs"]]
    assert not (workdir / "experiments.db").exists(), "a plan is a dry run and must not create the database"


def test_changing_one_hyperparameter_changes_only_affected_ids(tmp_path):
    raw = yaml.safe_load(MAIN.read_text())
    before = {(j.method, j.model, j.language): j.job_id for j in expand(parse_spec(raw))}
    raw["methods"]["copsd"]["train"]["lr"] = 1e-5
    after = {(j.method, j.model, j.language): j.job_id for j in expand(parse_spec(raw))}
    changed = {k for k in before if before[k] != after[k]}
    assert changed and all(k[0] == "copsd" for k in changed)
    assert len(changed) == 51


def test_matrix_over_hyperparameter_and_dedup():
    spec = parse_spec(
        {
            "name": "x",
            "defaults": {"model": "m/m", "eval": {"benchmark": "mgsm"}},
            "matrix": {"language": ["swa"], "method": ["base", "copsd"], "train.lr": [1e-5, 2e-5]},
        }
    )
    jobs = expand(spec)
    # base ignores train.lr and is merged into one job; copsd gets both values
    assert sorted(j.method for j in jobs) == ["base", "copsd", "copsd"]
    assert {j.train.lr for j in jobs if j.method == "copsd"} == {1e-5, 2e-5}


def test_alias_and_canonical_code_give_same_id():
    a = JobConfig(method="base", model="m/m", language="sw", eval={"benchmark": "mgsm"})
    b = JobConfig(method="base", model="m/m", language="swa", eval={"benchmark": "mgsm"})
    assert a.language == "swa" and a.job_id == b.job_id


def test_unhashed_location_fields():
    a = JobConfig(method="base", model="m/m", language="swa", eval={"data_dir": "/a"})
    b = JobConfig(method="base", model="m/m", language="swa", eval={"data_dir": "/b"})
    c = JobConfig(method="base", model="m/m", language="swa", eval={"limit": 5})
    assert a.job_id == b.job_id != c.job_id


def test_rollout_engine_is_not_part_of_the_job_id():
    """Engines sample the same distribution; switching to `fast` keeps a DB's results valid."""
    a = JobConfig(
        method="copsd",
        model="m/m",
        language="swa",
        eval={"rollout_engine": "hf"},
        train={"method": "copsd", "rollout_engine": "hf"},
    )
    b = JobConfig(method="copsd", model="m/m", language="swa")
    assert a.job_id == b.job_id and b.eval.rollout_engine == b.train.rollout_engine == "auto"
    with pytest.raises(ValueError, match="rollout_engine"):
        JobConfig(method="base", model="m/m", language="swa", eval={"rollout_engine": "vllm"})


def test_job_config_yaml_round_trip():
    _, jobs = load_jobs(MAIN)
    for j in (jobs[0], next(x for x in jobs if x.method == "grpo")):
        assert JobConfig.from_yaml(j.to_yaml()) == j
        assert JobConfig.from_yaml(j.to_yaml()).job_id == j.job_id


@pytest.mark.parametrize(
    "mutate, expect",
    [
        (
            lambda r: r["defaults"]["eval"].update(decodng={}),
            ["unknown field 'defaults.eval.decodng'", "did you mean 'decoding'"],
        ),
        (lambda r: r["matrix"].update(language=["swa", "xyz"]), ["matrix.language[1]", "unknown language 'xyz'"]),
        (lambda r: r["matrix"].update(method=["base", "ppo"]), ["matrix.method[1]", "unknown method 'ppo'"]),
        (lambda r: r["methods"]["copsd"]["train"].update(lr="fast"), ["methods.copsd.train.lr", "valid number"]),
        (lambda r: r["methods"]["copsd"]["train"].update(divergnce="jsd"), ["unknown field", "divergence"]),
        (lambda r: r.update(matrx={}), ["unknown field 'matrx'", "did you mean 'matrix'"]),
        (lambda r: r["matrix"].update(seed=[]), ["matrix.seed", "empty list"]),
        (
            lambda r: r["defaults"]["eval"].update(benchmark="mgsm"),
            ["benchmark 'mgsm' has no language 'amh'", "language=amh"],
        ),
    ],
)
def test_spec_errors_name_file_and_field(tmp_path, mutate, expect):
    raw = yaml.safe_load(MAIN.read_text())
    mutate(raw)
    p = tmp_path / "bad.yaml"
    p.write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError) as ei:
        load_jobs(p)
    msg = str(ei.value)
    assert "\n" not in msg and str(p) in msg
    for e in expect:
        assert e in msg, msg


def test_not_yaml_and_missing_file(tmp_path):
    p = tmp_path / "broken.yaml"
    p.write_text("name: x\nmatrix: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML at line"):
        load_jobs(p)
    with pytest.raises(SpecError, match="spec file not found"):
        load_jobs(tmp_path / "nope.yaml")


def test_only_filter():
    _, jobs = load_jobs(MAIN)
    sel = filter_jobs(jobs, ["method=base,copsd", "language=swa", "model=Qwen/Qwen3-4B"])
    assert sorted(j.method for j in sel) == ["base", "copsd"]
    assert len(filter_jobs(jobs, ["train.lr=5e-06"])) == 153
    with pytest.raises(SpecError):
        filter_jobs(jobs, ["nonsense"])


def test_cli_spec_error_is_one_line_without_traceback(workdir):
    p = Path(workdir) / "bad.yaml"
    p.write_text("name: bad\nmatrix:\n  language: [swa, klingon]\n  method: [base]\n")
    r = run_cli("sweep", "plan", str(p), cwd=workdir)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr and "klingon" in r.stderr and "matrix.language[1]" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_heartbeat_must_be_well_under_the_stale_limit():
    raw = {"name": "x", "defaults": {"model": "m", "method": "base"}, "matrix": {"language": ["swa"]}}
    with pytest.raises(SpecError, match=r"runner.heartbeat_s \(600\) must be at most a third of runner.stale_after_s"):
        parse_spec({**raw, "runner": {"heartbeat_s": 600, "stale_after_s": 600}})
    assert parse_spec({**raw, "runner": {"heartbeat_s": 30, "stale_after_s": 90}}).runner.heartbeat_s == 30
