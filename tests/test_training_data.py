"""Training data: the bundled Swahili set, GSM8K cleaning, COPSD JSON / Hub variants and
directories, the translation-quality flag, and never training on evaluation test problems."""

from __future__ import annotations

import json

import pytest

from copsd.data.training import clean_gsm8k_solution, load_training_data
from copsd.errors import DataError


def test_bundled_swahili_set_and_gsm8k_cleaning():
    train, val = load_training_data("swa", val_size=64)
    assert len(train) + len(val) == 7468 and len(val) == 64
    assert all("<<" not in e.solution_en and "\\boxed{" in e.solution_en for e in train[:50])
    sol, ans = clean_gsm8k_solution("3 * 2 = <<3*2=6>>6 apples\n#### 1,006")
    assert sol == "3 * 2 = 6 apples\nThe answer is \\boxed{1006}." and ans == "1006"


def test_copsd_json_hub_variant_directory_and_errors(tmp_path):
    recs = [{"problem": f"P{i}", "solution": f"S \\boxed{{{i}}}", "problem_hau": f"H{i}"} for i in range(10)]
    (tmp_path / "translated_hau.json").write_text(json.dumps(recs))
    train, val = load_training_data("hau", str(tmp_path / "translated_{language}.json"), val_size=2)
    assert len(train) == 8 and {e.answer for e in train + val} == {str(i) for i in range(10)}
    hub = [
        {"problem": f"Q{i}", "solution": "x #### 7", "problem_translated": f"T{i}", "language": "Hausa"}
        for i in range(5)
    ] + [{"problem": "Z", "solution": "y", "problem_translated": "W", "language": "yor"}]
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "part.jsonl").write_text("\n".join(json.dumps(r) for r in hub))
    train, val = load_training_data("ha", str(tmp_path / "d"), val_size=1)
    assert len(train) + len(val) == 5 and train[0].answer == "7" and "\\boxed{7}" in train[0].solution_en
    # never train on evaluation test problems
    leak = [{"problem": open_mgsm_en_first(), "solution": "s", "problem_hau": "h"}] + recs
    (tmp_path / "leak.json").write_text(json.dumps(leak))
    train, val = load_training_data("hau", str(tmp_path / "leak.json"), val_size=2)
    assert len(train) + len(val) == 10
    with pytest.raises(DataError, match="no training data for language 'hau'"):
        load_training_data("hau")
    with pytest.raises(DataError, match="lacks 'problem'"):
        (tmp_path / "bad.json").write_text(json.dumps([{"problem_hau": "x", "problem": "y"}]))
        load_training_data("hau", str(tmp_path / "bad.json"), val_size=1)
    with pytest.raises(DataError, match="not found"):
        load_training_data("hau", str(tmp_path / "missing.json"))


def test_translation_quality_flag_drops_records_as_released(tmp_path):
    """`problem_<lang>_ok` present and not exactly true -> dropped; absent -> kept."""
    recs = [{"problem": f"P{i}", "solution": f"S \\boxed{{{i}}}", "problem_hau": f"H{i}"} for i in range(8)]
    recs[0]["problem_hau_ok"] = True
    recs[1]["problem_hau_ok"] = False
    recs[2]["problem_hau_ok"] = True
    recs[3]["problem_hau_ok"] = None
    path = tmp_path / "flags.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    counts: dict = {}
    train, val = load_training_data("hau", str(path), val_size=1, counts=counts)
    kept = sorted(e.problem for e in train + val)
    # datasets reads the flag column for every record: records 4-7 get null there and are dropped,
    # exactly as the released filter does on the same file
    assert kept == ["H0", "H2"]
    assert counts["dropped_quality_flag"] == 6 and counts["records_read"] == 8
    # a flag written as text is not true either
    for i, r in enumerate(recs):
        r["problem_hau_ok"] = "true" if i < 4 else "yes"
    path.write_text("\n".join(json.dumps(r) for r in recs))
    with pytest.raises(DataError, match="only 0 usable"):
        load_training_data("hau", str(path), val_size=1)


def test_quality_flag_on_some_records_of_a_plain_list(tmp_path):
    recs = [{"problem": f"P{i}", "solution": f"S \\boxed{{{i}}}", "problem_hau": f"H{i}"} for i in range(6)]
    path = tmp_path / "noflags.json"
    path.write_text(json.dumps(recs))
    counts: dict = {}
    train, val = load_training_data("hau", str(path), val_size=1, counts=counts)
    assert len(train) + len(val) == 6 and counts["dropped_quality_flag"] == 0
    assert counts["train"] == 5 and counts["validation"] == 1 and counts["dropped_test_overlap"] == 0


def open_mgsm_en_first() -> str:
    from copsd.data.benchmarks import load_problems

    return load_problems("mgsm", "eng", limit=1)[0].question
