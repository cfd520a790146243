"""The paper's metrics over k samples per problem.

accuracy = Avg@k (mean correctness over all samples); pass@1 and pass@k use the unbiased
estimator 1 - C(n-c, k) / C(n, k) (Chen et al. 2021; with k = n it is "any sample correct", what
the released COPSD code reports as Pass@n); maj@k = the most frequent extracted answer (among
samples with a parsable box, first seen wins ties) is correct; format rate = share of samples
with a parsable `\\boxed{}`; repetition RepeatRate_n = 1 - unique/total n-grams of a response's
token ids, n = 2..6, averaged over responses long enough to have an n-gram.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from math import comb

import numpy as np

REPETITION_NS = (2, 3, 4, 5, 6)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem with n samples of which c are correct."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"need 0 <= c <= n and 1 <= k <= n, got n={n} c={c} k={k}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


def repetition_rate(tokens: list[int], n: int) -> float | None:
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    if not grams:
        return None
    return 1.0 - len(set(grams)) / len(grams)


@dataclass
class Sample:
    """One graded response."""

    extracted: str | None
    correct: bool
    n_tokens: int
    truncated: bool
    token_ids: list[int]


def compute_metrics(samples: list[list[Sample]], vote_key: Callable[[str], str] | None = None) -> dict[str, float]:
    """Metrics over problems (outer list) x samples (inner list, all the same length k).

    `vote_key` maps an extracted answer to its Maj@k ballot (the grader's: normalised for
    `lenient`, the raw string for `paper`, as released)."""
    from copsd.grading import normalize_answer

    vote_key = vote_key or normalize_answer
    k = len(samples[0])
    if any(len(s) != k for s in samples):
        raise ValueError("every problem needs the same number of samples")
    flat = [s for prob in samples for s in prob]
    acc = float(np.mean([s.correct for s in flat]))
    p1 = float(np.mean([pass_at_k(k, sum(s.correct for s in prob), 1) for prob in samples]))
    pk = float(np.mean([pass_at_k(k, sum(s.correct for s in prob), k) for prob in samples]))
    maj = []
    for prob in samples:
        votes = Counter()
        first: dict[str, Sample] = {}
        for s in prob:
            if s.extracted is not None:
                key = vote_key(s.extracted)
                votes[key] += 1
                first.setdefault(key, s)
        if not votes:
            maj.append(0.0)
            continue
        top = max(votes.values())
        winner = next(key for key in first if votes[key] == top)  # first seen among the most frequent
        maj.append(float(first[winner].correct))
    out = {
        "accuracy": acc,
        "pass_at_1": p1,
        "pass_at_k": pk,
        "maj_at_k": float(np.mean(maj)),
        "format_rate": float(np.mean([s.extracted is not None for s in flat])),
        "mean_length": float(np.mean([s.n_tokens for s in flat])),
        "truncation_rate": float(np.mean([s.truncated for s in flat])),
    }
    reps = []
    for n in REPETITION_NS:
        vals = [v for s in flat if (v := repetition_rate(s.token_ids, n)) is not None]
        out[f"repetition_{n}"] = float(np.mean(vals)) if vals else 0.0
        reps.append(out[f"repetition_{n}"])
    out["repetition_rate"] = float(np.mean(reps))
    return out
