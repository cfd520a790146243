"""How a sweep runs: options that are never part of a job's identity."""

from __future__ import annotations

from dataclasses import dataclass

from copsd.paths import Workspace
from copsd.results.tracking import NullTracker, Tracker
from copsd.spec import SweepSpec


@dataclass
class RunOptions:
    """How a sweep runs (never part of a job's identity). `from_spec` takes the spec's `runner`
    and `mlflow` blocks; the CLI's flags override them."""

    db_url: str
    device: str | None = None
    workers: int = 1
    max_attempts: int = 3
    stale_after_s: float = 600.0
    heartbeat_s: float = 30.0
    retry_failed: bool = True
    mlflow: bool = True
    experiment: str = "copsd"
    log_generations: bool = True
    progress: bool = True
    isolate: bool = True  # each job in its own child process (copsd.run.isolate)
    preflight: bool = True  # refuse a job whose estimated peak memory cannot fit (copsd.training.memory)

    @classmethod
    def from_spec(cls, spec: SweepSpec, db_url: str, **overrides) -> RunOptions:
        r, m = spec.runner, spec.mlflow
        base = dict(
            max_attempts=r.max_attempts,
            stale_after_s=r.stale_after_s,
            heartbeat_s=r.heartbeat_s,
            experiment=m.experiment,
            log_generations=m.log_generations,
            isolate=r.isolate,
        )
        return cls(db_url=db_url, **{**base, **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def workspace(self) -> Workspace:
        return Workspace(self.db_url)


def make_tracker(opts: RunOptions) -> Tracker:
    return Tracker(opts.workspace.tracking_uri, opts.experiment) if opts.mlflow else NullTracker()
