"""The memory preflight (copsd.training.memory): the estimate's parts scale as the shapes say,
`copsd sweep plan --estimate` estimates the paper's grid without loading anything, and a job that
cannot fit fails before its weights load, in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from copsd.config import JobConfig
from copsd.errors import CopsdError
from copsd.models.shapes import KNOWN_SHAPES, model_shape
from copsd.training.host_memory import host_memory
from copsd.training.memory import estimate

ROOT = Path(__file__).resolve().parents[1]
QWEN = "Qwen/Qwen3-1.7B"
SHAPE = KNOWN_SHAPES[QWEN]


def _job(method: str = "copsd", eval_: dict | None = None, **train) -> JobConfig:
    return JobConfig.model_validate(
        {"method": method, "model": QWEN, "language": "swa", "eval": eval_ or {}, "train": train}
    )


def _loss(job: JobConfig, part: str = "activations") -> int:
    return estimate(job, SHAPE, "cuda").phases["loss step"][part]


@pytest.mark.parametrize("method", ["copsd", "grpo", "sft"])
def test_activations_double_with_the_micro_batch(method):
    for ckpt in (True, False):
        small = _loss(_job(method, micro_batch_size=8, gradient_checkpointing=ckpt))
        assert _loss(_job(method, micro_batch_size=16, gradient_checkpointing=ckpt)) == 2 * small


@pytest.mark.parametrize("method", ["copsd", "grpo", "sft"])
def test_checkpointing_lowers_activations_and_the_loss_step(method):
    on, off = _job(method, gradient_checkpointing=True), _job(method, gradient_checkpointing=False)
    assert _loss(on) < _loss(off) / 4  # each layer's input instead of its every intermediate
    assert estimate(on, SHAPE).total("loss step") < estimate(off, SHAPE).total("loss step")


def test_a_token_cap_bounds_activations_whatever_the_micro_batch():
    seq = 256 + 2048  # the assumed prompt + a full GRPO completion
    capped = {_loss(_job("grpo", micro_batch_size=m, max_tokens_per_forward=2 * seq)) for m in (2, 4, 8, 16)}
    assert len(capped) == 1  # two sequences per forward at most, however many the micro-batch holds
    assert capped.pop() == _loss(_job("grpo", micro_batch_size=2))
    assert _loss(_job("grpo", micro_batch_size=8, max_tokens_per_forward=1)) == _loss(_job("grpo", micro_batch_size=1))


def test_the_kv_cache_scales_with_rows_and_tokens():
    def kv(batch: int, new: int) -> int:
        job = _job("copsd", eval_={"batch_size": batch, "decoding": {"max_new_tokens": new}})
        return estimate(job, SHAPE).phases["evaluation"]["kv cache"]

    assert kv(128, 1024) == 2 * kv(64, 1024)
    assert kv(64, 2304) == 2 * kv(64, 1024)  # (prompt 256 + new) positions, in the fast engine's buckets of 128
    # a smaller problem set decodes fewer rows than eval.batch_size
    few = estimate(_job(eval_={"batch_size": 64}), SHAPE, "cuda", n_problems=2)  # 2 problems x 12 samples
    assert few.phases["evaluation"]["kv cache"] * 64 == kv(64, 1024) * 24


def test_parts_are_the_documented_sizes():
    e = estimate(_job("copsd"), SHAPE, "cuda")
    assert e.dtype == "bfloat16"
    # Qwen3-1.7B: 1.41B parameters besides the embedding (its model card) + 0.31B tied embedding
    assert abs(e.phases["loss step"]["weights"] / 2 - 1.72e9) < 0.01e9
    assert e.phases["loss step"]["lora params"] == 4 * 28 * 64 * (4096 + 3072 * 2 + 4096 + 8192 * 3)
    assert e.phases["loss step"]["logits chunk"] == 256 * 151936 * 4 * 6
    cpu = estimate(_job("copsd"), SHAPE, "cpu")  # a CPU computes in fp32 whatever the spec says
    assert cpu.dtype == "float32" and cpu.phases["loss step"]["weights"] == 2 * e.phases["loss step"]["weights"]
    assert set(e.phases) == {"evaluation", "rollout", "teacher forward", "loss step"}
    assert set(estimate(_job("sft"), SHAPE).phases) == {"evaluation", "loss step"}


def test_shapes_are_known_without_weights_or_network(tmp_path):
    assert model_shape("builtin:tiny-qwen3").layers == 2
    assert model_shape("Qwen/Qwen3-8B").tied is False
    assert model_shape("nobody/unknown-model") is None  # offline (tests) and not in the table
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(_TINY_CONFIG))
    assert model_shape(str(d)).vocab == 1024


def test_sweep_plan_estimates_the_paper_grid(workdir, monkeypatch):
    from typer.testing import CliRunner

    from copsd.cli.app import app

    monkeypatch.setenv("COLUMNS", "250")
    spec = str(ROOT / "sweeps" / "main.yaml")
    r = CliRunner().invoke(app, ["sweep", "plan", spec, "--estimate", "--format", "json"])
    assert r.exit_code == 0, r.output
    jobs = json.loads(r.stdout)["jobs"]
    assert len(jobs) == 204
    assert all(j["estimate"] and j["estimate"]["peak_gib"] > 1 for j in jobs)
    by = {(j["method"], j["model"]): j["estimate"] for j in jobs}
    assert by[("base", "Qwen/Qwen3-8B")]["phase"] == "evaluation"
    assert by[("grpo", "Qwen/Qwen3-8B")]["peak_gib"] > by[("grpo", "Qwen/Qwen3-1.7B")]["peak_gib"]
    r = CliRunner().invoke(app, ["sweep", "plan", spec, "--estimate", "--only", "method=grpo"])
    assert r.exit_code == 0, r.output
    assert "peak GiB (cuda)" in r.stdout and "peak phase" in r.stdout


_TINY_CONFIG = {  # builtin:tiny-qwen3's shape, fp32, as a config.json with no weights beside it
    "model_type": "qwen3",
    "architectures": ["Qwen3ForCausalLM"],
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "tie_word_embeddings": True,
    "torch_dtype": "float32",
}


def _huge_job(tmp_path):
    """A base job on a weightless copy of the tiny shape whose evaluation cache is far too big:
    4,096 rows x (256 + 2^20) positions x 512 bytes of fp32 K/V per token, about 2 TiB."""
    model = tmp_path / "tiny"
    model.mkdir()
    (model / "config.json").write_text(json.dumps(_TINY_CONFIG))
    eval_ = {
        "benchmark": "mgsm",
        "limit": 1,
        "batch_size": 4096,
        "decoding": {"n_samples": 4096, "max_new_tokens": 2**20},
    }
    job = JobConfig.model_validate(
        {"method": "base", "model": str(model), "language": "swa", "dtype": "float32", "eval": eval_}
    )
    return job, model


def test_a_cpu_job_larger_than_ram_fails_before_loading_weights(tmp_path):
    """A model directory with a config.json and no weights: had the job got as far as loading, it
    would fail for the missing weights; it fails on the estimate instead, in one line."""
    from copsd.run.job import JobPlan, run_job

    job, model = _huge_job(tmp_path)
    est = estimate(job, model_shape(str(model)), "cpu", n_problems=1)
    assert est.phase == "evaluation" and est.peak > host_memory()[1]  # honestly more than this machine has
    with pytest.raises(CopsdError) as info:
        list(run_job(job, JobPlan(tmp_path / "runs", device="cpu")))
    msg = str(info.value)
    assert "\n" not in msg
    assert "estimated peak memory" in msg and "exceeds this machine's RAM" in msg
    assert "eval.batch_size" in msg and "--no-preflight" in msg


def test_no_preflight_lets_the_job_go_on_to_load(tmp_path):
    """`RunOptions.preflight` (`copsd sweep run --no-preflight`) reaches the job: the same job gets
    past the estimate and fails where it would without it, on the missing weights."""
    from copsd.run.sweep import RunOptions, run_sweep

    job, model = _huge_job(tmp_path)
    errors = {}
    for preflight in (True, False):
        opts = RunOptions(
            db_url=f"sqlite:///{tmp_path / f'{preflight}.db'}",
            device="cpu",
            mlflow=False,
            isolate=False,
            progress=False,
            preflight=preflight,
        )
        errors[preflight] = run_sweep("pf", [job], opts).errors[job.job_id]
    assert "estimated peak memory" in errors[True]
    assert "estimated peak memory" not in errors[False] and "tiny" in errors[False]


def test_the_plan_estimate_loads_no_torch_yet_uses_the_fast_engines_own_cache_layout():
    """The estimate reads the fast engine's cache arithmetic (`rollout.fast.layout`) without loading
    torch: `sweep plan --estimate` stays light."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from copsd.training import memory\n"
        "from copsd.rollout.fast import layout\n"
        "assert memory._kv_positions('fast', 255, 129) == layout.capacity(255, 129) == 512\n"
        "assert 'torch' not in sys.modules, 'torch was loaded'\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
