"""End to end through the real `copsd` program: sweeps, database, MLflow, reports, errors."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from conftest import ROOT, SMALL_SPEC, run_cli


def _db_rows(path, q):
    con = sqlite3.connect(path)
    try:
        return con.execute(q).fetchall()
    finally:
        con.close()


def test_small_sweep_end_to_end_and_rerun_does_no_work(workdir, small_spec):
    r = run_cli("sweep", "run", str(small_spec), cwd=workdir)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "4 done, 0 failed" in r.stdout
    # no terminal: a line per job start and finish (id, label, seconds, headline metric); notes once
    ids = {line.split()[1] for line in r.stdout.splitlines() if line.startswith("start  ")}
    done = [line for line in r.stdout.splitlines() if line.startswith("DONE   ")]
    assert len(ids) == 4 and len(done) == 4 and all("accuracy" in d and "step 0" in d for d in done)
    assert r.stderr.count("note: rollout engine") == 1 and "FutureWarning" not in r.stderr
    db = workdir / "experiments.db"
    rows = _db_rows(
        db,
        "select j.language, j.seed, r.step, r.n_problems, r.n_samples, r.accuracy, r.format_rate "
        "from results r join jobs j on j.id = r.job_id order by j.language, j.seed",
    )
    assert [(x[0], x[1], x[2], x[3], x[4]) for x in rows] == [
        ("eng", 0, 0, 3, 2),
        ("eng", 1, 0, 3, 2),
        ("swa", 0, 0, 3, 2),
        ("swa", 1, 0, 3, 2),
    ]
    assert all(0.0 <= x[5] <= 1.0 and 0.0 <= x[6] <= 1.0 for x in rows)
    assert {s for (s,) in _db_rows(db, "select status from jobs")} == {"DONE"}
    # provenance: what each number was made with, in the DB and through `sweep status --job`
    import json as _json

    job_id, prov_json = _db_rows(db, "select id, provenance_json from jobs order by id")[0]
    prov = _json.loads(prov_json)
    for key in ("copsd_version", "torch_version", "transformers_version", "peft_version", "math_verify_version"):
        assert prov[key], key
    assert prov["git_commit"] and isinstance(prov["git_dirty"], bool)  # run from this checkout
    assert prov["device"].startswith("cpu") and len(prov["prompt_fingerprint"]) == 12
    assert len(prov["eval_data_fingerprint"]) == 16
    shown = run_cli("sweep", "status", "--job", job_id, cwd=workdir)
    assert shown.returncode == 0 and prov["eval_data_fingerprint"] in shown.stdout and "git_commit" in shown.stdout

    # MLflow: one parent run for the sweep, four nested job runs with params, metrics and artifacts
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}")
    exp = client.get_experiment_by_name("copsd")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"  # the UI opens the runs view
    runs = client.search_runs([exp.experiment_id])
    parents = [x for x in runs if x.data.tags.get("copsd.kind") == "sweep"]
    children = [x for x in runs if x.data.tags.get("copsd.kind") == "job"]
    assert len(parents) == 1 and len(children) == 4
    assert all(c.data.tags.get("copsd.provenance.prompt_fingerprint") for c in children)
    pid = parents[0].info.run_id
    for ch in children:
        assert ch.data.tags["mlflow.parentRunId"] == pid
        assert ch.info.status == "FINISHED"
        assert ch.data.params["method"] == "base" and ch.data.params["eval.decoding.n_samples"] == "2"
        assert f"eval/{ch.data.tags['language']}/accuracy" in ch.data.metrics
        assert ch.data.tags["copsd.rollout_engine"] == "hf"  # auto on CPU
        arts = {a.path for a in client.list_artifacts(ch.info.run_id)} | {
            a.path for a in client.list_artifacts(ch.info.run_id, "generations")
        }
        assert "config.yaml" in arts and any(a.startswith("generations/step00000_mgsm_") for a in arts)
    job_ids = {ch.data.tags["copsd.job_id"] for ch in children}
    assert job_ids == {i for (i,) in _db_rows(db, "select id from jobs")}

    before = _db_rows(db, "select id, created_at from results order by id")
    r2 = run_cli("sweep", "run", str(small_spec), cwd=workdir)
    assert r2.returncode == 0 and "0 done, 0 failed, 4 skipped" in r2.stdout
    assert _db_rows(db, "select id, created_at from results order by id") == before

    t = run_cli("report", "table", "--by", "language", "--sweep", "small", cwd=workdir)
    assert t.returncode == 0, t.stderr
    assert "swa" in t.stdout and "eng" in t.stdout and "Avg" in t.stdout and "±" in t.stdout
    md = (workdir / "reports" / "small_by_language_accuracy.md").read_text()
    assert md.count("\n| ") == 4  # header + swa + Avg + eng
    c = run_cli("report", "table", "--by", "language", "--format", "csv", "--metric", "format_rate", cwd=workdir)
    table = list(csv.reader(io.StringIO(c.stdout)))
    assert table[0] == ["language", "tiny-qwen3/base", "tiny-qwen3/base:std", "tiny-qwen3/base:delta"]
    assert [row[0] for row in table[1:]] == ["swa", "Avg", "eng"]  # English apart, not in the average
    for fmt, marker in (("latex", r"\begin{tabular}"), ("html", "<table>")):
        o = workdir / f"t.{fmt}"
        r = run_cli("report", "table", "--format", fmt, "--out", str(o), cwd=workdir)
        assert r.returncode == 0 and marker in o.read_text()

    st = run_cli("sweep", "status", cwd=workdir)
    assert "small" in st.stdout and "4" in st.stdout
    plan = run_cli("sweep", "plan", str(small_spec), cwd=workdir)
    assert plan.stdout.count("DONE") == 4


def test_failing_jobs_do_not_stop_the_sweep(workdir):
    spec = workdir / "mixed.yaml"
    spec.write_text(
        SMALL_SPEC.replace("name: small", "name: mixed")
        .replace("method: [base]", "method: [base, copsd]")
        .replace("seed: [0, 1]", "seed: [0]")
        + "  model: [builtin:tiny-qwen3, ./no-such-model]\n"
        + "methods:\n  copsd:\n    train: {batch_size: 2, micro_batch_size: 2, max_steps: 1, save_steps: 1,"
        " max_completion_length: 8, lora: {r: 2, alpha: 4}}\n"
    )
    r = run_cli("sweep", "run", str(spec), "--max-attempts", "1", "--no-mlflow", cwd=workdir)
    assert r.returncode == 1
    assert "3 done, 5 failed" in r.stdout
    rows = dict(
        _db_rows(workdir / "experiments.db", "select method || '/' || model || '/' || language, last_error from jobs")
    )
    assert "no training data for language 'eng'" in rows["copsd/builtin:tiny-qwen3/eng"]
    assert "does not exist" in rows["base/./no-such-model/eng"]
    assert rows["base/builtin:tiny-qwen3/swa"] is None and rows["copsd/builtin:tiny-qwen3/swa"] is None
    again = run_cli("sweep", "run", str(spec), "--max-attempts", "1", "--no-mlflow", cwd=workdir)
    assert "0 done, 0 failed, 8 skipped" in again.stdout  # failed jobs at their cap are not retried
    assert again.returncode == 1  # ... and the exit code says the sweep is not done


@pytest.fixture(scope="module")
def db_with_results(tmp_path_factory):
    """A results DB holding one finished job, made once for the bad-input cases."""
    d = tmp_path_factory.mktemp("baseline")
    (d / "small.yaml").write_text(SMALL_SPEC)
    ok = run_cli("sweep", "run", "small.yaml", "--no-mlflow", "--only", "seed=0", "--only", "language=swa", cwd=d)
    assert ok.returncode == 0, ok.stderr
    return d / "experiments.db"


@pytest.mark.parametrize(
    "args, expect",
    [
        (["eval", "-m", "builtin:tiny-qwen3", "-l", "klingon", "-b", "mgsm"], "unknown language 'klingon'"),
        (["eval", "-m", "builtin:tiny-qwen3", "-l", "amh", "-b", "mgsm"], "has no language 'amh'"),
        (["eval", "-m", "./nope", "-l", "swa", "-b", "mgsm", "--limit", "1"], "model path './nope' does not exist"),
        (["eval", "-m", "Qwen/Qwen3-1.7B", "-l", "swa", "-b", "mgsm", "--limit", "1"], "Hub is unreachable"),
        (
            ["eval", "-m", "builtin:tiny-qwen3", "-l", "hau", "--data-dir", "./no-dir", "--limit", "1"],
            "AfriMGSM directory",
        ),
        (["eval", "-m", "builtin:tiny-qwen3", "-l", "hau", "--limit", "1"], "could not be loaded from the Hub"),
        (["eval", "-m", "builtin:tiny-qwen3", "-l", "swa", "-b", "mgsm", "--engine", "vllm"], "eval.rollout_engine"),
        (["sweep", "run", "no-such-spec.yaml"], "spec file not found"),
        (["sweep", "run", "demo", "--only", "language=hau"], "matches none of the 15 jobs"),
        (["report", "table", "--sweep", "nope"], "no sweep named 'nope'"),
        (["report", "table", "--metric", "bogus"], "unknown metric 'bogus'"),
    ],
)
def test_bad_inputs_one_line_error_and_db_intact(workdir, db_with_results, args, expect):
    db = workdir / "experiments.db"
    shutil.copy(db_with_results, db)
    before = _db_rows(db, "select * from results")
    extra = ["--no-mlflow"] if args[0] in ("eval", "sweep") else []
    r = run_cli(*args, *extra, cwd=workdir)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr + r.stdout
    err = r.stderr.strip()
    assert expect in err, err
    assert len(err.splitlines()) == 1, err
    assert _db_rows(db, "select * from results") == before
    assert _db_rows(db, "pragma integrity_check") == [("ok",)]


def test_eval_command_and_data_list(workdir):
    r = run_cli(
        "eval",
        "-m",
        "builtin:tiny-qwen3",
        "-l",
        "sw",
        "-b",
        "mgsm",
        "--limit",
        "2",
        "-k",
        "2",
        "--max-new-tokens",
        "8",
        "--no-mlflow",
        "--engine",
        "fast",
        cwd=workdir,
    )
    assert r.returncode == 0, r.stderr
    assert "accuracy" in r.stdout and "format_rate" in r.stdout
    assert _db_rows(
        workdir / "experiments.db", "select s.sweep_name, j.method from sweep_jobs s join jobs j on j.id=s.job_id"
    ) == [("eval", "base")]
    d = run_cli("data", "list", cwd=workdir)
    assert d.returncode == 0 and "afrimgsm" in d.stdout and "bundled" in d.stdout and "Vai" in d.stdout


def test_parallel_workers(workdir, small_spec):
    r = run_cli("sweep", "run", str(small_spec), "--workers", "2", "--no-mlflow", cwd=workdir)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "4 done" in r.stdout
    rows = _db_rows(workdir / "experiments.db", "select status, attempts, pid from jobs")
    assert all(s == "DONE" and a == 1 for s, a, _ in rows)
    assert len({p for _, _, p in rows}) == 2, "both worker processes should have run jobs"
    assert _db_rows(workdir / "experiments.db", "select count(*) from results") == [(4,)]


def test_ctrl_c_leaves_database_consistent_and_resumes(workdir):
    spec = workdir / "long.yaml"
    spec.write_text(
        SMALL_SPEC.replace("name: small", "name: long")
        .replace("limit: 3", "limit: 200")
        .replace("max_new_tokens: 16", "max_new_tokens: 64")
        .replace("seed: [0, 1]", "seed: [0]")
        .replace("language: [swa, eng]", "language: [swa]")
    )
    env = dict(os.environ)
    # as in a terminal: a runner that started us in the background (SIGINT ignored, which children
    # inherit, and then Python installs no KeyboardInterrupt handler) must not change the test
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "cli.py"), "sweep", "run", str(spec), "--no-mlflow"],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    db = workdir / "experiments.db"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            if db.exists() and _db_rows(db, "select count(*) from jobs where status='RUNNING'") == [(1,)]:
                break
        except sqlite3.OperationalError:  # the file exists before its tables do
            pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the job was never seen RUNNING")
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, (err, out)
    assert "resume" in err
    assert _db_rows(db, "select status, attempts, last_error from jobs") == [("PENDING", 0, "interrupted")]
    assert _db_rows(db, "pragma integrity_check") == [("ok",)]


@pytest.mark.parametrize("args", [["--help"], ["sweep", "plan", "demo", "--estimate"], ["data", "list"]])
def test_commands_that_need_no_model_do_not_import_torch(args):
    """Importing torch costs 1.5-2 s per command (docs/benchmarks.md); a module-level import of a
    trainer or a loader anywhere under the CLI brings it back."""
    code = (
        "import sys; sys.argv = ['copsd', *sys.argv[1:]]\n"
        "from copsd.cli.app import main\n"
        "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "print('torch' in sys.modules)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "False", r.stdout[-500:]
