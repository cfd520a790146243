# Over 350 lines: the shared loop's tests for every method (steps, resume, schedules, teachers, rollouts) together.
"""The methods on a tiny real Qwen3: what changes, what the teacher sees, resuming, schedules,
rollouts; the training data's tests are in test_training_data.py."""

from __future__ import annotations

import random

import pytest
import torch
from training_helpers import EX, _job, _setup

from copsd.config import JobConfig
from copsd.data.languages import get_language
from copsd.errors import CopsdError
from copsd.models import load_model
from copsd.prompts import student_prompt, teacher_prompt, teacher_user_message, training_student_prompt
from copsd.training.adapters import load_adapter, saved_steps
from copsd.training.grpo_trainer import final_answer_region, reward
from copsd.training.step_stats import StepStats


def test_teacher_prompt_differs_from_student_exactly_by_privileged_context(tiny_model):
    tok, ex, lang = tiny_model.tokenizer, EX[0], "swa"
    t = get_language(lang).teacher
    student = training_student_prompt(tok, ex.problem, lang, thinking=True)
    teacher = teacher_prompt(tok, ex.problem, lang, problem_en=ex.problem_en, solution_en=ex.solution_en)
    privileged = (
        f"\n\n{t.problem_en}: {ex.problem_en}\n\n{t.solution_en}:\n{t.ref_begin}\n{ex.solution_en}\n"
        f"{t.ref_end}\n\n{t.transition}\n"
    )
    assert privileged in teacher
    assert teacher.replace(privileged, "\n\n") == student
    bare = teacher_prompt(
        tok,
        ex.problem,
        lang,
        problem_en=ex.problem_en,
        solution_en=ex.solution_en,
        include_problem_en=False,
        include_reference_solution_en=False,
    )
    assert bare == student
    no_sol = teacher_user_message(
        ex.problem, lang, problem_en=ex.problem_en, solution_en=ex.solution_en, include_reference_solution_en=False
    )
    assert ex.problem_en in no_sol and ex.solution_en not in no_sol and t.transition not in no_sol
    assert teacher.endswith("<|im_start|>assistant\n<think>\n" + get_language(lang).thinking)


