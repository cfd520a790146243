"""A sweep logging to a real MLflow tracking server on 127.0.0.1, read back over its REST API."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from conftest import run_cli


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read().decode())


def _post(url: str, body: dict):
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read().decode())


SPEC = """
name: served
defaults:
  model: builtin:tiny-qwen3
  dtype: float32
  eval:
    benchmark: mgsm
    limit: 2
    decoding: {n_samples: 2, max_new_tokens: 12}
    budgets: [6]
    checkpoints: [1, 2]
  train: {batch_size: 2, micro_batch_size: 2, max_steps: 2, save_steps: 1, lr: 1.0e-3, lora: {r: 4, alpha: 8},
          max_examples: 24, val_size: 8, max_completion_length: 8}
matrix:
  language: [swa]
  method: [base, copsd]
"""


@pytest.mark.slow
@pytest.mark.service
def test_runs_logged_to_server_and_read_back_over_rest(workdir):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            f"sqlite:///{workdir / 'server.db'}",
            "--artifacts-destination",
            str(workdir / "server-artifacts"),
            "--workers",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up")
        spec = workdir / "served.yaml"
        spec.write_text(SPEC)
        r = run_cli("sweep", "run", str(spec), cwd=workdir, env={"MLFLOW_TRACKING_URI": base})
        assert r.returncode == 0, r.stderr + r.stdout
        exp = _get(f"{base}/api/2.0/mlflow/experiments/get-by-name?experiment_name=copsd")["experiment"]
        # the UI opens it in the model-training runs view, not the GenAI overview
        assert {t["key"]: t["value"] for t in exp["tags"]}["mlflow.experimentKind"] == "custom_model_development"
        runs = _post(f"{base}/api/2.0/mlflow/runs/search", {"experiment_ids": [exp["experiment_id"]]})["runs"]
        tags = [{t["key"]: t["value"] for t in run["data"].get("tags", [])} for run in runs]
        parent = [t for t in tags if t.get("copsd.kind") == "sweep"]
        kids = [(run, t) for run, t in zip(runs, tags) if t.get("copsd.kind") == "job"]
        assert len(parent) == 1 and len(kids) == 2
        for run, t in kids:
            assert t["mlflow.parentRunId"] == runs[tags.index(parent[0])]["info"]["run_id"]
            metrics = {m["key"]: m["value"] for m in run["data"]["metrics"]}
            assert f"eval/{t['language']}/accuracy" in metrics
            assert f"eval_budget6/{t['language']}/accuracy" in metrics
            params = {p["key"]: p["value"] for p in run["data"]["params"]}
            assert params["model"] == "builtin:tiny-qwen3"
        # the artifacts went through the server too: config, generations, and each job's figures
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=base)
        for run, t in kids:
            run_id = run["info"]["run_id"]
            assert "config.yaml" in {a.path for a in client.list_artifacts(run_id)}
            figures = {a.path for a in client.list_artifacts(run_id, "figures")}
            want = {"figures/scaling.png", "figures/scaling.pdf"}
            if t["method"] == "copsd":
                want |= {"figures/curves_accuracy.png", "figures/curves_accuracy.pdf"}
            assert figures == want, (t["method"], figures)
            for name in want:
                with urllib.request.urlopen(
                    f"{base}/get-artifact?path={name}&run_uuid={run_id}", timeout=10
                ) as resp:  # what the UI fetches
                    head = resp.read(8)
                assert head.startswith(b"\x89PNG" if name.endswith(".png") else b"%PDF"), (name, head)
        assert not (workdir / "mlflow.db").exists(), "MLFLOW_TRACKING_URI must override the default store"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
