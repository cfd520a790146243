"""The one place a job's events become records: fenced results-DB rows (`db_sink`), MLflow
metrics, tags and artifacts (`mlflow_sink`), the job's figures, progress and notes. It lives in
the sweep process; jobs (in-process or in a child) only produce events (`copsd.run.events`).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from copsd.config import JobConfig
from copsd.run import events
from copsd.run.db_sink import JobRows
from copsd.run.mlflow_sink import JobTracking


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
    """Records one job's events: its DB rows through `JobRows` (fenced by the claim's owner), its
    MLflow run through `JobTracking`, progress through `display`, notes once per sweep process.
    `on_checkpoint(step, metrics)` hooks run after a checkpoint's rows are stored (tuning reports
    to its pruner there, and may raise to stop the job)."""

    rows: JobRows
    tracking: JobTracking
    log_generations: bool = True
    figures_dir: Path | None = None  # where the job's figures are drawn (None: none drawn)
    display: Display = field(default_factory=Display)
    notes: NotesSaid = field(default_factory=NotesSaid)
    on_checkpoint: list[Callable[[int, dict[str, float]], None]] = field(default_factory=list)
    evaluated: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> metrics recorded now

    @property
    def job(self) -> JobConfig:
        return self.rows.job

    def record(self, event: events.Event) -> None:
        tracking = self.tracking
        match event:
            case events.Planned(samples=samples):
                self.display.total(samples)
            case events.Decoded(samples=n):
                self.display.advance(n)
            case events.Note(message=message):
                self.notes.say(message)
            case events.Provenance(values=values, data_counts=counts):
                self.rows.provenance(values)
                tracking.provenance(values, counts)
            case events.TrainStep(step=step, metrics=metrics):
                tracking.train_step(step, metrics)
            case events.EngineChosen(engine=engine):
                tracking.engine(engine)
            case events.CheckpointResult():
                self.rows.checkpoint(event)
                tracking.checkpoint(event, self.log_generations)
                self.evaluated[event.step] = event.metrics
                for hook in self.on_checkpoint:
                    hook(event.step, event.metrics)
            case _:
                raise TypeError(f"not an event a recorder records: {event!r}")

    def finish(self) -> None:
        """After the job's last event: its figures, from its own results, as MLflow artifacts
        (`figures/`). A figure never fails a job: the numbers are stored."""
        if not (self.tracking.run_id and self.evaluated and self.figures_dir):
            return
        from copsd.reports.figures import job_figures

        try:
            frame = self.rows.db.results_frame(job_id=self.job.job_id)
            self.tracking.figures(job_figures(frame, self.job.job_id, self.figures_dir))
        except Exception as exc:  # noqa: BLE001 - the numbers are stored; a plot is a convenience
            logging.getLogger("copsd").warning(
                "figures of job %s skipped: %s", self.job.job_id, str(exc).splitlines()[0]
            )
