"""One evaluation: problems -> prompts -> k samples each -> graded -> metrics + per-example records."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field

from copsd.config import EvalConfig
from copsd.data.benchmarks import Problem
from copsd.evaluation.language_id import language_metrics
from copsd.evaluation.metrics import Sample, compute_metrics
from copsd.grading import GRADERS
from copsd.prompts import has_thinking_tokens, student_prompt
from copsd.rollout import Rollout, at_budget, drain, generate_stream


@dataclass
class EvalOutput:
    metrics: dict[str, float]
    records: list[dict]  # one per (problem, sample): for the generations artifact
    n_problems: int
    by_budget: dict[int, dict[str, float]] = field(default_factory=dict)  # eval.budgets (test-time scaling)


def evaluate(model, tokenizer, problems: list[Problem], language: str, cfg: EvalConfig, *, seed: int = 0) -> EvalOutput:
    """`evaluate_stream` drained."""
    return drain(evaluate_stream(model, tokenizer, problems, language, cfg, seed=seed))


def evaluate_stream(
    model, tokenizer, problems: list[Problem], language: str, cfg: EvalConfig, *, seed: int = 0
) -> Generator[int, None, EvalOutput]:
    """Yields how many samples were decoded since the last yield; returns the graded output."""
    prompts = [student_prompt(tokenizer, p.question, language, thinking=cfg.thinking) for p in problems]
    d = cfg.decoding
    params = d.sampling_params()
    rollouts = yield from generate_stream(
        model, tokenizer, prompts, params, batch_size=cfg.batch_size, seed=seed, engine=cfg.rollout_engine
    )
    verdicts: dict[tuple, tuple] = {}  # a sample that ended before a budget is graded once, not per budget
    thinking = cfg.thinking and has_thinking_tokens(tokenizer)  # did the prompt open a think block?
    labels: dict[str, str] = {}  # segment -> language, shared by the budgets (cut samples repeat segments)
    metrics, records = _grade(problems, rollouts, cfg.grader, verdicts)
    _add_languages(metrics, records, rollouts, language, thinking, labels)
    by_budget = {}
    for b in cfg.budgets:
        cut = [[at_budget(r, b, tokenizer) for r in rolls] for rolls in rollouts]
        by_budget[b], cut_records = _grade(problems, cut, cfg.grader, verdicts)
        _add_languages(by_budget[b], cut_records, cut, language, thinking, labels)
    return EvalOutput(metrics, records, len(problems), by_budget)


def _add_languages(
    metrics: dict, records: list[dict], rollouts: list[list[Rollout]], language: str, thinking: bool, labels: dict
) -> None:
    """Which language each sample reasons and answers in (copsd.evaluation.language_id): the
    rates join `metrics`, each sample's dominant languages and shares join its record."""
    texts = [r.text for rolls in rollouts for r in rolls]
    correct = [rec["correct"] for rec in records]
    lang_metrics, per_sample = language_metrics(texts, correct, language, thinking=thinking, cache=labels)
    metrics.update(lang_metrics)
    for rec, lang in zip(records, per_sample):
        rec.update(lang)


def _grade(
    problems: list[Problem], rollouts: list[list[Rollout]], grader: str, verdicts: dict[tuple, tuple]
) -> tuple[dict[str, float], list[dict]]:
    """Metrics of every grader (the job's own under the plain names) and one record per sample;
    `verdicts` memoises (grader, response, gold) -> (extracted, correct) across budgets."""
    graders = {name: GRADERS[name] for name in (grader, *sorted(set(GRADERS) - {grader}))}
    graded: dict[str, list[list[Sample]]] = {name: [] for name in graders}
    records: list[dict] = []
    for prob, rolls in zip(problems, rollouts):
        rows: dict[str, list[Sample]] = {name: [] for name in graders}
        for r in rolls:
            rec = {"problem_id": prob.id, "sample": r.sample_index, "gold": prob.answer}
            for name, g in graders.items():
                seen = (name, r.text, prob.answer)
                if seen not in verdicts:
                    p = g.extract(r.text)
                    verdicts[seen] = (p, g.correct(p, prob.answer))
                pred, ok = verdicts[seen]
                rows[name].append(Sample(pred, ok, len(r.token_ids), not r.finished, r.token_ids))
                if name == grader:  # the job's grader first, under the plain names
                    rec.update(extracted=pred, correct=ok)
                else:
                    rec.update({f"extracted_{name}": pred, f"correct_{name}": ok})
            rec.update(truncated=not r.finished, n_tokens=len(r.token_ids), response=r.text)
            records.append(rec)
        for name in graders:
            graded[name].append(rows[name])
    per_grader = {name: compute_metrics(graded[name], g.vote_key) for name, g in graders.items()}
    metrics = dict(per_grader[grader])
    for name, m in per_grader.items():
        for key in GRADED_METRICS:
            metrics[f"{key}_{name}"] = m[key]
    return metrics, records


# the metrics stored per grader (results columns `<metric>_paper`, `<metric>_lenient`)
GRADED_METRICS = ("accuracy", "pass_at_k", "maj_at_k")