def test_copsd_step_changes_only_lora_and_fixed_teacher_is_the_base(tmp_path):
    job = _job()
    trainer, lm = _setup(job, tmp_path)
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    changed = {n for n, p in trainer.model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert any("lora_B" in n for n in changed)
    ids = torch.tensor([lm.tokenizer("Swali: 2 + 2 = ?", add_special_tokens=False)["input_ids"]])
    base = load_model("builtin:tiny-qwen3", dtype="float32", device="cpu").model
    with torch.no_grad():
        ref = base(ids).logits
        student = trainer.model(ids).logits
        with trainer.teacher_weights():
            teacher = trainer.model(ids).logits
    torch.testing.assert_close(teacher, ref)
    assert not torch.allclose(student, ref)
    assert saved_steps(tmp_path / "run") == [1, 2]


def test_rollouts_are_sampled_from_the_student_prompt_alone(tmp_path, monkeypatch):
    import copsd.training.rollouts as ct  # the shared loop samples every method's rollouts

    seen = []
    real = ct.generate

    def spy(model, tok, prompts, *a, **kw):
        seen.extend(prompts)
        return real(model, tok, prompts, *a, **kw)

    monkeypatch.setattr(ct, "generate", spy)
    job = _job(max_steps=1)
    trainer, lm = _setup(job, tmp_path)
    trainer.train()
    assert len(seen) == 2
    for p in seen:
        ex = next(e for e in EX if e.problem in p)
        assert p == training_student_prompt(lm.tokenizer, ex.problem, "swa")
        assert ex.problem_en not in p and ex.solution_en not in p


@pytest.mark.parametrize("teacher", ["fixed", "live"])
def test_teacher_with_the_students_prompt_gives_zero_loss_and_gradient(tmp_path, teacher):
    job = _job(teacher=teacher, include_problem_en=False, include_reference_solution_en=False, clip=None)
    trainer, _ = _setup(job, tmp_path)
    trainer.model.train()
    loss = sum(trainer.loss_parts(EX[:2], 1, 0, StepStats()))  # rollouts, then the loss, as a step runs
    loss.backward()
    assert abs(float(loss.detach())) < 1e-6
    grads = [p.grad.abs().max() for p in trainer.params if p.grad is not None]
    assert all(float(g) < 1e-6 for g in grads)


def test_privileged_context_gives_a_nonzero_signal(tmp_path):
    trainer, _ = _setup(_job(clip=None), tmp_path)
    loss = sum(trainer.loss_parts(EX[:2], 1, 0, StepStats()))
    assert float(loss.detach()) > 1e-4


def test_chunked_and_direct_loss_agree_in_trainer(tmp_path):
    t1, _ = _setup(_job(loss_chunk_size=3), tmp_path / "a")
    t2, _ = _setup(_job(loss_chunk_size=0), tmp_path / "b")
    comps = t1.rollouts(EX[:2], 1, 0)
    l1 = sum(t1.divergence_parts(EX[:2], comps, StepStats()))
    l2 = sum(t2.divergence_parts(EX[:2], comps, StepStats()))
    torch.testing.assert_close(l1, l2)


def test_resume_after_a_crash_equals_an_uninterrupted_run(tmp_path):
    # linear decay with a warmup step: the resumed run must continue the schedule, not restart it
    job = _job(max_steps=3, warmup_steps=1)
    assert job.train.lr_scheduler == "linear"
    seen: dict[str, dict[int, dict]] = {"a": {}, "b": {}}
    random.seed(0)
    straight, _ = _setup(job, tmp_path / "a")
    for step, m in straight.steps():
        seen["a"][step] = m
    rng_after = (torch.get_rng_state(), random.getstate())
    # warmup 0 -> peak over 1 step, then linear to 0 at max_steps: multipliers 0, 1, 1/2
    assert [seen["a"][s]["lr"] for s in (1, 2, 3)] == pytest.approx([0.0, 5e-2, 2.5e-2])

    random.seed(0)
    crashed, _ = _setup(job, tmp_path / "b")
    with pytest.raises(RuntimeError, match="node lost"):
        for step, m in crashed.steps():  # yielded after the step's checkpoint
            seen["b"][step] = m
            if step == 2:
                raise RuntimeError("node lost")
    assert saved_steps(tmp_path / "b" / "run") == [1, 2]
    resumed, _ = _setup(job, tmp_path / "b")
    torch.manual_seed(12345)  # a fresh process's generators: the checkpoint's must replace them
    random.seed(12345)
    for step, m in resumed.steps():
        seen["b"][step] = m
    assert resumed.train() == 3  # nothing left to do: the last saved step
    assert [seen["b"][s]["lr"] for s in (1, 2, 3)] == [seen["a"][s]["lr"] for s in (1, 2, 3)]
    assert seen["b"][3]["loss"] == pytest.approx(seen["a"][3]["loss"], rel=1e-6)
    assert resumed.scheduler.state_dict() == straight.scheduler.state_dict()
    assert torch.equal(torch.get_rng_state(), rng_after[0]) and random.getstate() == rng_after[1]
    a = {n: p for n, p in straight.model.named_parameters() if "lora_" in n}
    b = {n: p for n, p in resumed.model.named_parameters() if "lora_" in n}
    for n in a:
        torch.testing.assert_close(a[n], b[n])


def test_checkpoint_rng_states_round_trip():
    """What resume restores: torch's and Python's generators (and every CUDA device's once CUDA is in use)."""
    from copsd.training.checkpoints import rng_states, set_rng_states

    state = rng_states()
    assert ("cuda_rng" in state) == torch.cuda.is_initialized()
    want = (torch.rand(3), random.random(), torch.rand(3, device="cuda") if "cuda_rng" in state else None)
    set_rng_states(state)
    got = (torch.rand(3), random.random(), torch.rand(3, device="cuda") if "cuda_rng" in state else None)
    assert torch.equal(got[0], want[0]) and got[1] == want[1]
    if want[2] is not None:
        assert torch.equal(got[2], want[2])


@pytest.mark.parametrize(
    ("name", "warmup", "expected"),
    [
        ("linear", 0, [1.0, 0.75, 0.5, 0.25]),  # the released default: peak -> 0 over max_steps
        ("constant", 0, [1.0, 1.0, 1.0, 1.0]),
        ("constant", 2, [0.0, 0.5, 1.0, 1.0]),
        ("cosine", 0, [1.0, 0.8535534, 0.5, 0.1464466]),
    ],
)
def test_learning_rate_schedules(name, warmup, expected):
    from copsd.training.trainer import make_scheduler

    cfg = _job(max_steps=4, lr_scheduler=name, warmup_steps=warmup).train
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = make_scheduler(opt, cfg)
    seen = []
    for _ in range(4):
        seen.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected)


