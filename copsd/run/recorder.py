"""The one place a job's events become records: fenced results-DB rows, MLflow metrics, tags and
artifacts, the job's figures, progress and notes. It lives in the sweep process; jobs (in-process
or in a child) only produce events (`copsd.run.events`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from copsd.config import JobConfig
from copsd.results.db import ResultsDB
from copsd.results.tracking import NullRunLog, RunLog
from copsd.run import events


class NotesSaid:
    """Notes said by this sweep process (a note is said once per sweep, not once per job)."""

    def __init__(self) -> None:
        self._said: set[str] = set()

    def say(self, message: str) -> None:
        if message not in self._said:
            self._said.add(message)
            print(message, file=sys.stderr, flush=True)


@dataclass
class Display:
    """What the sweep shows while a job runs: its progress total and advances (a progress bar)."""

    total: Callable[[int], None] = lambda _n: None
    advance: Callable[[int], None] = lambda _n: None


@dataclass
class Recorder:
    """Records one job's events. `owner` fences every DB write (nothing is written once another
    worker took the claim over: `LostOwnership`). `on_checkpoint(step, metrics)` hooks run after a
    checkpoint's rows are stored (tuning reports to its pruner there, and may raise to stop the job)."""

    job: JobConfig
    db: ResultsDB
    owner: str | None = None
    run: RunLog = field(default_factory=NullRunLog)
    log_generations: bool = True
    figures_dir: Path | None = None  # where the job's figures are drawn (None: none drawn)
    display: Display = field(default_factory=Display)
    notes: NotesSaid = field(default_factory=NotesSaid)
    on_checkpoint: list[Callable[[int, dict[str, float]], None]] = field(default_factory=list)
    evaluated: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics recorded now

    def record(self, event: events.Event) -> None:
        job, run = self.job, self.run
        match event:
            case events.Planned(samples=samples):
                self.display.total(samples)
            case events.Decoded(samples=n):
                self.display.advance(n)
            case events.Note(message=message):
                self.notes.say(message)
            case events.Provenance(values=values, data_counts=counts):
                self.db.set_provenance(job.job_id, values)
                for key, value in values.items():
                    run.set_tag(f"copsd.provenance.{key}", str(value))
                if counts:
                    run.log_metrics({f"data/{k}": float(v) for k, v in counts.items()}, step=0)
            case events.TrainStep(step=step, metrics=metrics):
                run.log_metrics({f"train/{k}": v for k, v in metrics.items()}, step)
            case events.EngineChosen(engine=engine):
                run.set_tag("copsd.rollout_engine", engine)  # what `auto` became here
            case events.CheckpointResult():
                self._checkpoint(event)
            case _:
                raise TypeError(f"not an event a recorder records: {event!r}")

    def _checkpoint(self, r: events.CheckpointResult) -> None:
        job, e = self.job, self.job.eval
        # smaller budgets first: the full budget's row is the one that marks a checkpoint complete
        for budget in sorted(r.by_budget, key=lambda b: (b == r.max_new_tokens, b)):
            self.db.add_result(
                job.job_id,
                benchmark=e.benchmark,
                language=job.language,
                split=e.split,
                step=r.step,
                max_new_tokens=budget,
                n_samples=r.n_samples,
                n_problems=r.n_problems,
                metrics=r.by_budget[budget],
                owner=self.owner,
            )
        for budget, metrics in r.by_budget.items():
            prefix = "eval" if budget == r.max_new_tokens else f"eval_budget{budget}"
            self.run.log_metrics({f"{prefix}/{job.language}/{k}": v for k, v in metrics.items()}, step=r.step)
        if self.log_generations:
            name = f"step{r.step:05d}_{e.benchmark}_{job.language}_{e.split}.jsonl"
            self.run.log_jsonl(r.records, name)
        self.evaluated[r.step] = r.metrics
        for hook in self.on_checkpoint:
            hook(r.step, r.metrics)

    def finish(self) -> None:
        """After the job's last event: its figures, from its own results, as MLflow artifacts
        (`figures/`). A figure never fails a job: the numbers are stored."""
        if not (self.run.run_id and self.evaluated and self.figures_dir):
            return
        from copsd.reports.figures import job_figures

        try:
            frame = self.db.results_frame(job_id=self.job.job_id)
            paths = job_figures(frame, self.job.job_id, self.figures_dir)
            self.run.log_files([q for p in paths for q in (p, p.with_suffix(".pdf"))], "figures")
        except Exception as exc:  # noqa: BLE001 - the numbers are stored; a plot is a convenience
            logging.getLogger("copsd").warning(
                "figures of job %s skipped: %s", self.job.job_id, str(exc).splitlines()[0]
            )
