"""One evaluation: problems -> prompts -> k samples each -> graded -> metrics + per-example records."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from copsd.config import EvalConfig
from copsd.data.benchmarks import Problem
from copsd.evaluation.metrics import Sample, compute_metrics
from copsd.grading import extract_boxed, is_equivalent
from copsd.prompts import student_prompt
from copsd.rollout import SamplingParams, generate


@dataclass
class EvalOutput:
    metrics: dict[str, float]
    records: list[dict]  # one per (problem, sample): for the generations artifact
    n_problems: int


def evaluate(
    model,
    tokenizer,
    problems: list[Problem],
    language: str,
    cfg: EvalConfig,
    *,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> EvalOutput:
    prompts = [student_prompt(tokenizer, p.question, language, thinking=cfg.thinking) for p in problems]
    d = cfg.decoding
    params = SamplingParams(
        n=d.n_samples, temperature=d.temperature, top_p=d.top_p, top_k=d.top_k, max_new_tokens=d.max_new_tokens
    )
    rollouts = generate(
        model,
        tokenizer,
        prompts,
        params,
        batch_size=cfg.batch_size,
        seed=seed,
        on_batch=on_batch,
        engine=cfg.rollout_engine,
    )
    graded: list[list[Sample]] = []
    records: list[dict] = []
    for prob, rolls in zip(problems, rollouts):
        row = []
        for r in rolls:
            pred = extract_boxed(r.text)
            ok = is_equivalent(pred, prob.answer)
            row.append(Sample(pred, ok, len(r.token_ids), not r.finished, r.token_ids))
            records.append(
                {
                    "problem_id": prob.id,
                    "sample": r.sample_index,
                    "gold": prob.answer,
                    "extracted": pred,
                    "correct": ok,
                    "truncated": not r.finished,
                    "n_tokens": len(r.token_ids),
                    "response": r.text,
                }
            )
        graded.append(row)
    return EvalOutput(compute_metrics(graded), records, len(problems))