class _Hostile:
    """A pickle that would run code when loaded (creates a marker file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_hostile_checkpoint_state_is_refused_not_run(tmp_path):
    job = _job(max_steps=1)
    trainer, _ = _setup(job, tmp_path)
    trainer.train()
    state = tmp_path / "run" / "checkpoints" / "step_00001" / "trainer_state.pt"
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "payload": _Hostile(marker)}, state)
    again, _ = _setup(_job(max_steps=2), tmp_path)
    with pytest.raises(CopsdError, match="not a checkpoint state copsd wrote"):
        again.train()
    assert not marker.exists()


def test_ema_teacher_as_released(tmp_path):
    """No EMA copy during step 1 (the live student teaches); the first copy is the weights after
    step 1, undecayed; then ema <- d * ema + (1 - d) * weights after each step."""
    trainer, _ = _setup(_job(teacher="ema", ema_decay=0.5, max_steps=2), tmp_path)
    assert trainer.cfg.teacher == "ema" and trainer.ema is None
    seen = [
        {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        for _step, _metrics in trainer.steps()
    ]
    after1, after2 = seen
    b = next(n for n in after1 if "lora_B" in n)
    assert float(after1[b].abs().max()) > 0
    torch.testing.assert_close(trainer.ema[b], 0.5 * after1[b] + 0.5 * after2[b])
    assert _job(teacher="ema").train.ema_decay == 0.999  # the released default


def test_ema_teacher_during_step_one_is_the_live_student(tmp_path):
    trainer, _ = _setup(_job(teacher="ema"), tmp_path)
    live = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    with trainer.teacher_weights():
        for n, p in trainer.model.named_parameters():
            assert torch.equal(p, live[n])


def test_sft_step_trains_lora_and_grpo_logs_its_diagnostics(tmp_path):
    for method in ("grpo", "sft"):
        trainer, _ = _setup(_job(method, max_steps=1), tmp_path / method)
        before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if "lora_B" in n}
        logged = [m for _step, m in trainer.steps()]
        assert "loss" in logged[0]
        if method == "sft":
            assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if n in before)
        else:  # a random model earns no reward: every group has zero variance, so no update
            assert logged[0]["zero_variance_group_share"] == 1.0 and logged[0]["reward"] == 0.0


def test_grpo_update_raises_the_likelihood_of_rewarded_completions(tmp_path):
    trainer, lm = _setup(_job("grpo", lr=1e-2), tmp_path)
    tok = lm.tokenizer
    prompt = tok(trainer.prompt(EX[0]), add_special_tokens=False)["input_ids"]
    good, bad = (
        tok("\\boxed{3}", add_special_tokens=False)["input_ids"],
        tok("no idea", add_special_tokens=False)["input_ids"],
    )

    from copsd.losses import chunked_token_logprobs
    from copsd.training.forward import completion_hidden

    def logp(c):
        with torch.no_grad():
            h = completion_hidden(trainer.decoder, [prompt], [c], tok.pad_token_id, trainer.device)
            return float(chunked_token_logprobs(h, trainer.lm_head, torch.tensor(c)).mean())

    g0, b0 = logp(good), logp(bad)
    trainer.use_groups([(EX[:1], [prompt, prompt], [good, bad], [1.0, -1.0])])
    for _ in range(3):
        trainer.optimizer.zero_grad()
        loss, _ = trainer.policy_loss([prompt, prompt], [good, bad], [1.0, -1.0], 1)
        loss.backward()
        trainer.optimizer.step()
    assert logp(good) > g0 and logp(bad) < b0


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_grpo_loss_types_aggregate_over_the_whole_step(tmp_path, loss_type):
    """At the sampling point the ratio is 1, so each token's loss value is -advantage: the step's
    loss (the mean of the micro-batch losses, as the trainer takes it) has a closed form."""
    trainer, lm = _setup(_job("grpo", loss_type=loss_type), tmp_path)
    p = lm.tokenizer(trainer.prompt(EX[0]), add_special_tokens=False)["input_ids"]
    micro = [([[5, 6, 7], [8, 9, 10, 11, 12]], [1.0, -0.5]), ([[13, 14]], [2.0])]
    trainer.use_groups([(EX[:1], [p] * len(c), c, a) for c, a in micro])
    assert (trainer.step_tokens, trainer.step_completions) == (10, 3)
    losses = [float(trainer.policy_loss([p] * len(c), c, a, len(micro))[0].detach()) for c, a in micro]
    step_loss = sum(losses) / len(micro)
    expected = {
        "dapo": -(3 * 1.0 + 5 * -0.5 + 2 * 2.0) / 10,  # every token of the step weighs the same
        "grpo": -(1.0 - 0.5 + 2.0) / 3,  # every completion weighs the same
        "bnpo": -((3 * 1.0 + 5 * -0.5) / 8 + 2.0) / 2,  # every micro-batch weighs the same
    }[loss_type]
    assert step_loss == pytest.approx(expected, abs=1e-6)


def test_grpo_trains_on_the_evaluation_prompt_as_released(tmp_path):
    trainer, lm = _setup(_job("grpo"), tmp_path)
    text = trainer.prompt(EX[0])
    assert text == student_prompt(lm.tokenizer, EX[0].problem, "swa")  # no "Problem:" label
    assert get_language("swa").teacher.problem + ":" not in text


def test_sft_opsd_recipe_trains_on_every_token(tmp_path):
    ours, lm = _setup(_job("sft"), tmp_path / "a")
    opsd, _ = _setup(_job("sft", recipe="opsd"), tmp_path / "b")
    p, c = ours.pair(EX[0])
    first, targets = opsd.pair(EX[0])
    solution = lm.tokenizer(EX[0].solution_en, add_special_tokens=False)["input_ids"]
    assert len(first) == 1 and targets[-len(solution) - 1 : -1] == solution  # prompt tokens are targets too
    text = lm.tokenizer.decode(first + targets)
    assert get_language("swa").teacher.problem + ":" not in text and EX[0].problem in text
    assert len(targets) > len(c)  # more targets than the solution-only recipe


def test_grpo_reward_grades_the_answer_after_thinking():
    assert final_answer_region("<think>\\boxed{3}</think> so \\boxed{4}") == " so \\boxed{4}"
    assert reward("<think>\\boxed{4}</think> so \\boxed{5}", "4") == 0.0
    assert reward("<think>x</think> \\boxed{4} then \\boxed{5}", "4") == 1.0  # the first box after </think>
    assert reward("thinking... \\boxed{4}", "4") == 1.0
    assert reward("no box", "4", format_weight=0.1) == 0.0
    assert reward("\\boxed{5}", "4", format_weight=0.1) == pytest.approx(0.1)


def test_load_adapter_step_zero_is_the_base(tmp_path):
    trainer, _ = _setup(_job(max_steps=1), tmp_path)
    trainer.train()
    load_adapter(trainer.model, tmp_path / "run", 0)
    assert all(float(p.abs().max()) == 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)
    load_adapter(trainer.model, tmp_path / "run", 1)
    assert any(float(p.abs().max()) > 0 for n, p in trainer.model.named_parameters() if "lora_B" in n)


def test_checkpoints_must_be_saved_steps():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="not saved steps"):
        JobConfig(
            method="copsd",
            model="m/m",
            language="swa",
            eval={"checkpoints": [3]},
            train={"save_steps": 5, "max_steps": 100},
        )
    ok = JobConfig(method="copsd", model="m/m", language="swa", eval={"checkpoints": [0, 5, 100]})
    assert ok.eval_steps() == [0, 5, 100]


@pytest.mark.parametrize("method", ["copsd", "sft"])
def test_an_exploding_run_stops_with_the_reason_and_a_hint(tmp_path, method):
    """A real blow-up (a huge learning rate), not a patched loss: the step that goes non-finite
    stops the job with a one-line reason; checkpoints before it are kept. (GRPO on a random model
    earns no reward, so its loss is exactly 0 and cannot blow up here; it shares the same check.)"""
    extra = {"clip": None} if method == "copsd" else {}  # the per-entry clip bounds COPSD's loss by design
    trainer, _ = _setup(_job(method, lr=1e30, max_steps=6, **extra), tmp_path)
    with pytest.raises(CopsdError, match=r"non-finite.* lower train\.lr"):
        trainer.train()


def test_training_with_the_fast_engine_follows_each_optimizer_step(tmp_path):
    from copsd.rollout import SamplingParams, fast, hf

    trainer, lm = _setup(_job(rollout_engine="fast", max_steps=2), tmp_path)
    logged = [m for _step, m in trainer.steps()]
    assert "_copsd_fast_engine" in trainer.model.__dict__  # rollouts came from the fast engine
    assert len(logged) == 2 and all(torch.isfinite(torch.tensor(m["loss"])) for m in logged)
    tok = lm.tokenizer
    ids = [tok(training_student_prompt(tok, e.problem, "swa"), add_special_tokens=False)["input_ids"] for e in EX[:3]]
    params = SamplingParams(temperature=0, max_new_tokens=10)
    trainer.model.eval()  # the adapters moved; the engine's shadow copies must have followed
    assert any("lora_B" in n and p.abs().sum() > 0 for n, p in trainer.model.named_parameters())
    assert fast.generate_ids(trainer.model, ids, params, [], tok.pad_token_id, 0) == hf.generate_ids(
        trainer.model, ids, params, [], tok.pad_token_id, 0
    )


@pytest.mark.parametrize("method", ["copsd", "grpo"])
def test_rollouts_of_a_step_in_one_call_equal_per_micro_batch_calls(tmp_path, method):
    """train.rollout_batch: `step` samples the whole step in one call (continuous batching in the
    fast engine), `micro` one call per micro-batch. With top-k 1 sampling is greedy, so both give
    the same rollouts and the same step; `auto` picks step for fast and micro for hf."""
    import copsd.training.rollouts as trainer_mod

    kw = {"batch_size": 4, "micro_batch_size": 2} if method == "copsd" else {"batch_size": 8, "micro_batch_size": 4}
    calls = []
    real = trainer_mod.generate

    def counting(*a, **k):
        calls.append(len(a[2]))  # prompts per call
        return real(*a, **k)

    metrics = {}
    for mode in ("micro", "step"):
        job = _job(method, rollout_engine="fast", rollout_batch=mode, top_k=1, max_steps=1, **kw)
        trainer, _ = _setup(job, tmp_path / mode)
        calls.clear()
        trainer_mod.generate = counting
        try:
            metrics[mode] = trainer.compute_step(trainer.batch_for(1, trainer.prompts_per_step()), 1)
        finally:
            trainer_mod.generate = real
        assert calls == ([2, 2] if mode == "micro" else [4])  # copsd: 2 prompts per micro; grpo: 2 groups of 2
    assert metrics["step"]["loss"] == pytest.approx(metrics["micro"]["loss"], rel=1e-5)
    assert metrics["step"]["rollout_length"] == metrics["micro"]["rollout_length"]
    auto_fast, _ = _setup(_job(method, rollout_engine="fast"), tmp_path / "a")
    auto_hf, _ = _setup(_job(method, rollout_engine="hf"), tmp_path / "b")
    assert (auto_fast.rollout_mode(), auto_hf.rollout_mode()) == ("step", "micro")
    assert "rollout_batch" not in _job(method, rollout_batch="step").canonical()["train"]  # not hashed
