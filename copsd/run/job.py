"""Executing one job: dispatch on the method, evaluate the requested checkpoints, store the results.

Results are written per checkpoint as soon as each is evaluated, so a crashed or interrupted
job resumes from the first checkpoint that has no result row.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from copsd.config import JobConfig
from copsd.errors import CopsdError
from copsd.paths import Workspace
from copsd.results.db import ResultsDB
from copsd.results.tracking import NullRunLog, RunLog
from copsd.run import provenance


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def quiet_library_warnings() -> None:
    """Silence library warnings a user cannot act on (they repeat once per job otherwise)."""
    import warnings

    # peft asks transformers for a deprecated property on every LoRA wrap
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)


def result_key(job: JobConfig, step: int, budget: int | None = None) -> tuple:
    e = job.eval
    return (e.benchmark, job.language, e.split, step, budget or e.decoding.max_new_tokens)


def pending_steps(job: JobConfig, db: ResultsDB) -> list[int]:
    """Checkpoints still missing a result row at some decoding budget."""
    have = db.result_keys(job.job_id)
    budgets = job.eval.all_budgets()
    return [s for s in job.eval_steps() if any(result_key(job, s, b) not in have for b in budgets)]


def run_job(
    job: JobConfig,
    db: ResultsDB,
    *,
    run: RunLog | None = None,
    device: str | None = None,
    log_generations: bool = True,
    runs_dir: Path | None = None,
    on_total: Callable[[int], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
    owner: str | None = None,
    check_alive: Callable[[], None] | None = None,
    on_result: Callable[[int, dict[str, float]], None] | None = None,
    preflight: bool = True,
) -> dict[int, dict[str, float]]:
    """Run one job to completion; returns {step: metrics} for the checkpoints evaluated now.

    `on_result(step, metrics)` runs after each checkpoint's results are stored (a tuning pruner
    may raise from it to stop the job). `owner` fences result writes (nothing is written once
    another worker reclaimed the job);
    `check_alive` is called after every training step and before every evaluation and raises to
    stop a job whose claim was lost. `preflight`: refuse (one line) a job whose estimated peak
    memory cannot fit the device, before loading weights (`copsd.training.memory`)."""
    check_alive = check_alive or (lambda: None)
    from copsd.data.benchmarks import load_problems
    from copsd.data.languages import get_language
    from copsd.evaluation.evaluate import evaluate
    from copsd.models.load import load_model, resolve_device
    from copsd.training.memory import return_freed_memory

    run = run or NullRunLog()
    quiet_library_warnings()
    lang = get_language(job.language)
    if lang.missing:
        import warnings

        warnings.warn(f"language '{lang.code}' has no translated prompt strings yet; using English ones", stacklevel=1)
    problems = load_problems(job.eval.benchmark, job.language, job.eval.split, job.eval.limit, job.eval.data_dir)
    steps = pending_steps(job, db)
    if not steps:
        return {}
    train = job.train
    trained = train is not None  # base jobs have no training block
    counts: dict = {}
    if train is not None:  # fail fast on missing training data, before loading any weights
        from copsd.data.training import load_training_data

        examples, _val = load_training_data(
            job.language,
            train.data_path,
            val_size=train.val_size,
            seed=job.seed,
            counts=counts,
            max_examples=train.max_examples,
        )
    if on_total:
        on_total(len(steps) * len(problems) * job.eval.decoding.n_samples)
    seed_everything(job.seed)
    checked = not preflight
    if preflight:  # from the shapes alone: a job that cannot fit fails before any weights load
        from copsd.training.memory import preflight as check_memory

        checked = check_memory(job, resolve_device(device), n_problems=len(problems))
    if resolve_device(device).type == "cpu":  # else glibc's heap holds several times what a CPU step uses
        return_freed_memory()
    lm = load_model(job.model, dtype=job.dtype, device=device)
    model = lm.model
    if not checked:  # a shape known only from the loaded config (a plugin's builtin)
        check_memory(job, resolve_device(device), n_problems=len(problems), config=model.config)
    prov = provenance.collect(
        device=next(model.parameters()).device,
        prompts=lang.fingerprint,
        eval_data=provenance.fingerprint(problems),
        train_data=provenance.fingerprint(examples) if train is not None else None,
        extra={f"train_{k}": v for k, v in counts.items()},
    )
    db.set_provenance(job.job_id, prov)
    for key, value in prov.items():
        run.set_tag(f"copsd.provenance.{key}", str(value))
    if counts:
        run.log_metrics({f"data/{k}": float(v) for k, v in counts.items()}, step=0)
    run_dir = (runs_dir or Workspace(db.url).runs_dir) / job.job_id
    if train is not None:
        from copsd.training import TRAINERS
        from copsd.training.adapters import wrap_lora

        model = wrap_lora(model, train.lora, job.seed)  # the trainer turns on gradient checkpointing
        trainer = TRAINERS[job.method](
            job, model, lm.tokenizer, examples, run_dir, log=run.log_metrics, on_step=lambda _step: check_alive()
        )
        trainer.train()
        del trainer  # its optimizer states and the adapters' grads are not needed to evaluate
        model.zero_grad(set_to_none=True)
        model.eval()
    from copsd.rollout import resolve_engine

    run.set_tag("copsd.rollout_engine", resolve_engine(job.eval.rollout_engine, model))  # what `auto` became here
    done: dict[int, dict[str, float]] = {}
    for step in steps:
        check_alive()
        if trained:
            from copsd.training.adapters import load_adapter

            load_adapter(model, run_dir, step)
        seed_everything(job.seed)
        try:
            out = evaluate(model, lm.tokenizer, problems, job.language, job.eval, seed=job.seed, on_batch=on_advance)
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise CopsdError(
                    f"out of memory while evaluating {job.label} (eval.batch_size={job.eval.batch_size}, "
                    f"max_new_tokens={job.eval.decoding.max_new_tokens}); lower eval.batch_size in the spec"
                ) from None
            raise
        e = job.eval
        # smaller budgets first: the full budget's row is the one that marks a checkpoint complete
        for budget, metrics in [*sorted(out.by_budget.items()), (e.decoding.max_new_tokens, out.metrics)]:
            db.add_result(
                job.job_id,
                benchmark=e.benchmark,
                language=job.language,
                split=e.split,
                step=step,
                max_new_tokens=budget,
                n_samples=e.decoding.n_samples,
                n_problems=out.n_problems,
                metrics=metrics,
                owner=owner,
            )
        run.log_metrics({f"eval/{job.language}/{k}": v for k, v in out.metrics.items()}, step=step)
        for budget, metrics in out.by_budget.items():
            run.log_metrics({f"eval_budget{budget}/{job.language}/{k}": v for k, v in metrics.items()}, step=step)
        if log_generations:
            run.log_jsonl(out.records, f"step{step:05d}_{e.benchmark}_{job.language}_{e.split}.jsonl")
        done[step] = out.metrics
        if on_result:
            on_result(step, out.metrics)
    if run.run_id and done:
        _log_job_figures(job, db, run, run_dir / "figures")
    return done


def _log_job_figures(job: JobConfig, db: ResultsDB, run: RunLog, out_dir: Path) -> None:
    """The job's figures as artifacts of its MLflow run (`figures/`); a figure never fails a job."""
    import logging

    from copsd.reports.figures import job_figures

    try:
        paths = job_figures(db.results_frame(model=job.model, language=job.language), job.job_id, out_dir)
        run.log_files([q for p in paths for q in (p, p.with_suffix(".pdf"))], "figures")
    except Exception as exc:  # noqa: BLE001 - the numbers are stored; a plot is a convenience
        logging.getLogger("copsd").warning("figures of job %s skipped: %s", job.job_id, str(exc).splitlines()[0])
