"""What the training tests share: eight Swahili/English examples, a small job per method, and a
trainer on the tiny real Qwen3 (a helper module, not a test module: tests import it)."""

from __future__ import annotations

from copsd.config import JobConfig
from copsd.data.training import TrainExample
from copsd.models import load_model
from copsd.training import TRAINERS
from copsd.training.adapters import wrap_lora

EX = [
    TrainExample(
        f"x{i}",
        f"Swali namba {i}: Ana ana machungwa {i + 2}. Anakula 1. Yamebaki mangapi?",
        f"Question {i}: Ana has {i + 2} oranges. She eats 1. How many are left?",
        f"{i + 2} - 1 = {i + 1}\nThe answer is \\boxed{{{i + 1}}}.",
        str(i + 1),
    )
    for i in range(8)
]


def _job(method="copsd", **train):
    base = {
        "batch_size": 2,
        "micro_batch_size": 2,
        "max_steps": 2,
        "save_steps": 1,
        "lr": 5e-2,
        "lora": {"r": 4, "alpha": 8},
    }
    if method == "copsd":
        base["max_completion_length"] = 12
    if method == "grpo":
        base.update(max_completion_length=12, num_generations=2, batch_size=4, micro_batch_size=4)
    base.update(train)
    return JobConfig(
        method=method,
        model="builtin:tiny-qwen3",
        language="swa",
        dtype="float32",
        eval={"benchmark": "mgsm"},
        train=base,
    )


def _setup(job, tmp_path):
    lm = load_model("builtin:tiny-qwen3", dtype="float32", device="cpu")
    model = wrap_lora(lm.model, job.train.lora, job.seed)
    return TRAINERS[job.method](job, model, lm.tokenizer, EX, tmp_path / "run"), lm


def divergence_loss(trainer, examples, completions: list[list[int]]):
    """COPSD's (loss, diagnostics) of these rollouts in one forward each for teacher and student: the
    unsplit reference that `CopsdTrainer.loss_parts` (one part per forward sub-batch) must add up to."""
    keep = [i for i, c in enumerate(completions) if c]
    examples, completions = [examples[i] for i in keep], [completions[i] for i in keep]
    return trainer.token_loss(
        [trainer.student_ids(e) for e in examples],
        [trainer.teacher_ids(e) for e in examples],
        completions,
        trainer.tok.pad_token_id,
    )
