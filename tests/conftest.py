"""Test environment: no network (HF_HUB_OFFLINE), one model cache per session, each test in its own dir."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _offline_env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("copsd-cache")
    old = {
        k: os.environ.get(k)
        for k in (
            "HF_HUB_OFFLINE",
            "COPSD_CACHE",
            "MLFLOW_TRACKING_URI",
            "COPSD_DB",
            "COPSD_AFRIMGSM_DIR",
            "TRANSFORMERS_OFFLINE",
        )
    }
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", COPSD_CACHE=str(cache))
    for k in ("MLFLOW_TRACKING_URI", "COPSD_DB", "COPSD_AFRIMGSM_DIR"):
        os.environ.pop(k, None)
    yield
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


# fixtures that start a real service (a PostgreSQL or SLURM daemon), and the tests that start
# their own (an MLflow server, Chromium) mark themselves `service`
SERVICE_FIXTURES = {"postgres", "slurm"}


def pytest_collection_modifyitems(config, items):
    """Markers by what a test needs, so `-m "not slow and not service"` runs in a few minutes and
    `-m gpu` selects the GPU checks: `service` for a test that starts a server, `gpu` for one that
    needs CUDA."""
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if SERVICE_FIXTURES & set(getattr(item, "fixturenames", ())) or params.get("db_url") == "postgresql":
            item.add_marker(pytest.mark.service)
        if item.module is not None and item.module.__name__ == "test_rollout_gpu":
            item.add_marker(pytest.mark.gpu)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for this test session (started on first use; tests/services.py)."""
    import shutil
    import tempfile

    from services import PostgresServer

    root = Path(tempfile.mkdtemp(prefix="copsd-pg-"))  # under /tmp: the postgres user must reach it
    server = PostgresServer(root).start()
    yield server
    server.stop()
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty results database on each backend the results DB supports."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'r.db'}"
    return request.getfixturevalue("postgres").new_database()


@pytest.fixture(scope="session")
def tiny_model(_offline_env):
    from copsd.models import load_model

    return load_model("builtin:tiny-qwen3", dtype="float32", device="cpu")


def run_cli(*args: str, cwd: Path, env: dict | None = None, timeout: float = 600) -> subprocess.CompletedProcess:
    """The real console program in a subprocess (what a user runs)."""
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "cli.py"), *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=timeout
    )


SMALL_SPEC = """
name: small
description: two languages, two seeds, base, a handful of problems
defaults:
  model: builtin:tiny-qwen3
  dtype: float32
  eval:
    benchmark: mgsm
    limit: 3
    decoding: {n_samples: 2, max_new_tokens: 16}
    batch_size: 8
matrix:
  language: [swa, eng]
  method: [base]
  seed: [0, 1]
"""


@pytest.fixture
def small_spec(workdir) -> Path:
    p = workdir / "small.yaml"
    p.write_text(SMALL_SPEC)
    return p


@pytest.fixture(scope="session")
def slurm():
    """A real single-node SLURM for this test session (munged, slurmctld, slurmd; tests/services.py)."""
    import shutil
    import tempfile

    from services import SlurmCluster

    root = Path(tempfile.mkdtemp(prefix="copsd-slurm-"))
    cluster = SlurmCluster(root).start()
    yield cluster
    cluster.stop()
    shutil.rmtree(root, ignore_errors=True)
