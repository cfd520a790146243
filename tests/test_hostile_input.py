"""Hostile input (docs/crash_safety.md, "Hostile input"): no secret in any output or file, no code
from a model directory, bounded YAML, bounded waits on a locked DB, disk full and read-only disks
as one line, submit validated before it writes, a template that never ends fails its job."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import SMALL_SPEC, run_cli

from copsd.redact import display_url, scrub, shorten

SECRET = "S3cr3tPw-7781"
TOKEN = "tok-Zq81xYv"

ONE_JOB_SPEC = SMALL_SPEC.replace("language: [swa, eng]", "language: [swa]").replace("seed: [0, 1]", "seed: [0]")


def _digest(p: Path) -> str | None:
    return hashlib.sha256(p.read_bytes()).hexdigest() if p.exists() else None


# ---- secrets ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgresql+psycopg://u:pw@host:5432/db", "postgresql+psycopg://u:***@host:5432/db"),
        ("mysql://u:p@ss:w@rd@h/db", "mysql://u:***@h/db"),
        ("http://user:tok@mlflow:5000/", "http://user:***@mlflow:5000/"),
        (
            "postgresql://h/db?user=u&password=pw&sslmode=require",
            "postgresql://h/db?user=u&password=***&sslmode=require",
        ),
        ("https://mlflow?token=abc#x", "https://mlflow?token=***#x"),
        ("sqlite:////tmp/x.db", "sqlite:////tmp/x.db"),
        ("http://host:8080/path", "http://host:8080/path"),
        ("error at 'postgresql://a:b@h/d' and http://c:d@e", "error at 'postgresql://a:***@h/d' and http://c:***@e"),
    ],
)
def test_scrub_masks_passwords_tokens_and_keeps_the_rest(text, shown):
    assert scrub(text) == shown
    assert display_url(text) == shown


def test_scrub_masks_credential_environment_values(monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", TOKEN)
    assert TOKEN not in scrub(f"401 for Bearer {TOKEN}")


def test_shorten_cuts_and_says_so():
    line = shorten("x" * 10_000 + "\n" + "y", 200)
    assert len(line) <= 200 and "cut at 200" in line and "\n" not in line


def _grep_tree(root: Path, needles: list[str]) -> list[str]:
    hits = []
    for p in root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            hits += [f"{p}: {n}" for n in needles if n.encode() in data]
    return hits


@pytest.mark.slow
def test_no_secret_in_any_output_file_db_or_mlflow(workdir, postgres):
    """Every command against a server URL with a password (and an MLflow URL with a token): the
    secret appears in no stdout/stderr, no file written (reports, MLflow store and artifacts,
    submitit's pickles and task logs) and no row of the results DB."""
    from services import add_password_user

    url = add_password_user(postgres, "copsd_pw", SECRET)
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC)
    outputs: list[str] = []

    def cli(*args, env=None, ok=True):
        r = run_cli(*args, cwd=workdir, env=env)
        outputs.extend([r.stdout, r.stderr])
        if ok:
            assert r.returncode == 0, r.stderr
        return r

    cli("sweep", "run", "s.yaml", "--db", url)
    cli("sweep", "status", "--db", url)
    cli("sweep", "plan", "s.yaml", "--db", url)
    cli("report", "table", "--db", url, "--sweep", "small")
    cli("report", "html", "--db", url, "--sweep", "small", "--out", str(workdir / "rep"))
    cli("sweep", "status", "--job", "nope", "--db", url, ok=False)
    wrong = url.replace(SECRET, SECRET + "x")
    r = cli("sweep", "run", "s.yaml", "--db", wrong, ok=False)
    assert r.returncode == 2 and "***" in r.stderr, r.stderr
    r = cli(
        "sweep", "run", "s.yaml", "--db", url, env={"MLFLOW_TRACKING_URI": f"http://me:{TOKEN}@127.0.0.1:9"}, ok=False
    )
    assert r.returncode == 2 and "unreachable" in r.stderr and "me:***@" in r.stderr, r.stderr

    # submitit's local executor: the worker pickle and task logs hold the masked URL; the task
    # reads the real one from its environment and still finishes the job
    url2 = add_password_user(postgres, "copsd_pw2", SECRET)
    cli("sweep", "submit", "s.yaml", "--executor", "local", "--db", url2, "--no-mlflow")
    from copsd.results import ResultsDB

    deadline = time.time() + 240
    while time.time() < deadline:
        rdb = ResultsDB(url2, readonly=True)
        states = [j.status for j in rdb.jobs(sweep="small")]
        rdb.close()
        if states and all(s in ("DONE", "FAILED") for s in states):
            break
        time.sleep(2)
    assert states == ["DONE"], (states, _grep_tree(workdir / "slurm", ["error"]))
    logs = "".join(p.read_text(errors="replace") for p in (workdir / "slurm").rglob("*.out"))
    assert "results in postgresql+psycopg://copsd_pw2:***@" in logs, logs[-2000:]

    for text in outputs:
        assert SECRET not in text and TOKEN not in text, text
    assert _grep_tree(workdir, [SECRET, TOKEN]) == []
    import pandas as pd
    from sqlalchemy import create_engine, inspect

    for u in (url, url2):
        eng = create_engine(u)
        dump = "".join(pd.read_sql_table(t, eng).to_csv() for t in inspect(eng).get_table_names())
        eng.dispose()
        assert SECRET not in dump


