"""The two graders (`eval.grader`): `paper` reproduces the released evaluation's extraction and
check verdict for verdict; `lenient` is copsd's own. Both run on every sample."""

from __future__ import annotations

import pytest

from copsd.evaluation.metrics import Sample, compute_metrics
from copsd.grading import GRADERS, first_box_after_think, grpo_reward_correct

# response (its tail is enough), gold -> (paper verdict, lenient verdict). The paper column was
# derived from the released african_langs_eval/evaluate_math.py rules; see docs/method.md.
VERDICTS = [
    ("\\boxed{18}", "18", True, True),
    ("\\boxed{$18}", "18", True, True),
    ("\\boxed{\\$18}", "18", False, True),  # an escaped dollar stays rejected by the paper grader
    ("\\boxed{18.0}", "18", True, True),
    ("\\boxed{18.}", "18", True, True),
    ("\\boxed{1,000}", "1000", True, True),
    ("\\boxed{1 000}", "1000", False, True),  # space-separated thousands: paper reads 1*0
    ("\\boxed{1\\,000}", "1000", False, True),
    ("\\fbox{18}", "18", False, True),  # \fbox is not a box to the released code
    ("\\boxed{18 dollars}", "18", False, False),
    ("\\boxed{18 \\text{ dollars}}", "18", True, False),
    ("\\boxed{\\text{18 dollars}}", "18", False, False),
    ("\\boxed{\\text{18}}", "18", True, True),
    ("\\boxed{\\frac{36}{2}}", "18", True, True),
    ("\\boxed{36/2}", "18", True, True),
    ("\\boxed{18} and then \\boxed{1", "18", False, True),  # truncated last box: no fallback in paper
    ("\\boxed{18} and then \\boxed{}", "18", False, True),  # empty last box: formatted but wrong in paper
    ("\\boxed{} and then \\boxed{18}", "18", True, True),
    ("\\boxed{18}</think> so \\boxed{17}", "18", False, False),  # the last box wins; </think> is ignored
    ("\\boxed{17}</think> so \\boxed{18}", "18", True, True),
    ("\\boxed{18}%", "18", True, True),
    ("\\boxed{50\\%}", "0.5", True, True),
    ("\\boxed{-3}", "-3", True, True),
    ("\\boxed{-3}", "3", False, False),
    ("\\boxed{18} \\boxed{17}", "18", False, False),
    ("\\boxed {18}", "18", False, True),  # not spelt \boxed{ exactly
    ("\\boxed{x = 18}", "18", True, True),
    ("\\boxed{18,5}", "18.5", False, False),
    ("\\boxed{18, 20}", "18", False, False),
    ("\\boxed{Eighteen}", "18", False, False),
    ("\\boxed{1.8e1}", "18", False, False),
    ("\\boxed{\\boxed{18}}", "18", True, True),
    ("the answer is 18", "18", False, False),
    ("\\boxed{18.0001}", "18", False, False),
]


@pytest.mark.parametrize(("response", "gold", "paper", "lenient"), VERDICTS)
def test_verdict_table(response, gold, paper, lenient):
    for name, expected in (("paper", paper), ("lenient", lenient)):
        g = GRADERS[name]
        assert g.correct(g.extract(response), gold) is expected, name


def test_paper_format_rate_counts_an_empty_box_and_not_a_truncated_one():
    g = GRADERS["paper"]
    assert g.extract("x \\boxed{} y") == ""  # formatted
    assert g.extract("\\boxed{3} \\boxed{4") is None  # not formatted


def test_paper_majority_votes_on_raw_strings_first_seen_wins_ties():
    g = GRADERS["paper"]

    def s(text: str, gold: str = "18") -> Sample:
        pred = g.extract(text)
        return Sample(pred, g.correct(pred, gold), 5, False, [1, 2, 3])

    # 18.0 x2 vs 17 x2 vs 18 x1 (raw strings): 18.0 is seen first among the tied -> correct
    prob = [s("\\boxed{18.0}"), s("\\boxed{17}"), s("\\boxed{18}"), s("\\boxed{17}"), s("\\boxed{18.0}")]
    assert compute_metrics([prob], g.vote_key)["maj_at_k"] == 1.0
    # normalised (lenient) voting would merge 18 and 18.0 into 3 votes; raw voting lets 17 win here
    prob = [s("\\boxed{17}"), s("\\boxed{17}"), s("\\boxed{18}"), s("\\boxed{18.0}"), s("no box")]
    assert compute_metrics([prob], g.vote_key)["maj_at_k"] == 0.0
    lenient = GRADERS["lenient"]
    assert compute_metrics([prob], lenient.vote_key)["maj_at_k"] == 0.0  # tie 2-2: 17 seen first
    # empty boxes vote as one ballot that is always wrong
    prob = [s("\\boxed{}"), s("\\boxed{}"), s("\\boxed{18}")]
    m = compute_metrics([prob], g.vote_key)
    assert m["maj_at_k"] == 0.0 and m["format_rate"] == 1.0 and m["pass_at_k"] == 1.0


@pytest.mark.parametrize(
    ("response", "extracted", "reward"),
    [
        ("<think>\\boxed{3}</think> so \\boxed{18} or \\boxed{19}", "18", True),  # first box after </think>
        ("no think: \\boxed{18} then \\boxed{19}", "18", True),  # first box anywhere
        ("<think>\\boxed{18}</think> no box after", None, False),  # never a box inside the thinking
        ("</think>\\boxed{1,000}", "1,000", True),
        ("</think>\\boxed{3:4}", "3:4", True),  # a:b read as a fraction (gold 0.75)
        ("</think>\\boxed{18 Dollars}", "18 Dollars", True),  # math-verify reads 18 first
        ("</think>\\boxed{}", "", False),
        ("</think>\\boxed{18", None, False),
        ("</think>\\fbox{18}", None, False),
    ],
)
def test_released_grpo_reward(response, extracted, reward):
    assert first_box_after_think(response) == extracted
    gold = "0.75" if "3:4" in response else ("1000" if "1,000" in response else "18")
    assert grpo_reward_correct(response, gold) is reward
