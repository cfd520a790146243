"""`copsd data import-prompts`: the released language_config.py layout, parsed (never run).

The file below is synthetic (made-up strings) with the released file's structure: two dict
literals, the loop that sets every African teacher instruction to the student instruction, the
merge, and the SW = SWA alias."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from conftest import ROOT, run_cli

from copsd.data.import_prompts import import_prompts, read_released_config
from copsd.errors import CopsdError


def _entry(tag: str) -> str:
    return f"""{{
        "student_instruction": ("{tag} student instruction with \\\\boxed{{}}."),
        "think_prefix": ("{tag} thinking prefix. "),
        "reason_first_prompt": ("{tag} reason " "first"),
        "transition_prompt": ("{tag} transition " "paragraph:"),
        "teacher_final_instruction": ("{tag} teacher final instruction"),
        "labels": {{
            "problem_target": "{tag}-Problem",
            "problem_english": "{tag}-EnglishProblem",
            "solution_english": "{tag}-Solution",
            "ref_begin": "=== {tag} begin ===",
            "ref_end": "=== {tag} end ===",
        }},
    }}"""


SYNTHETIC = f"""
import os  # never executed: this line would be harmless, the next one would not
open({{marker!r}}, "w").write("executed")
LANGUAGE_CONFIG = {{
    "EN": {_entry("EN")},
    # a comment inside the dict
    "SW": {_entry("SWPOLY")},
    "DE": {_entry("DE")},
}}

AFRICAN_LANGUAGE_CONFIG = {{
    # West Africa
    "HAU": {_entry("HAU")},
    "SWA": {_entry("SWA")},
}}

for code, cfg in AFRICAN_LANGUAGE_CONFIG.items():
    cfg["teacher_final_instruction"] = cfg["student_instruction"]

LANGUAGE_CONFIG.update(AFRICAN_LANGUAGE_CONFIG)
LANGUAGE_CONFIG["SW"] = LANGUAGE_CONFIG["SWA"]
"""


@pytest.fixture
def released(tmp_path):
    marker = tmp_path / "EXECUTED"
    path = tmp_path / "language_config.py"
    path.write_text(SYNTHETIC.replace("{marker!r}", repr(str(marker))), encoding="utf-8")
    return path, marker


def test_parse_reapplies_the_closing_statements_without_running_the_file(released):
    path, marker = released
    cfg = read_released_config(path)
    assert not marker.exists()
    assert set(cfg) == {"EN", "SW", "DE", "HAU", "SWA"}
    assert cfg["HAU"]["teacher_final_instruction"] == cfg["HAU"]["student_instruction"]  # statement 1
    assert cfg["DE"]["teacher_final_instruction"] == "DE teacher final instruction"  # non-African kept
    assert cfg["SW"] is cfg["SWA"]  # statement 3: PolyMath SW uses the SWA strings


def test_import_writes_a_registry_the_prompts_and_job_ids_use(released, tmp_path):
    path, marker = released
    out = tmp_path / "released.yaml"
    r = run_cli("data", "import-prompts", str(path), "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "4 languages (deu, eng, hau, swa)" in r.stdout  # SW folded into swa and f"COPSD_LANGUAGES={out}" in r.stdout
    assert not marker.exists()
    # in a fresh process with the file selected: prompts carry the imported strings, ids change
    code = """
import json
from transformers import AutoTokenizer
from copsd.config import JobConfig
from copsd.data.languages import get_language
from copsd.prompts import teacher_user_message
t = get_language("hau").teacher
msg = teacher_user_message("swali", "hau", problem_en="q", solution_en="s")
job = JobConfig(method="copsd", model="m/m", language="swa", eval={"benchmark": "mgsm"})
print(json.dumps({"msg": msg, "swa_instruction": get_language("swa").instruction,
                  "swa_thinking": get_language("swa").thinking, "id": job.job_id,
                  "deu_final": get_language("deu").teacher.final_instruction}))
"""
    env = {**os.environ, "COPSD_LANGUAGES": str(out)}
    got = json.loads(
        subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=ROOT, check=True
        ).stdout
    )
    assert got["msg"] == (
        "HAU-Problem: swali\n\nHAU-EnglishProblem: q\n\nHAU-Solution:\n=== HAU begin ===\ns\n=== HAU end ===\n\n"
        "HAU transition paragraph:\nHAU student instruction with \\boxed{}."
    )
    assert got["swa_instruction"].startswith("SWA student") and got["swa_thinking"] == "SWA thinking prefix."
    assert got["deu_final"] == "DE teacher final instruction"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert json.loads(plain.stdout)["id"] != got["id"]  # the prompt fingerprint is part of the job id


def test_bad_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("LANGUAGE_CONFIG = {'EN': make()}\n")
    with pytest.raises(CopsdError, match="not a plain literal"):
        import_prompts(bad, tmp_path / "o.yaml")
    bad.write_text("X = 1\n")
    with pytest.raises(CopsdError, match="no LANGUAGE_CONFIG"):
        import_prompts(bad, tmp_path / "o.yaml")
    bad.write_text("LANGUAGE_CONFIG = {\n")
    with pytest.raises(CopsdError, match="not valid Python"):
        import_prompts(bad, tmp_path / "o.yaml")
    r = run_cli("data", "import-prompts", str(tmp_path / "missing.py"), cwd=tmp_path)
    assert r.returncode == 2 and "file not found" in r.stderr and len(r.stderr.strip().splitlines()) == 1
