"""`copsd tune` against bad input (issue 27): a search whose trials all fail ends with the first
reason; a signal during a trial returns its job and fails the trial; a resumed study proposes new
values; `report tune` creates nothing; bad `search:` values are one-line spec errors; no URL is
printed with its password. Real Optuna, real SQLite/PostgreSQL, the real console program."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from conftest import ROOT, run_cli

from copsd.errors import SpecError
from copsd.spec import parse_spec

SPEC = """
name: tiny-tune
defaults:
  model: MODEL
  dtype: float32
  eval: {benchmark: mgsm, limit: 2, decoding: {n_samples: 1, temperature: 0.0, max_new_tokens: 8}, checkpoints: [STEPS]}
  train: {batch_size: 2, micro_batch_size: 2, max_steps: STEPS, save_steps: STEPS, lora: {r: 4, alpha: 8},
          max_examples: 24, val_size: 8, max_completion_length: 8}
matrix: {language: [swa], method: [copsd]}
search:
  params:
    train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}
  objective: {metric: format_rate, direction: minimize}
  n_trials: 10
  sampler: random
  pruner: none
"""


def _spec(workdir, model="builtin:nope", steps=2, **search) -> str:
    text = SPEC.replace("MODEL", model).replace("STEPS", str(steps))
    for key, value in search.items():
        if f"  {key}:" in text:
            lines = [f"  {key}: {value}" if ln.startswith(f"  {key}:") else ln for ln in text.splitlines()]
            text = "\n".join(lines) + "\n"
        else:
            text += f"  {key}: {value}\n"
    path = workdir / "tune.yaml"
    path.write_text(text)
    return str(path)


def _trials(url: str):
    return optuna.load_study(study_name="tiny-tune", storage=url).get_trials()


def _sha(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_search_whose_trials_all_fail_stops_with_the_first_reason(workdir):
    """A model that does not exist: every trial fails. The process stops after max_failures (3)
    failed trials in a row, in seconds, exit 1, and stderr is one line: the first failure's reason
    (before: 155 failed trials a minute, 1,398 stderr lines, never ending)."""
    spec = _spec(workdir)
    t0 = time.time()
    r = run_cli("tune", spec, "--no-mlflow", cwd=workdir, timeout=120)
    assert time.time() - t0 < 60
    assert r.returncode == 1, r.stdout + r.stderr
    (line,) = r.stderr.strip().splitlines()
    assert "3 trials in a row failed" in line and "the first, trial 0" in line, line
    assert "unknown built-in model 'builtin:nope'" in line and "Traceback" not in r.stdout + r.stderr
    assert r.stdout.count(" failed (") == 3 and len(r.stdout.splitlines()) == 7, r.stdout  # 3 x 2 + summary
    url = f"sqlite:///{workdir / 'experiments.db'}"
    assert [t.state.name for t in _trials(url)] == ["FAIL"] * 3
    # failed trials count toward n_trials: a budget of 2 is spent by 2 failures (exit 1, the first's reason)
    spec = _spec(workdir, model="/nonexistent/dir", n_trials=2, max_failures=5)
    (workdir / "experiments.db").unlink()
    r = run_cli("tune", spec, "--no-mlflow", cwd=workdir, timeout=120)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "all 2 ended trial(s) failed" in r.stderr and "/nonexistent/dir' does not exist" in r.stderr
    assert "0 finished trial(s) (2 failed)" in r.stdout
    again = run_cli("tune", spec, "--no-mlflow", cwd=workdir, timeout=120)  # nothing left: same status and line
    assert (again.returncode, again.stderr) == (1, r.stderr) and "trial 2" not in again.stdout
    assert len(_trials(url)) == 2


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_during_a_trial_returns_its_job_and_fails_the_trial(workdir, sig):
    """Like `copsd sweep run`: the job goes back to PENDING, the trial is FAIL (not left RUNNING),
    tagged interrupted and queued again with its values; exit 128 + signal, one line, no traceback.
    (Before: a 70-line traceback, exit 1, the trial RUNNING.)"""
    spec = _spec(workdir, model="builtin:tiny-qwen3", steps=400)  # minutes of training: killed long before
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "tune", spec, "--no-mlflow"],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    db = workdir / "experiments.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if db.exists() and sqlite3.connect(db).execute("select status from jobs").fetchall() == [("RUNNING",)]:
                break
        except sqlite3.OperationalError:
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the trial's job was never seen RUNNING")
    time.sleep(1.0)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + sig, (out, err)
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "trial 0 was stopped" in err and "returned to PENDING" in err
    assert ("terminated (SIGTERM)" if sig == signal.SIGTERM else "interrupted") in err
    con = sqlite3.connect(db)
    assert con.execute("select status, attempts, last_error from jobs").fetchall() == [("PENDING", 0, "interrupted")]
    con.close()
    first, queued = _trials(f"sqlite:///{db}")
    assert first.state.name == "FAIL" and first.user_attrs["copsd.interrupted"] == signal.Signals(sig).name
    assert queued.state.name == "WAITING" and queued.user_attrs["copsd.retry_of"] == 0
    # the rerun (or another worker) repeats it with the same values: the PENDING job is taken up again
    assert queued.system_attrs["fixed_params"] == first.params


def test_an_extended_study_proposes_new_values(workdir):
    """2 trials, then --n-trials 4: four distinct values (before: the sampler was seeded the same
    way on every run, so trials 2 and 3 repeated trials 0 and 1). TPE, the default sampler, draws
    its first trials with a seeded random sampler; failing trials keep the test fast."""
    spec = _spec(workdir, n_trials=2, max_failures=10, sampler="tpe")
    assert run_cli("tune", spec, "--no-mlflow", cwd=workdir, timeout=120).returncode == 1
    r = run_cli("tune", spec, "--no-mlflow", "--n-trials", "4", cwd=workdir, timeout=120)
    assert "trial 3:" in r.stdout, r.stdout + r.stderr
    values = [t.params["train.lr"] for t in _trials(f"sqlite:///{workdir / 'experiments.db'}")]
    assert len(values) == 4 and len(set(values)) == 4, values


def test_report_tune_creates_nothing_in_the_db(workdir):
    """A missing study in a plain results DB: one line, exit 2, the file byte-identical (before:
    Optuna's 13 tables were added to it). Reading an existing study leaves the DB as it was too."""
    from copsd.results import ResultsDB

    db = workdir / "experiments.db"
    ResultsDB(f"sqlite:///{db}").close()
    before = _sha(db)
    r = run_cli("report", "tune", "tiny-tune", cwd=workdir, timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.strip() == "error: no study named 'tiny-tune' in sqlite:///experiments.db; known: none"
    assert _sha(db) == before
    con = sqlite3.connect(db)
    assert not {"studies", "trials"} & {n for (n,) in con.execute("select name from sqlite_master")}
    con.close()
    run_cli("tune", _spec(workdir, n_trials=1), "--no-mlflow", cwd=workdir, timeout=120)  # a study (one failed trial)
    before = _sha(db)
    r = run_cli("report", "tune", "nope", cwd=workdir, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().endswith("known: tiny-tune"), r.stderr
    r = run_cli("report", "tune", "tiny-tune", cwd=workdir, timeout=120)
    assert r.returncode == 0 and "FAIL" in r.stdout and "unknown built-in model" in r.stdout, r.stdout + r.stderr
    assert "history: skipped: 0 complete trial(s)" in r.stdout and not r.stderr, r.stderr
    assert _sha(db) == before


BAD_PARAMS = [
    ("{type: float, low: 0.1, high: 0.5, step: 0}", "search.params.train.lr", "'step' must be > 0, not 0"),
    ("{type: float, low: 0.1, high: 0.5, step: -0.1}", "search.params.train.lr", "'step' must be > 0"),
    ("{type: float, low: 1.0e-5, high: 1.0e-3, log: true, step: 1.0e-5}", "search.params.train.lr",
     "'step' and 'log: true' cannot be combined"),
    ("{type: float, low: 0.5, high: 0.1}", "search.params.train.lr", "needs 'low' < 'high'"),
    ("{type: float, low: 0.1, high: 0.1}", "search.params.train.lr", "needs 'low' < 'high'"),
    ("{type: float, low: 0, high: 0.1, log: true}", "search.params.train.lr", "'log: true' needs 'low' > 0"),
    ("{type: float, low: 0.1, high: .inf}", "search.params.train.lr", "must be finite"),
    ("{type: float, low: 0.1, high: 0.5, step: 0.3}", "search.params.train.lr", "must be a multiple of 'step'"),
    ("{type: float, low: 0.1, high: 0.5, choices: [1]}", "search.params.train.lr", "'choices' is for"),
    ("{type: int, low: 1, high: 4.5}", "search.params.train.lr", "whole numbers"),
    ("{type: categorical, choices: [0.1], step: 1}", "search.params.train.lr", "takes 'choices' only"),
    ("{type: float, high: 0.5}", "search.params.train.lr", "needs 'low' and 'high'"),
]  # fmt: skip


@pytest.mark.parametrize(("space", "field", "says"), BAD_PARAMS, ids=[b[2][:30] for b in BAD_PARAMS])
def test_bad_search_params_are_spec_errors(space, field, says):
    text = SPEC.replace("MODEL", "builtin:tiny-qwen3").replace("STEPS", "2")
    text = text.replace("{type: float, low: 1.0e-5, high: 1.0e-3, log: true}", space)
    with pytest.raises(SpecError) as exc:
        parse_spec(__import__("yaml").safe_load(text), where="s.yaml")
    msg = str(exc.value)
    assert msg.startswith(f"s.yaml: field '{field}'") and says in msg and "\n" not in msg, msg


@pytest.mark.parametrize(
    ("key", "value", "says"),
    [("n_trials", "0", "search.n_trials"), ("max_failures", "0", "search.max_failures"), ("seed", "-1", "search.seed")],
)
def test_bad_search_settings_are_spec_errors(key, value, says):
    text = SPEC.replace("MODEL", "builtin:tiny-qwen3").replace("STEPS", "2").replace("  n_trials: 10\n", "")
    text += f"  {key}: {value}\n"
    with pytest.raises(SpecError, match=f"s.yaml: field '{says}'"):
        parse_spec(__import__("yaml").safe_load(text), where="s.yaml")


def test_bad_search_input_on_the_cli_is_one_line_and_writes_nothing(workdir):
    """Through the real program: exit 2, one line naming the spec file and field (before: a
    22-line Optuna traceback mid-study, or `--n-trials 0` accepted silently); no DB created."""
    cases = [
        (_spec(workdir, model="builtin:tiny-qwen3"), ["--n-trials", "0"], "--n-trials must be at least 1, not 0"),
        (_spec(workdir, model="builtin:tiny-qwen3"), ["--n-trials", "-2"], "--n-trials must be at least 1, not -2"),
        (_spec(workdir, model="builtin:tiny-qwen3"), ["--worker", "-1"], "--worker must be 0 or more, not -1"),
    ]
    for args, say in [(c[1], c[2]) for c in cases]:
        r = run_cli("tune", cases[0][0], "--no-mlflow", *args, cwd=workdir, timeout=120)
        assert r.returncode == 2 and r.stderr.strip() == f"error: {say}", (args, r.stderr)
    spec = workdir / "tune.yaml"
    for old, new, says in [
        ("log: true}", "log: true, step: 1.0e-5}", "field 'search.params.train.lr': 'step' and 'log: true'"),
        ("log: true}", "step: 0}", "field 'search.params.train.lr': 'step' must be > 0"),
        ("n_trials: 10", "n_trials: 0", "field 'search.n_trials'"),
        # every choice is checked against the job's fields before a trial runs (not just the first)
        ("train.lr: {type: float, low: 1.0e-5, high: 1.0e-3, log: true}",
         "train.clip: {type: categorical, choices: [0.05, clip]}", "field 'search.params.train.clip': the value 'clip' does not fit the job"),
    ]:  # fmt: skip
        _spec(workdir, model="builtin:tiny-qwen3")
        spec.write_text(spec.read_text().replace(old, new))
        r = run_cli("tune", str(spec), "--no-mlflow", cwd=workdir, timeout=120)
        assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, (old, r.stderr)
        assert r.stderr.startswith(f"error: {spec}: ") and says in r.stderr, r.stderr
    assert not (workdir / "experiments.db").exists()


def test_tune_never_prints_the_db_password(workdir, postgres):
    """The `results in …` line, the failure line and `report tune`'s "no study" line show the
    server URL with its password masked."""
    from services import add_password_user

    url = add_password_user(postgres, "tuner", "s3cr3t-Tune-PW")
    r = run_cli("tune", _spec(workdir, n_trials=1), "--db", url, "--no-mlflow", cwd=workdir, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "results in postgresql+psycopg://tuner:***@/" in r.stdout
    r2 = run_cli("report", "tune", "nope", "--db", url, cwd=workdir, timeout=120)
    assert r2.returncode == 2 and "no study named 'nope' in postgresql+psycopg://tuner:***@/" in r2.stderr
    assert r2.stderr.strip().endswith("known: tiny-tune"), r2.stderr
    r3 = run_cli("report", "tune", "tiny-tune", "--db", url, cwd=workdir, timeout=120)
    assert r3.returncode == 0, r3.stdout + r3.stderr
    for out in (r.stdout, r.stderr, r2.stdout, r2.stderr, r3.stdout, r3.stderr):
        assert "s3cr3t-Tune-PW" not in out
