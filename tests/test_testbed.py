"""The synthetic testbed: its world, its languages, the shipped model, the recipe it was built
from, and (slow) the method's regression tests on `builtin:testbed`. The full rebuild of the model
(1,000 pretraining steps, 5-11 minutes on 2 cores) runs with COPSD_TEST_REBUILD=1 (`make
test-rebuild`); every run checks the recipe's first 40 steps instead."""

from __future__ import annotations

import os

import pytest
import torch

from copsd.config import EvalConfig, JobConfig
from copsd.data.benchmarks import load_problems
from copsd.data.languages import get_language
from copsd.data.training import load_training_data
from copsd.spec import load_jobs
from copsd.testbed.world import SYNTHETIC, english_split, problems, translate


def test_world_is_deterministic_and_splits_are_disjoint():
    a, b = english_split("test", 200), english_split("test", 200)
    assert a == b and len({p.question for p in a}) == 200
    train = {p.question for p in english_split("train", 2000)}
    assert not train & {p.question for p in a}
    for p in a[:50]:
        assert p.solution.endswith(f"the answer is \\boxed{{ {p.answer} }} .")
        assert 0 <= p.answer <= 100


def test_synthetic_languages_translate_words_not_numbers():
    p = english_split("test", 1)[0]
    lo, vlo = translate(p.question, "synlo"), translate(p.question, "synvlo")
    assert lo != p.question and vlo != lo
    nums = [t for t in p.question.split() if t.isdigit()]
    assert [t for t in lo.split() if t.isdigit()] == nums
    assert translate(p.solution, "synlo").count("\\boxed{") == 1


def test_synthetic_languages_are_registered_like_real_ones():
    for code in SYNTHETIC:
        lang = get_language(code)
        assert lang.synthetic and "\\boxed{}" in lang.instruction
        probs = load_problems("testbed", code)
        assert len(probs) == 200 and probs[0].question == problems(code, "test", 1)[0][0]
        train, val = load_training_data(code, val_size=32)
        assert len(train) == 1968 and train[0].problem != train[0].problem_en
    job = JobConfig(method="copsd", model="builtin:testbed", language="synlo", eval={"benchmark": "testbed"})
    assert job.language == "synlo"


def test_demo_spec_plans_the_methods_on_the_synthetic_languages():
    from copsd.spec import resolve_spec_path

    _, jobs = load_jobs(resolve_spec_path("demo"))
    methods = {(j.method, j.language) for j in jobs}
    for m in ("copsd", "grpo", "sft"):
        assert (m, "synlo") in methods and (m, "synvlo") in methods and (m, "eng") not in methods
    assert ("base", "eng") in methods and len(jobs) == 15


# ---- the shipped model and a rebuild ---------------------------------------------------------------
# Greedy accuracy (%) of the shipped model on the 200 test problems, measured when it was shipped
# (docs/testbed.md). Greedy decoding of the same weights can flip a near-tie on another CPU: the
# tolerance allows 3 of 200 problems.
SHIPPED_BASE = {"eng": 77.5, "synlo": 41.0, "synvlo": 37.5}
TOLERANCE = 1.5


def test_builtin_testbed_is_the_shipped_model_on_every_machine():
    from copsd.models import load_model
    from copsd.models.load import resolve_model_source
    from copsd.testbed.build import SHIPPED, shipped_path

    assert shipped_path() == SHIPPED and resolve_model_source("builtin:testbed") == str(SHIPPED)
    lm = load_model("builtin:testbed", dtype="float32", device="cpu")
    for lang, expected in SHIPPED_BASE.items():
        assert abs(_accuracy(lm.model, lm.tokenizer, lang) - expected) <= TOLERANCE, lang


def test_other_english_prompts_mean_another_testbed_model(tmp_path, monkeypatch):
    from copsd.data.languages import get_language
    from copsd.testbed.build import shipped_path, testbed_path

    before = testbed_path()
    f = tmp_path / "eng.yaml"
    f.write_text("eng:\n  thinking: 'I will think in English now.'\n")
    monkeypatch.setenv("COPSD_LANGUAGES", str(f))
    assert get_language("eng").thinking == "I will think in English now."
    assert shipped_path() is None and testbed_path() != before  # would be rebuilt, not silently reused


# The recipe's loss at pretraining steps 1, 20 and 40 (2026-11-27, 2-core x86_64, torch
# 2.13.0+cpu; identical to 5 decimals with 1 and 2 threads). Another CPU rounds differently, which
# 40 steps of a 1M-parameter fp32 model amplify far less than the 2% allowed; a change of the
# corpus, tokenizer, initialisation, batch sampling, learning rate or schedule moves them more (a
# learning rate 10% higher: step 40 at 2.106, -8.6%).
RECIPE_LOSSES = {1: 6.13268, 20: 4.64733, 40: 2.30471}


def test_the_recipe_still_builds_what_was_shipped():
    """The recipe makes the shipped tokenizer exactly, the shipped architecture, and the loss curve
    its pretraining started on: a cheap guard for the 1,000-step rebuild below."""
    import json

    from copsd.testbed.build import SHIPPED, pretrain

    tok, model, losses = pretrain(log=lambda _: None, stop_after=max(RECIPE_LOSSES))
    shipped = json.loads((SHIPPED / "tokenizer.json").read_text(encoding="utf-8"))
    assert tok.get_vocab() == shipped["model"]["vocab"]
    config = json.loads((SHIPPED / "config.json").read_text(encoding="utf-8"))
    for key in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        assert getattr(model.config, key) == config[key], key
    for step, expected in RECIPE_LOSSES.items():
        assert losses[step - 1] == pytest.approx(expected, rel=0.02), (step, losses[step - 1])


