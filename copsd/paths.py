"""Every location a sweep writes to, derived from one thing: the results DB URL.

For a SQLite results DB the rest lives beside it (its folder is the *workspace*); for a server
DB (PostgreSQL, ...) the workspace is the working directory:

    experiments.db      the results DB              --db / $COPSD_DB
    runs/<job id>/      adapter checkpoints         $COPSD_RUNS overrides
    mlflow.db           the MLflow store            $MLFLOW_TRACKING_URI overrides
    mlartifacts/        MLflow artifacts (beside a SQLite MLflow store)
    reports/            tables and figures          --out overrides per report
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

DEFAULT_DB_URL = "sqlite:///experiments.db"


def db_url(url: str | None = None) -> str:
    """--db, else $COPSD_DB, else sqlite:///experiments.db in the working directory."""
    url = url or os.environ.get("COPSD_DB") or DEFAULT_DB_URL
    if "://" not in url:  # a bare path
        url = f"sqlite:///{Path(url).expanduser()}"
    return url


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (None for in-memory or server databases)."""
    if url.startswith("sqlite:///"):
        rest = url[len("sqlite:///") :]
        return Path(rest) if rest and rest != ":memory:" else None
    return None


@dataclass(frozen=True)
class Workspace:
    """The places one results DB's sweeps write to (see the module docstring)."""

    db_url: str

    @classmethod
    def of(cls, url: str | None = None) -> Workspace:
        return cls(db_url(url))

    @property
    def root(self) -> Path:
        p = sqlite_path(self.db_url)
        return p.resolve().parent if p is not None else Path.cwd()

    @property
    def runs_dir(self) -> Path:
        return Path(os.environ["COPSD_RUNS"]) if os.environ.get("COPSD_RUNS") else self.root / "runs"

    @property
    def tracking_uri(self) -> str:
        return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{self.root / 'mlflow.db'}"

    @property
    def reports_dir(self) -> Path:
        return self.root / "reports"


def artifact_root(tracking_uri: str) -> str | None:
    """MLflow artifacts beside a SQLite MLflow store; a server or other store decides its own."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).resolve().parent / "mlartifacts").as_uri()
    return None
