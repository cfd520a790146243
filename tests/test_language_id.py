"""Language identification (copsd/evaluation/language_id.py): segments, thinking/answer split,
the real CLD3 identifier on the bundled benchmarks' own questions, the testbed's identifier, and
the rates stored, reported and drawn."""

from __future__ import annotations

import sqlite3

import pytest
from conftest import run_cli

from copsd.evaluation.language_id import (
    identifier_for,
    identify_parts,
    language_metrics,
    segments,
    split_thinking,
)
from copsd.results.schema import LANGUAGE_COLUMNS

SW = "Bata wa Janet hutaga mayai kila siku. Huwa anakula matatu wakati wa staftahi kila asubuhi."
EN = "Janet's ducks lay eggs every day. She eats three of them for breakfast every morning."


def test_the_stored_columns_are_the_computed_metrics():
    metrics, _ = language_metrics([EN], [True], "swa", thinking=False)
    assert tuple(metrics) == LANGUAGE_COLUMNS


def test_math_numbers_and_latex_are_stripped_before_identification():
    assert segments("16 - 3 - 4 = 9. $9 \\times 2 = 18$ \\boxed{18}") == []
    (seg, letters), *_ = segments("Jibu ni \\frac{a}{b}: mayai 16 kwa $2 kila siku.")
    assert "frac" not in seg and "16" not in seg and letters == sum(c.isalpha() for c in seg)
    # currency is text, not math: the words between two dollar amounts stay
    text = segments("She sells them for $2 each egg and buys more eggs for $3 at the market.")
    assert text and "market" in text[0][0]


def test_thinking_and_answer_parts():
    assert split_thinking("<think>a</think>b", True) == (" a", "b")
    assert split_thinking("cut at the budget", True) == ("cut at the budget", "")
    assert split_thinking("no thinking", False) == ("", "no thinking")


def test_shares_dominance_and_accuracy_split():
    responses = [f"<think>{SW}</think>{SW}", f"<think>{EN}</think>{EN}", f"<think>{SW} {EN}</think>", "18"]
    m, per = language_metrics(responses, [True, False, True, False], "swa", thinking=True)
    assert per[0]["language_think"] == per[0]["language_answer"] == "swa" and per[0]["target_share"] == 1.0
    assert per[1]["language_think"] == "eng" and per[1]["english_share"] == 1.0
    assert per[3] == {"language_think": None, "language_answer": None, "target_share": None, "english_share": None}
    assert 0.3 < per[2]["target_share"] < 0.7 and per[2]["language_answer"] is None
    assert m["target_dominant_rate"] == pytest.approx(2 / 3) and m["english_dominant_rate"] == pytest.approx(1 / 3)
    assert m["accuracy_target_dominant"] == 1.0 and m["accuracy_english_dominant"] == 0.0
    assert m["target_language_rate_answer"] == pytest.approx(0.5)  # two samples with an identifiable answer


def test_an_unsupported_target_is_never_guessed():
    lid = identifier_for("ewe")
    assert lid.name == "py3langid" and not lid.supported
    m, per = language_metrics(
        [EN, "Ŋdi nyuie, ame ɖeka ƒle akɔnta enyi le asi me."], [True, False], "ewe", thinking=False
    )
    assert m["target_language_rate"] is None and m["target_dominant_rate"] is None
    assert m["english_rate"] is not None and per[0]["language_answer"] == "eng"
    assert all(p["target_share"] is None for p in per)


def test_english_target_rates_are_the_english_ones():
    m, _ = language_metrics([EN, SW], [True, True], "eng", thinking=False)
    assert m["target_language_rate"] == m["english_rate"] == pytest.approx(0.5)


@pytest.mark.parametrize(("bench", "language", "split"), [("mgsm", "swa", "test"), ("mgsm", "fra", "test"),
                                                              ("gsm8k", "eng", "test"), ("polymath", "ara", "low")])  # fmt: skip
def test_langid_names_the_benchmarks_own_questions(bench, language, split):
    """The real identifier on the bundled benchmarks (the full table: docs/method.md)."""
    from copsd.data.benchmarks import load_problems

    questions = [p.question for p in load_problems(bench, language, split)][:200]
    lid = identifier_for(language)
    which = "english" if language == "eng" else "target"
    hits = [s.dominant() == which for s in identify_parts(questions, lid)]
    assert sum(hits) / len(hits) >= 0.97


def test_the_testbed_identifier_knows_its_languages():
    from copsd.testbed.world import problems, translate

    lid = identifier_for("synlo")
    assert lid.name == "plugin:synlo" and lid.supported
    q_lo = problems("synlo", "test", 3)[0][0]
    q_vlo = problems("synvlo", "test", 3)[0][0]
    eng = problems("eng", "test", 3)[0][0]
    assert lid.identify([q_lo, q_vlo, eng]) == ["synlo", "synvlo", "eng"]
    assert translate(eng, "synlo") == q_lo  # the same problem, word by word


def test_eval_stores_reports_and_draws_the_language_rates(workdir):
    r = run_cli(
        "eval", "-m", "builtin:testbed", "-l", "synlo", "-b", "testbed", "--limit", "20", "--no-mlflow", cwd=workdir
    )
    assert r.returncode == 0, r.stderr
    assert "target_language_rate" in r.stdout
    con = sqlite3.connect(workdir / "experiments.db")
    t, e = con.execute("SELECT target_language_rate, english_rate FROM results").fetchone()
    assert t is not None and e is not None and 0 <= t + e <= 1.0 + 1e-9
    r = run_cli("report", "table", "--metric", "target_language_rate", "--out", "t.md", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert f"{100 * t:.1f}" in (workdir / "t.md").read_text()
    from copsd.reports.figures import accuracy_by_language, language_share
    from copsd.results import ResultsDB

    df = ResultsDB(f"sqlite:///{workdir / 'experiments.db'}", readonly=True).results_frame()
    assert language_share(df, workdir / "share.png").exists()
    got = accuracy_by_language(df, workdir / "acc.png")
    assert not isinstance(got, str) and got.exists()


def test_each_distinct_segment_is_identified_once_across_parts_and_budgets():
    """An evaluation shares one cache: the cut responses of every budget and the samples that
    repeat a sentence cost no second identification, and the labels are the same."""
    from copsd.evaluation.language_id import LanguageIdentifier

    real = identifier_for("swa")
    asked: list[str] = []

    def counting(texts):
        asked.extend(texts)
        return real.identify(texts)

    lid = LanguageIdentifier("swa", counting, True, "py3langid")
    cache: dict[str, str] = {}
    first = identify_parts([f"{SW} {EN}", SW, EN], lid, cache)
    assert sorted(asked) == sorted(set(asked)) and len(asked) == 4  # two Swahili, two English sentences
    again = identify_parts([SW, EN], lid, cache)
    assert len(asked) == 4 and again == first[1:]
    assert first == identify_parts([f"{SW} {EN}", SW, EN], real)  # the same labels without a cache
