"""Bounded memory changes no number: sub-batched forwards under `train.max_tokens_per_forward`,
GRPO's per-sequence micro-batches and gradient checkpointing give the loss and the gradients of
one unbounded forward per micro-batch (tiny Qwen3, float32), for every method and GRPO
aggregation; and the memory settings stay out of the job id."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from training_helpers import EX, _job, _setup, divergence_loss

from copsd.config import JobConfig
from copsd.training.trainer import StepStats, sequence_batches


def _trainer(method, tmp_path, **train):
    trainer, lm = _setup(_job(method, **train), tmp_path)
    torch.manual_seed(1)
    with torch.no_grad():  # non-zero B: every LoRA matrix gets a gradient
        for n, p in trainer.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    trainer.model.train()
    trainer.optimizer.zero_grad(set_to_none=True)
    return trainer, lm


def _grads(trainer) -> dict[str, torch.Tensor]:
    out = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    assert out and any(float(g.abs().max()) > 0 for g in out.values())
    return out


def _same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for n in a:
        torch.testing.assert_close(a[n], b[n], rtol=2e-4, atol=1e-7, msg=n)


def test_sequence_batches_respect_both_caps():
    assert sequence_batches([5, 3, 9, 2], 4) == [[0, 1, 2, 3]]
    assert sequence_batches([5, 3, 9, 2], 2) == [[0, 1], [2, 3]]
    assert sequence_batches([5, 3, 9, 2], 4, max_tokens=10) == [[0, 1], [2], [3]]  # 9 alone; 2 x 9 > 10
    assert sequence_batches([12, 3], 4, max_tokens=10) == [[0], [1]]  # longer than the cap: alone
    assert sequence_batches([], 4, max_tokens=10) == []
    for lengths in ([7, 1, 4, 4, 9, 2, 3], [1] * 9):
        for cap in (1, 5, 9, 16):
            groups = sequence_batches(lengths, 3, cap)
            assert [i for g in groups for i in g] == list(range(len(lengths)))
            assert all(len(g) <= 3 and (len(g) == 1 or len(g) * max(lengths[i] for i in g) <= cap) for g in groups)


def test_memory_settings_are_not_in_the_job_id():
    base = dict(method="grpo", model="m/m", language="swa")
    a = JobConfig(**base)
    b = JobConfig(**base, train={"gradient_checkpointing": False, "max_tokens_per_forward": 4096})
    assert a.job_id == b.job_id and a.train.gradient_checkpointing and a.train.max_tokens_per_forward == 0


@pytest.mark.parametrize("method", ["sft", "copsd"])
def test_capped_step_equals_one_forward_per_micro_batch(tmp_path, method):
    """The whole step (rollouts, forwards, backward) with a cap that forwards every sequence alone
    and checkpointing on, against one forward per micro-batch without checkpointing."""
    ref, _ = _trainer(method, tmp_path / "a", batch_size=4, gradient_checkpointing=False)
    capped, _ = _trainer(method, tmp_path / "b", batch_size=4, max_tokens_per_forward=1)
    assert capped.decoder.gradient_checkpointing and not ref.decoder.gradient_checkpointing
    examples = ref.batch_for(1, 4)
    # the unbounded path: one forward per micro-batch
    n_micro = 2
    want_loss, diags = 0.0, []
    for index, batch in enumerate([examples[:2], examples[2:]]):
        if method == "sft":
            pairs = [ref.pair(ex) for ex in batch]
            ps, cs = [p for p, _ in pairs], [c for _, c in pairs]
            loss = -ref.target_logprob_sum(ps, cs) / sum(len(c) for c in cs)
        else:
            loss, diag = divergence_loss(ref, batch, ref.rollouts(batch, 1, index))
            diags.append(diag["divergence_unclipped"])
        (loss / n_micro).backward()
        want_loss += float(loss.detach()) / n_micro
    got = capped.compute_step(examples, 1)
    assert got["loss"] == pytest.approx(want_loss, rel=1e-5)
    if method == "copsd":  # the diagnostics see the same tokens
        assert got["divergence_unclipped"] == pytest.approx(sum(diags) / n_micro, rel=1e-5)
    _same(_grads(ref), _grads(capped))


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "bnpo"])
def test_grpo_sequence_micro_batches_equal_whole_groups(tmp_path, loss_type):
    """Two prompts x 4 completions of different lengths (2 micro-batches of one group each):
    forwards of 2 sequences (micro_batch_size) and of 1 (the token cap) against one forward per
    group, with the k3 KL on; the step's normalisers from `prepare_step` are kept."""
    kw = dict(loss_type=loss_type, num_generations=4, batch_size=8, micro_batch_size=2, kl_coef=0.1)
    runs = {}
    for name, extra in [
        ("whole", {"gradient_checkpointing": False}),
        ("seq", {}),
        ("cap", {"max_tokens_per_forward": 1}),
    ]:
        trainer, lm = _trainer("grpo", tmp_path / name, **kw, **extra)
        p = [lm.tokenizer(trainer.prompt(ex), add_special_tokens=False)["input_ids"] for ex in EX[:2]]
        comps = [[[5, 6, 7], [8, 9, 10, 11, 12], [13], [14, 15, 16, 17]], [[20, 21], [22] * 7, [23, 24, 25], [26]]]
        adv = [[1.0, -0.5, 0.3, -0.8], [-1.2, 0.7, 0.2, 0.3]]
        groups = [([EX[i]], [p[i]] * 4, comps[i], adv[i]) for i in range(2)]

        def prepare(micro, step, stats, trainer=trainer, groups=groups):
            trainer.use_groups(groups)

        trainer.prepare_step = prepare
        if name == "whole":  # the unbounded path: each micro-batch's whole groups in one forward
            prepare(None, 1, None)
            loss = 0.0
            kls = []
            for _ex, ps, cs, a in groups:
                part, kl = trainer.policy_loss(ps, cs, a, len(groups))
                (part / len(groups)).backward()
                loss += float(part.detach()) / len(groups)
                kls.append(kl)
            runs[name] = ({"loss": loss, "kl": sum(kls) / len(kls)}, _grads(trainer))
        else:
            metrics = trainer.compute_step(EX[:2], 1)
            runs[name] = (metrics, _grads(trainer))
    want, want_grads = runs["whole"]
    for name in ("seq", "cap"):
        got, grads = runs[name]
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-8), name
        assert got["kl"] == pytest.approx(want["kl"], rel=1e-4, abs=1e-9), name
        _same(want_grads, grads)


