"""Executing one job: dispatch on the method, evaluate the requested checkpoints, store the results.

Results are written per checkpoint as soon as each is evaluated, so a crashed or interrupted
job resumes from the first checkpoint that has no result row.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from copsd.config import TRAINED_METHODS, JobConfig
from copsd.db.store import ResultsDB
from copsd.errors import CopsdError, MethodNotAvailable


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def result_key(job: JobConfig, step: int) -> tuple:
    e = job.eval
    return (e.benchmark, job.language, e.split, step, e.decoding.max_new_tokens)


def pending_steps(job: JobConfig, db: ResultsDB) -> list[int]:
    have = db.result_keys(job.job_id)
    return [s for s in job.eval_steps() if result_key(job, s) not in have]


def run_job(
    job: JobConfig,
    db: ResultsDB,
    *,
    tracker=None,
    run_id: str | None = None,
    device: str | None = None,
    log_generations: bool = True,
    on_total: Callable[[int], None] | None = None,
    on_advance: Callable[[int], None] | None = None,
) -> dict[int, dict[str, float]]:
    """Run one job to completion; returns {step: metrics} for the checkpoints evaluated now."""
    if job.method in TRAINED_METHODS:
        raise MethodNotAvailable(
            f"method '{job.method}' is not available yet (training methods land with the methods issue); "
            "only 'base' jobs run in this version"
        )
    from copsd.benchmarks import load_problems
    from copsd.evaluation.evaluate import evaluate
    from copsd.languages import get_language
    from copsd.models import load_model

    lang = get_language(job.language)
    if lang.missing:
        import warnings

        warnings.warn(f"language '{lang.code}' has no translated prompt strings yet; using English ones", stacklevel=1)
    problems = load_problems(job.eval.benchmark, job.language, job.eval.split, job.eval.limit, job.eval.data_dir)
    steps = pending_steps(job, db)
    if not steps:
        return {}
    if on_total:
        on_total(len(steps) * len(problems) * job.eval.decoding.n_samples)
    lm = load_model(job.model, dtype=job.dtype, device=device)
    done: dict[int, dict[str, float]] = {}
    for step in steps:
        seed_everything(job.seed)
        try:
            out = evaluate(lm.model, lm.tokenizer, problems, job.language, job.eval, seed=job.seed, on_batch=on_advance)
        except RuntimeError as exc:
            if "out of memory" in str(exc).lower():
                raise CopsdError(
                    f"out of memory while evaluating {job.label} (eval.batch_size={job.eval.batch_size}, "
                    f"max_new_tokens={job.eval.decoding.max_new_tokens}); lower eval.batch_size in the spec"
                ) from None
            raise
        e = job.eval
        db.add_result(job.job_id, benchmark=e.benchmark, language=job.language, split=e.split, step=step,
                      max_new_tokens=e.decoding.max_new_tokens, n_samples=e.decoding.n_samples,
                      n_problems=out.n_problems, metrics=out.metrics)
        if tracker is not None and run_id is not None:
            tracker.log_metrics(run_id, {f"eval/{job.language}/{k}": v for k, v in out.metrics.items()}, step=step)
            if log_generations:
                tracker.log_jsonl(run_id, out.records, f"step{step:05d}_{e.benchmark}_{job.language}_{e.split}.jsonl")
        done[step] = out.metrics
    return done
