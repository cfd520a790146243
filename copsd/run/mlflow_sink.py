"""What a sweep and its jobs log to MLflow, and how their runs end. The recorder
(`copsd.run.recorder`) hands a job's events to `JobTracking`; the runners open and close runs
through these classes and never write to MLflow themselves. With tracking off the runs are
`NullRunLog`s and every call does nothing."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from copsd.config import JobConfig
from copsd.results.tracking import NullRunLog, RunLog, Tracker
from copsd.run import events


@dataclass
class JobTracking:
    """One job's MLflow run (reused across retries, so its curves continue in one place)."""

    job: JobConfig
    run: RunLog = field(default_factory=NullRunLog)

    @classmethod
    def open(
        cls, tracker: Tracker, job: JobConfig, parent_run_id: str | None, existing: str | None, sweep: str | None
    ) -> JobTracking:
        return cls(job, tracker.job_run(job, parent_run_id, existing=existing, sweep=sweep))

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def provenance(self, values: dict[str, object], data_counts: dict[str, int]) -> None:
        for key, value in values.items():
            self.run.set_tag(f"copsd.provenance.{key}", str(value))
        if data_counts:
            self.run.log_metrics({f"data/{k}": float(v) for k, v in data_counts.items()}, step=0)

    def train_step(self, step: int, metrics: dict[str, float]) -> None:
        self.run.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step)

    def engine(self, name: str) -> None:
        self.run.set_tag("copsd.rollout_engine", name)  # what `auto` became here

    def checkpoint(self, r: events.CheckpointResult, generations: bool) -> None:
        """Metrics per language at the full budget (`eval/`) and each smaller one
        (`eval_budget<b>/`), at the checkpoint's step; with `generations`, one JSONL record per sample."""
        job, e = self.job, self.job.eval
        for budget, metrics in r.by_budget.items():
            prefix = "eval" if budget == r.max_new_tokens else f"eval_budget{budget}"
            self.run.log_metrics({f"{prefix}/{job.language}/{k}": v for k, v in metrics.items()}, step=r.step)
        if generations:
            self.run.log_jsonl(r.records, f"step{r.step:05d}_{e.benchmark}_{job.language}_{e.split}.jsonl")

    def figures(self, paths: list[Path]) -> None:
        self.run.log_files([q for p in paths for q in (p, p.with_suffix(".pdf"))], "figures")

    def failed(self, error: str) -> None:
        self.run.set_tag("copsd.error", error)
        self.run.end("FAILED")

    def killed(self) -> None:
        self.run.end("KILLED")

    def finished(self) -> None:
        self.run.end("FINISHED")


@dataclass
class SweepTracking:
    """The sweep's parent run, which every job's run is nested under."""

    tracker: Tracker
    run: RunLog = field(default_factory=NullRunLog)

    def open(self, name: str, existing: str | None, description: str = "") -> str:
        self.run = self.tracker.sweep_run(name, existing, description)
        return self.run.run_id

    def yield_to(self, winner: str) -> None:
        """Another process started at the same moment recorded its run first: use that one."""
        self.run = self.tracker.adopt(self.run, winner)

    @property
    def run_id(self) -> str:
        return self.run.run_id

    def close(self, status: str, failed_jobs: int | None = None) -> None:
        if failed_jobs is not None:
            self.run.set_tag("copsd.failed_jobs", str(failed_jobs))
        self.run.end(status)


def tag_run(tracker: Tracker, run_id: str | None, key: str, value: str) -> None:
    """A tag on a run logged earlier (tuning marks a job's run with its trial); never fails."""
    client = getattr(tracker, "client", None)
    if client is not None and run_id:
        try:
            client.set_tag(run_id, key, value)
        except Exception:  # noqa: BLE001 - a tag never fails a trial
            pass