# ---- no code from model directories ---------------------------------------------------------------
def _evil_model(root: Path, tiny_model, *, via: str) -> tuple[Path, Path]:
    """tiny-qwen3's files, with a config (or tokenizer config) that asks for its own Python code,
    which would write `marker` when imported."""
    d = root / f"evil-{via}"
    shutil.copytree(tiny_model.source, d)
    marker = root / f"RAN-{via}"
    code = (
        f"open({str(marker)!r}, 'w').write('ran')\nfrom transformers import PretrainedConfig, PreTrainedTokenizerFast\n"
    )
    code += "class EvilConfig(PretrainedConfig):\n    model_type = 'evilmodel'\n"
    code += "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n"
    for name in ("configuration_evil.py", "modeling_evil.py", "tokenization_evil.py"):
        (d / name).write_text(code)
    if via == "config":
        cfg = json.loads((d / "config.json").read_text())
        cfg.update(
            model_type="evilmodel",
            auto_map={"AutoConfig": "configuration_evil.EvilConfig", "AutoModelForCausalLM": "modeling_evil.X"},
        )
        (d / "config.json").write_text(json.dumps(cfg))
    else:
        tc = json.loads((d / "tokenizer_config.json").read_text())
        tc.update(
            tokenizer_class="EvilTokenizer", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]}
        )
        (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return d, marker


@pytest.mark.parametrize("via", ["config", "tokenizer"])
def test_model_directory_code_is_never_run_even_answering_yes(workdir, tiny_model, via):
    model, marker = _evil_model(workdir, tiny_model, via=via)
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC.replace("builtin:tiny-qwen3", str(model)))
    r = subprocess.run(  # in-process (--no-isolate), where transformers would otherwise ask on stdin
        [sys.executable, str(Path(__file__).parents[1] / "cli.py"), "sweep", "run", "s.yaml", "--no-mlflow",
         "--no-isolate"],
        cwd=workdir, input="y\ny\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    out = r.stdout + r.stderr
    assert not marker.exists(), out
    if via == "tokenizer":  # transformers loads tokenizer.json natively and ignores the custom class
        assert r.returncode == 0, out
        return
    assert r.returncode == 1, out  # the sweep ran; its job FAILED
    assert "its own Python code" in out and "trust_remote_code=False" in out, out
    assert "unreachable" not in out  # not mistaken for an unreachable Hub
    con = sqlite3.connect(workdir / "experiments.db")
    (status, err), *_ = con.execute("SELECT status, last_error FROM jobs").fetchall()
    assert status == "FAILED" and "its own Python code" in err


# ---- bounded YAML -------------------------------------------------------------------------------
def _bomb(levels: int = 9) -> str:
    lines = ['  a0: &a0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for i in range(1, levels):
        lines.append(f"  a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines)


def _measured(argv: list[str], cwd: Path, env: dict) -> tuple[subprocess.CompletedProcess, float, float]:
    """Run the CLI in a fresh wrapper process: (result, seconds, peak RSS of the CLI in MB)."""
    wrapper = (
        "import resource, subprocess, sys, time; t = time.time(); "
        "r = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "sys.stdout.write(r.stdout); sys.stderr.write(r.stderr); "
        "print(f'@@{time.time() - t} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}', file=sys.stderr); "
        "sys.exit(r.returncode)"
    )
    e = {**os.environ, **env}
    cmd = [sys.executable, "-c", wrapper, sys.executable, str(Path(__file__).parents[1] / "cli.py"), *argv]
    r = subprocess.run(cmd, cwd=cwd, env=e, capture_output=True, text=True, timeout=120)
    *err, stats = r.stderr.strip().splitlines()
    secs, rss_kb = stats.removeprefix("@@").split()
    return subprocess.CompletedProcess(cmd, r.returncode, r.stdout, "\n".join(err)), float(secs), int(rss_kb) / 1024


BOMBS = {
    "matrix-values": (
        f"name: bomb\nanchors:\n{_bomb()}\nmatrix:\n  language: [swa]\n  model: [builtin:tiny-qwen3]\n"
        "  method: [base]\n  seed: [*a8]\n",
        None,
    ),
    "search-choices": (
        SMALL_SPEC + f"x-anchors:\n{_bomb()}\nsearch:\n  params:\n    train.lr: {{type: categorical, choices: *a8}}\n",
        None,
    ),
    "languages-file": (SMALL_SPEC, f"swa:\n  name: x\n  strings:\n{_bomb()}\n  deep: *a8\n"),
}


@pytest.mark.parametrize("case", list(BOMBS))
def test_yaml_alias_bomb_is_one_line_fast_and_small(workdir, case):
    spec, langs = BOMBS[case]
    (workdir / "s.yaml").write_text(spec)
    env = {}
    if langs:
        (workdir / "langs.yaml").write_text(langs)
        env["COPSD_LANGUAGES"] = "langs.yaml"
    r, secs, rss_mb = _measured(["sweep", "plan", "s.yaml"], workdir, env)
    err = r.stderr.strip()
    assert r.returncode == 2, err
    assert len(err.splitlines()) == 1 and "too many aliases" in err, err
    assert secs < 10 and rss_mb < 200, (secs, rss_mb)  # the bound: < 1 s and < 200 MB unloaded
    assert not (workdir / "experiments.db").exists()


# ---- databases ----------------------------------------------------------------------------------
def _hold_write_lock(db: Path) -> subprocess.Popen:
    code = (
        "import sqlite3, sys, time; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
        "c.execute('BEGIN IMMEDIATE'); print('held', flush=True); time.sleep(120)"
    )
    p = subprocess.Popen([sys.executable, "-c", code, str(db)], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "held"
    return p


def test_locked_db_waits_a_bounded_time_saying_so_then_one_line(workdir):
    from copsd.results import ResultsDB

    db = workdir / "experiments.db"
    ResultsDB(f"sqlite:///{db}").close()
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC)
    holder = _hold_write_lock(db)
    try:
        before = _digest(db)
        t0 = time.time()
        r = run_cli("sweep", "run", "s.yaml", "--no-mlflow", cwd=workdir, env={"COPSD_DB_LOCK_TIMEOUT": "2"})
        took = time.time() - t0
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2, r.stderr
        assert len(lines) == 2 and "waiting up to 2 s" in lines[0] and "locked" in lines[1], lines
        assert "unexpected" not in r.stderr and took < 60
        # reading commands are not blocked by a writer
        assert run_cli("sweep", "status", cwd=workdir).returncode == 0
    finally:
        holder.kill()
        holder.wait()
    assert _digest(db) == before


def test_bad_lock_timeout_setting_is_one_line(workdir):
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC)
    r = run_cli("sweep", "run", "s.yaml", cwd=workdir, env={"COPSD_DB_LOCK_TIMEOUT": "soon"})
    assert r.returncode == 2 and "COPSD_DB_LOCK_TIMEOUT" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.fixture
def small_disk(tmp_path):
    """A 2 MB tmpfs of our own (real ENOSPC and a real read-only remount); skipped where mounting
    is not allowed."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({r.stderr.strip()[:200]})")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


@pytest.mark.slow
def test_full_disk_is_one_line_and_a_read_only_disk_can_be_read(workdir, small_disk):
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC)
    db = small_disk / "r.db"
    r = run_cli("sweep", "run", "s.yaml", "--db", str(db), "--no-mlflow", cwd=workdir)
    assert r.returncode == 0, r.stderr
    # read-only: status, plan and every report read it
    subprocess.run(["mount", "-o", "remount,ro", str(small_disk)], check=True)
    before = _digest(db)
    for argv in (
        ["sweep", "status", "--db", str(db)],
        ["sweep", "plan", "s.yaml", "--db", str(db)],
        ["report", "table", "--db", str(db), "--sweep", "small", "--out", str(workdir / "t.md")],
        ["report", "html", "--db", str(db), "--sweep", "small", "--out", str(workdir / "rep")],
    ):
        r = run_cli(*argv, cwd=workdir)
        assert r.returncode == 0, (argv, r.stderr)
    assert (workdir / "rep").exists() and _digest(db) == before
    # full: a new sweep cannot be registered
    subprocess.run(["mount", "-o", "remount,rw", str(small_disk)], check=True)
    filler = small_disk / "filler"
    with open(filler, "wb") as fh:
        try:
            while True:
                fh.write(b"\0" * 65536)
        except OSError:
            pass
    other = ONE_JOB_SPEC.replace("name: small", "name: other")
    (workdir / "o.yaml").write_text(other)
    r = run_cli("sweep", "run", "o.yaml", "--db", str(db), "--no-mlflow", cwd=workdir)
    err = r.stderr.strip()
    assert r.returncode == 2 and "disk" in err and "full" in err and "unexpected" not in err, err
    assert len(err.splitlines()) == 1, err
    filler.unlink()
    assert sqlite3.connect(db).execute("PRAGMA integrity_check").fetchone() == ("ok",)


# ---- submit -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--executor", "slurm"], {"PATH": "/nonexistent"}, "no SLURM on this machine"),
        (["--executor", "pbs"], {}, "--executor must be one of"),
        (["--executor", "local", "--partition", "gpu"], {}, "apply to --executor slurm only"),
        (["--executor", "local", "--slurm-arg", "account"], {}, "key=value"),
    ],
    ids=["no-slurm", "bad-executor", "partition-local", "bad-slurm-arg"],
)
def test_submit_validates_before_writing_anything(workdir, argv, env, fragment):
    (workdir / "s.yaml").write_text(ONE_JOB_SPEC)
    r = run_cli("sweep", "submit", "s.yaml", *argv, cwd=workdir, env=env)
    err = r.stderr.strip()
    assert r.returncode == 2 and len(err.splitlines()) == 1 and fragment in err, err
    assert "unexpected" not in err
    assert sorted(p.name for p in workdir.iterdir()) == ["s.yaml"]  # no DB, no slurm/ folder


# ---- a chat template that never ends ------------------------------------------------------------
def test_endless_chat_template_fails_the_job_with_its_reason(workdir, tiny_model):
    model = workdir / "looping"
    shutil.copytree(tiny_model.source, model)
    (model / "chat_template.jinja").write_text(
        "{% for a in range(100000) %}{% for b in range(100000) %}{% endfor %}{% endfor %}x"
    )
    t0 = time.time()
    r = run_cli(
        "eval", "-m", str(model), "-l", "swa", "-b", "mgsm", "--limit", "1", "--no-mlflow",
        cwd=workdir, env={"COPSD_TEMPLATE_TIMEOUT_S": "1"},
    )  # fmt: skip
    assert time.time() - t0 < 120
    assert r.returncode == 2 and "chat template took more than 1 s" in r.stderr, r.stderr
    con = sqlite3.connect(workdir / "experiments.db")
    (status, err), *_ = con.execute("SELECT status, last_error FROM jobs").fetchall()
    assert status == "FAILED" and "chat template" in err
