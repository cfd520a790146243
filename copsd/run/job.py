"""One job, computed: load, (train,) evaluate each pending checkpoint, and say so as events.

`run_job` writes nothing and logs nothing: it yields `copsd.run.events` values, and the sweep's
recorder (`copsd.run.recorder`) stores them. It runs without a results DB or MLflow; what it needs
to know of the outside is in `JobPlan`. Its caller pulls events one at a time, so between two
events (a training step, a batch of decoded samples) the caller can stop it.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from pathlib import Path

from copsd.config import JobConfig
from copsd.errors import CopsdError
from copsd.results.schema import ResultKey
from copsd.run import events, provenance


@dataclass(frozen=True)
class JobPlan:
    """Where and how a job runs (never part of its identity)."""

    runs_dir: Path  # the job's checkpoints go to runs_dir/<job id>
    stored: frozenset[ResultKey] = field(default_factory=frozenset)  # result rows already in the DB
    device: str | None = None  # None: the first GPU, else the CPU
    preflight: bool = True  # refuse (one line) a job whose estimated peak memory cannot fit the device


def result_key(job: JobConfig, step: int, budget: int | None = None) -> ResultKey:
    e = job.eval
    return ResultKey(e.benchmark, job.language, e.split, step, budget or e.decoding.max_new_tokens)


def pending_steps(job: JobConfig, stored: set[ResultKey] | frozenset[ResultKey]) -> list[int]:
    """Checkpoints still missing a result row at some decoding budget."""
    budgets = job.eval.all_budgets()
    return [s for s in job.eval_steps() if any(result_key(job, s, b) not in stored for b in budgets)]


def quiet_library_warnings() -> None:
    """Silence library warnings a user cannot act on (they repeat once per job otherwise)."""
    import warnings

    # peft asks transformers for a deprecated property on every LoRA wrap
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def run_job(job: JobConfig, plan: JobPlan) -> Generator[events.Event, None, None]:
    """Run one job to completion, yielding what happened as it happens. Results are yielded per
    checkpoint as soon as each is evaluated, so a crashed or interrupted job resumes from the first
    checkpoint whose result was not stored."""
    import torch
    from transformers import set_seed

    from copsd.data.benchmarks import load_problems
    from copsd.data.languages import get_language
    from copsd.evaluation.evaluate import evaluate_stream
    from copsd.models.load import load_model, resolve_device
    from copsd.rollout import engine_note, resolve_engine
    from copsd.training.memory import preflight, return_freed_memory

    quiet_library_warnings()
    lang = get_language(job.language)
    if lang.missing:
        yield events.Note(f"language '{lang.code}' has no translated prompt strings yet; using English ones")
    problems = load_problems(job.eval.benchmark, job.language, job.eval.split, job.eval.limit, job.eval.data_dir)
    steps = pending_steps(job, plan.stored)
    if not steps:
        return
    train = job.train
    counts: dict = {}
    examples: list = []
    if train is not None:  # fail fast on missing training data, before loading any weights
        from copsd.data.training import load_training_data

        examples, _val = load_training_data(
            job.language, train.data_path, val_size=train.val_size, seed=job.seed, counts=counts,
            max_examples=train.max_examples,
        )  # fmt: skip
    yield events.Planned(steps, len(steps) * len(problems) * job.eval.decoding.n_samples)
    set_seed(job.seed)
    device = resolve_device(plan.device)
    checked = not plan.preflight
    if plan.preflight:  # from the shapes alone: a job that cannot fit fails before any weights load
        checked = preflight(job, device, n_problems=len(problems))
    if device.type == "cpu":  # else glibc's heap holds several times what a CPU step uses
        return_freed_memory()
    lm = load_model(job.model, dtype=job.dtype, device=plan.device)
    model = lm.model
    if not checked:  # a shape known only from the loaded config (a plugin's builtin)
        preflight(job, device, n_problems=len(problems), config=model.config)
    yield events.Provenance(
        provenance.collect(
            device=next(model.parameters()).device,
            prompts=lang.fingerprint,
            eval_data=provenance.fingerprint(problems),
            train_data=provenance.fingerprint(examples) if train is not None else None,
            extra={f"train_{k}": v for k, v in counts.items()},
        ),
        dict(counts),
    )
    run_dir = plan.runs_dir / job.job_id
    if train is not None:
        from copsd.training import TRAINERS
        from copsd.training.adapters import wrap_lora

        if note := engine_note(train.rollout_engine, model):
            yield events.Note(note)
        model = wrap_lora(model, train.lora, job.seed)  # the trainer turns on gradient checkpointing
        trainer = TRAINERS[job.method](job, model, lm.tokenizer, examples, run_dir)
        for step, metrics in trainer.steps():
            yield events.TrainStep(step, metrics)
        del trainer  # its optimizer states and the adapters' grads are not needed to evaluate
        model.zero_grad(set_to_none=True)
        model.eval()
    if note := engine_note(job.eval.rollout_engine, model):
        yield events.Note(note)
    yield events.EngineChosen(resolve_engine(job.eval.rollout_engine, model))
    e = job.eval
    for step in steps:
        if train is not None:
            from copsd.training.adapters import load_adapter

            load_adapter(model, run_dir, step)
        set_seed(job.seed)
        stream = evaluate_stream(model, lm.tokenizer, problems, job.language, e, seed=job.seed)
        try:
            while True:
                yield events.Decoded(next(stream))
        except StopIteration as end:
            out = end.value
        except torch.cuda.OutOfMemoryError:
            raise CopsdError(
                f"out of memory while evaluating {job.label} (eval.batch_size={e.batch_size}, "
                f"max_new_tokens={e.decoding.max_new_tokens}); lower eval.batch_size in the spec"
            ) from None
        yield events.CheckpointResult(
            step,
            {**out.by_budget, e.decoding.max_new_tokens: out.metrics},
            e.decoding.max_new_tokens,
            e.decoding.n_samples,
            out.n_problems,
            out.records,
        )