@pytest.mark.slow
@pytest.mark.skipif(
    not os.environ.get("COPSD_TEST_REBUILD"),
    reason="the full rebuild takes 5-11 minutes: COPSD_TEST_REBUILD=1 (make test-rebuild) runs it",
)
def test_a_rebuild_from_the_recipe_lands_near_the_shipped_model():
    """Pretraining from scratch is not bit-reproducible across CPUs; a rebuild must still make the
    same kind of model: English within 10 points of the shipped one, each synthetic language clearly
    learnable (above 5%) and below English."""
    from copsd.models import load_model
    from copsd.testbed.build import build_testbed_cached

    path = build_testbed_cached()
    lm = load_model(str(path), dtype="float32", device="cpu")
    acc = {lang: _accuracy(lm.model, lm.tokenizer, lang) for lang in SHIPPED_BASE}
    assert abs(acc["eng"] - SHIPPED_BASE["eng"]) <= 10, acc
    for lang in ("synlo", "synvlo"):
        assert 5 <= acc[lang] < acc["eng"], acc


# ---- regression tests of the method (slow: each post-trains the testbed model) ---------------------

GREEDY = EvalConfig(
    benchmark="testbed", decoding={"n_samples": 1, "temperature": 0.0, "max_new_tokens": 40}, batch_size=200
)


def _accuracy(model, tok, lang: str) -> float:
    from copsd.evaluation.evaluate import evaluate

    model.eval()
    return 100 * evaluate(model, tok, load_problems("testbed", lang), lang, GREEDY).metrics["accuracy"]


def _post_train(tmp_path, trainer_cls=None, steps=50, **copsd):
    from copsd.models import load_model
    from copsd.training import CopsdTrainer
    from copsd.training.adapters import wrap_lora

    train = {
        "batch_size": 16,
        "micro_batch_size": 16,
        "max_steps": steps,
        "save_steps": steps,
        "lr": 1e-3,
        "lora": {"r": 16, "alpha": 32},
        "clip": None,
        "max_completion_length": 32,
        **copsd,
    }
    job = JobConfig(
        method="copsd",
        model="builtin:testbed",
        language="synlo",
        dtype="float32",
        eval={"benchmark": "testbed"},
        train=train,
    )
    lm = load_model("builtin:testbed", dtype="float32", device="cpu")
    model = wrap_lora(lm.model, job.train.lora, 0)
    before = {lang: _accuracy(model, lm.tokenizer, lang) for lang in ("synlo", "eng")}
    examples, _ = load_training_data("synlo", val_size=32)
    (trainer_cls or CopsdTrainer)(job, model, lm.tokenizer, examples, tmp_path / "run").train()
    after = {lang: _accuracy(model, lm.tokenizer, lang) for lang in ("synlo", "eng")}
    return before, after


@pytest.mark.slow
def test_copsd_closes_most_of_the_gap_without_hurting_english(tmp_path):
    before, after = _post_train(tmp_path)
    assert after["synlo"] - before["synlo"] >= 20, (before, after)
    assert before["eng"] - after["eng"] <= 5, (before, after)


@pytest.mark.slow
def test_without_privileged_context_there_is_nothing_to_learn(tmp_path):
    """Teacher prompt == student prompt and a fixed teacher == the initial student: the divergence
    is zero up to float rounding (which AdamW's normalisation turns into small random steps), so
    the LRL does not improve, unlike with the privileged context (>= 20 points)."""
    before, after = _post_train(tmp_path, include_problem_en=False, include_reference_solution_en=False)
    assert after["synlo"] - before["synlo"] < 5, (before, after)


@pytest.mark.slow
def test_swapping_student_and_teacher_roles_does_not_help(tmp_path):
    from copsd.training import CopsdTrainer

    class Swapped(CopsdTrainer):
        """The student sees the privileged prompt and the teacher the plain one (roles swapped)."""

        def student_ids(self, ex):
            return CopsdTrainer.teacher_ids(self, ex)

        def teacher_ids(self, ex):
            return CopsdTrainer.student_ids(self, ex)

    before, after = _post_train(tmp_path, trainer_cls=Swapped)
    assert after["synlo"] - before["synlo"] < 10, (before, after)


@pytest.mark.slow
def test_teacher_with_students_prompt_gives_zero_loss_and_gradient_on_the_testbed(tmp_path):
    from copsd.models import load_model
    from copsd.training import CopsdTrainer, StepStats
    from copsd.training.adapters import wrap_lora

    job = JobConfig(
        method="copsd",
        model="builtin:testbed",
        language="synvlo",
        dtype="float32",
        eval={"benchmark": "testbed"},
        train={
            "batch_size": 8,
            "micro_batch_size": 8,
            "max_steps": 1,
            "max_completion_length": 32,
            "include_problem_en": False,
            "include_reference_solution_en": False,
        },
    )
    lm = load_model("builtin:testbed", dtype="float32", device="cpu")
    tr = CopsdTrainer(
        job, wrap_lora(lm.model, job.train.lora, 0), lm.tokenizer, load_training_data("synvlo")[0][:8], tmp_path / "run"
    )
    comps = tr.rollouts(tr.examples, 1, 0)
    loss = sum(tr.divergence_parts(tr.examples, comps, StepStats()))
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6
    assert all(float(p.grad.abs().max()) < 1e-6 for p in tr.params if p.grad is not None)
    assert sum(map(len, comps)) > 0
    assert torch.isfinite(loss)
