"""Every bad input in docs/crash_safety.md: one line naming the file/field and the fix, exit code
2 for user errors, the database untouched (or not created)."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest
from conftest import SMALL_SPEC, run_cli

from copsd.results import ResultsDB


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


def _setup_existing_db(w: Path) -> None:
    ResultsDB(f"sqlite:///{w / 'experiments.db'}").close()


def _setup_newer_schema(w: Path) -> None:
    _setup_existing_db(w)
    con = sqlite3.connect(w / "experiments.db")
    con.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    con.commit()
    con.close()


# id, files to write (name -> bytes), setup, argv, env, message fragments
CASES = [
    ("spec-missing", {}, None, ["sweep", "run", "nope.yaml"], {}, ["nope.yaml", "not found"]),
    (
        "spec-bad-yaml",
        {"s.yaml": b"name: x\nmatrix: [1, 2\n"},
        None,
        ["sweep", "run", "s.yaml"],
        {},
        ["s.yaml", "not valid YAML", "line"],
    ),
    (
        "spec-not-utf8",
        {"s.yaml": b"name: x\ndescription: \xff\xfe\n"},
        None,
        ["sweep", "plan", "s.yaml"],
        {},
        ["s.yaml", "not UTF-8", "save the spec as UTF-8"],
    ),
    (
        "spec-unknown-field",
        {"s.yaml": SMALL_SPEC.replace("limit: 3", "limt: 3").encode()},
        None,
        ["sweep", "plan", "s.yaml"],
        {},
        ["limt"],
    ),
    (
        "only-matches-nothing",
        {"s.yaml": SMALL_SPEC.encode()},
        None,
        ["sweep", "run", "s.yaml", "--only", "language=fra"],
        {},
        ["--only", "swa"],
    ),
    (
        "db-not-a-database",
        {"experiments.db": b"just some text\n" * 300},
        None,
        ["sweep", "status"],
        {},
        ["not an SQLite results database"],
    ),
    (
        "db-directory-missing",
        {},
        None,
        ["sweep", "status", "--db", "sqlite:///no/such/dir/r.db"],
        {},
        ["no results database"],
    ),
    ("db-newer-schema", {}, _setup_newer_schema, ["sweep", "status"], {}, ["schema v99", "upgrade copsd"]),
    (
        "languages-bad-yaml",
        {"s.yaml": SMALL_SPEC.encode(), "langs.yaml": b"swa: [1, 2\n"},
        None,
        ["sweep", "plan", "s.yaml"],
        {"COPSD_LANGUAGES": "langs.yaml"},
        ["COPSD_LANGUAGES file langs.yaml", "YAML"],
    ),
    (
        "languages-entry-incomplete",
        {"s.yaml": SMALL_SPEC.encode(), "langs.yaml": b"xyz: {name: X}\n"},
        None,
        ["sweep", "plan", "s.yaml"],
        {"COPSD_LANGUAGES": "langs.yaml"},
        ["COPSD_LANGUAGES file", "'xyz'", "instruction"],
    ),
    (
        "languages-file-missing",
        {"s.yaml": SMALL_SPEC.encode()},
        None,
        ["sweep", "plan", "s.yaml"],
        {"COPSD_LANGUAGES": "nope.yaml"},
        ["COPSD_LANGUAGES=nope.yaml", "not found"],
    ),
    (
        "mlflow-unreachable",
        {"s.yaml": SMALL_SPEC.encode()},
        None,
        ["sweep", "run", "s.yaml"],
        {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"},
        ["unreachable", "--no-mlflow"],
    ),
    ("report-without-db", {}, None, ["report", "table"], {}, ["no results database"]),
    ("status-unknown-job", {}, _setup_existing_db, ["sweep", "status", "--job", "abc"], {}, ["no job 'abc'"]),
    ("import-prompts-missing", {}, None, ["data", "import-prompts", "lc.py"], {}, ["lc.py", "not found"]),
    (
        "import-prompts-too-large",
        {"lc.py": b"LANGUAGE_CONFIG = {}\n" + b"#" * 1_100_000},
        None,
        ["data", "import-prompts", "lc.py", "-o", "out.yaml"],
        {},
        ["lc.py", "1,100,021 bytes", "at most 1,048,576"],
    ),
    (
        "import-prompts-out-is-input",
        {"lc.py": b"LANGUAGE_CONFIG = {}\n"},
        None,
        ["data", "import-prompts", "lc.py", "-o", "./lc.py"],
        {},
        ["--out lc.py is the input file"],
    ),
    (
        "import-prompts-entry-not-dict",
        {"lc.py": b"LANGUAGE_CONFIG = {'SWA': 5}\n"},
        None,
        ["data", "import-prompts", "lc.py", "-o", "out.yaml"],
        {},
        ["entry 'SWA' is of type int, not a dict"],
    ),
    (
        "import-prompts-huge-number",
        {"lc.py": b"LANGUAGE_CONFIG = {'SWA': {'student_instruction': 1" + b"0" * 6000 + b"}}\n"},
        None,
        ["data", "import-prompts", "lc.py", "-o", "out.yaml"],
        {},
        ["lc.py:1: not valid Python", "4300 digits"],
    ),
    (
        "import-prompts-labels-not-dict",
        {
            "lc.py": b"LANGUAGE_CONFIG = {'SWA': {'student_instruction': 'a', 'think_prefix': 'b', "
            b"'transition_prompt': 'c', 'teacher_final_instruction': 'd', 'labels': [1]}}\n"
        },
        None,
        ["data", "import-prompts", "lc.py", "-o", "out.yaml"],
        {},
        ["field 'labels' is of type list, not a dict"],
    ),
    (
        "import-prompts-out-dir-missing",
        {"lc.py": b"LANGUAGE_CONFIG = {}\n"},
        None,
        ["data", "import-prompts", "lc.py", "-o", "no/such/dir/x.yaml"],
        {},
        ["folder no/such/dir does not exist"],
    ),
    (
        "spec-recursive-alias",
        {"s.yaml": b"name: x\nmatrix: &m {seed: [*m]}\n"},
        None,
        ["sweep", "plan", "s.yaml"],
        {},
        ["s.yaml", "recursive anchor"],
    ),
    (
        "checkpoint-not-saved",
        {
            "s.yaml": SMALL_SPEC.replace("method: [base]", "method: [copsd]")
            .replace("batch_size: 8", "batch_size: 8\n    checkpoints: [3]")
            .encode()
        },
        None,
        ["sweep", "plan", "s.yaml"],
        {},
        ["eval.checkpoints", "save_steps"],
    ),
    (
        "reset-bad-status",
        {"s.yaml": SMALL_SPEC.encode()},
        _setup_existing_db,
        ["sweep", "reset", "s.yaml", "--status", "WAITING"],
        {},
        ["--status", "RUNNING"],
    ),
]


@pytest.mark.parametrize(("name", "files", "setup", "argv", "env", "fragments"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_exit_2_db_untouched(workdir, name, files, setup, argv, env, fragments):
    for fname, data in files.items():
        (workdir / fname).write_bytes(data)
    if setup:
        setup(workdir)
    db = workdir / "experiments.db"
    before = _digest(db)
    r = run_cli(*argv, cwd=workdir, env=env)
    err = r.stderr.strip()
    assert r.returncode == 2, (r.stdout, err)
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for f in fragments:
        assert f in err, (f, err)
    assert _digest(db) == before  # untouched, or still absent