def test_capped_loss_parts_sum_to_the_one_forward_loss(tmp_path):
    """Under the token cap a micro-batch's loss comes in parts, one per forward, that sum to its
    loss in one forward."""
    capped, _ = _trainer("sft", tmp_path / "a", max_tokens_per_forward=1)
    whole, _ = _trainer("sft", tmp_path / "b")
    parts = list(capped.loss_parts(EX[:2], 1, 0, StepStats()))
    (one,) = whole.loss_parts(EX[:2], 1, 0, StepStats())
    assert len(parts) == 2
    torch.testing.assert_close(one, parts[0] + parts[1])


_FRAGMENT = """
import sys, torch
from copsd.training.host_memory import return_freed_memory
def rss(): return int(open('/proc/self/statm').read().split()[1]) * 4096 / 2**20
if sys.argv[1] == "on":
    assert return_freed_memory()
x = torch.ones(4 * 2**20, dtype=torch.uint8); del x  # a freed large block raises glibc's threshold
base = rss()
big, keep = [], []
for i in range(200):  # mid-sized blocks freed later, small ones kept between them (a training step's pattern)
    big.append(torch.ones(3 * 2**20, dtype=torch.uint8))
    keep.append(torch.ones(16 * 1024, dtype=torch.uint8))
del big
print(rss() - base)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_cpu_jobs_return_freed_memory_to_the_os(tmp_path):
    """glibc keeps freed mid-sized blocks in a fragmented heap (a real CPU GRPO step of SmolLM2 held
    9.1 GiB resident for 2.1 GiB in use); `return_freed_memory`, which run_job calls on CPU, makes
    them go back: 600 MiB freed between kept blocks stay resident without it, not with it."""
    script = tmp_path / "fragment.py"
    script.write_text(_FRAGMENT)
    held = {
        mode: float(
            subprocess.run([sys.executable, str(script), mode], capture_output=True, text=True, check=True).stdout
        )
        for mode in ("off", "on")
    }
    assert held["off"] > 400 and held["on"] < 50, held
