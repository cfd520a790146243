"""Answer extraction, grading (math-verify), and the metrics' definitions."""

from __future__ import annotations

import itertools
import threading

import pytest

from copsd.evaluation import compute_metrics, extract_boxed, is_equivalent, normalize_answer, pass_at_k, repetition_rate
from copsd.evaluation.metrics import Sample


@pytest.mark.parametrize(
    "text, expected",
    [
        (r"so \boxed{18}.", "18"),
        (r"\boxed{1} then \boxed{2}", "2"),  # the last box wins
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\boxed{ {a}{b} }", "{a}{b}"),
        (r"no box here", None),
        ("", None),
        (None, None),
        (r"\boxed{5} and a truncated \boxed{12", "5"),  # unbalanced last box: fall back to the previous one
        (r"\boxed {7}", "7"),
        (r"<think>\boxed{3}</think> answer \boxed{4}", "4"),
        # real SmolLM2-135M outputs (docs/real_models.md): an echoed instruction's empty box is no answer
        ("To put this into \\boxed{}, we need to add...\n\nThe answer is 800.", None),
        (
            "... kwa kila yai la bata.\n\nTafadhali fikiri hatua kwa hatua, na uweke jibu lako la mwisho ndani ya \\boxed{}.",
            None,
        ),
        (r"so \boxed{18}. Please put your final answer within \boxed{ }.", "18"),  # an earlier real box still counts
        ("The final answer is 16.\n\nThe answer is 16.", None),  # no box: wrong under the paper's rule
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    "pred, gold, ok",
    [
        ("1,000", "1000", True),
        ("1000", "1,000", True),
        (r"\frac{1}{2}", "0.5", True),
        ("0.5", r"\frac{1}{2}", True),
        ("$18", "18", True),
        (r"\$18", "18", True),
        ("18.0", "18", True),
        ("18.00", "18", True),
        ("18", "17", False),
        ("-3", "3", False),
        (None, "18", False),
        ("", "18", False),
        (r"\frac{\pi}{3}", r"$\frac{\pi}{3}$", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("x+1", "1+x", True),
        ("banana", "18", False),
    ],
)
def test_is_equivalent(pred, gold, ok):
    assert is_equivalent(pred, gold) is ok


def test_normalize_answer():
    assert normalize_answer("$1,234.50") == "1234.5"
    assert normalize_answer(r"\text{70000}.") == "70000"
    assert normalize_answer("-0.0") == "0"


def test_grading_works_off_the_main_thread():
    out = {}

    def work():
        out["frac"] = is_equivalent(r"\frac{3}{4}", "0.75")
        out["bad"] = is_equivalent(r"\frac{3}{5}", "0.75")

    t = threading.Thread(target=work)
    t.start()
    t.join(60)
    assert out == {"frac": True, "bad": False}


def _brute_pass_at_k(n, c, k):
    outcomes = [1] * c + [0] * (n - c)
    subsets = list(itertools.combinations(range(n), k))
    return sum(any(outcomes[i] for i in s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n,c,k", [(n, c, k) for n in (1, 4, 6) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(_brute_pass_at_k(n, c, k))


def test_pass_at_k_rejects_bad_arguments():
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def _s(ans, ok, tokens=(1, 2, 3), trunc=False):
    return Sample(ans, ok, len(tokens), trunc, list(tokens))


def test_compute_metrics():
    probs = [
        [_s("5", True), _s("5", True), _s("7", False), _s(None, False, trunc=True)],  # maj 5 -> correct
        [_s("1", False), _s("2", True), _s("1", False), _s("3", False)],  # maj 1 -> wrong, pass@4 yes
    ]
    m = compute_metrics(probs)
    assert m["accuracy"] == pytest.approx(3 / 8)
    assert m["pass_at_1"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    assert m["pass_at_k"] == 1.0
    assert m["maj_at_k"] == 0.5
    assert m["format_rate"] == pytest.approx(7 / 8)
    assert m["truncation_rate"] == pytest.approx(1 / 8)
    assert m["mean_length"] == 3


def test_majority_tie_goes_to_first_seen_and_normalises():
    probs = [[_s("1,000", True), _s("7", False), _s("1000", True), _s("7", False)]]
    assert compute_metrics(probs)["maj_at_k"] == 1.0
    probs = [[_s("7", False), _s("1000", True)]]
    assert compute_metrics(probs)["maj_at_k"] == 0.0


def test_repetition_rate():
    assert repetition_rate([1, 2, 1, 2, 1, 2], 2) == pytest.approx(1 - 2 / 5)
    assert repetition_rate([1, 2, 3, 4], 2) == 0.0
    assert repetition_rate([1], 2) is None
    m = compute_metrics([[_s("1", True, tokens=(5, 5, 5, 5, 5, 5, 5))]])
    assert m["repetition_2"] == pytest.approx(1 - 1 / 6)
    assert m["repetition_6"] == pytest.approx(1 - 1 / 2)
