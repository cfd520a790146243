"""What a running job reports: typed events, in the order it produces them.

A job (`copsd.run.job.run_job`) only computes and yields these; one recorder in the sweep
process (`copsd.run.recorder.Recorder`) turns them into fenced results-DB writes, MLflow logs,
figures, progress and notes. In an isolated job the same events cross the pipe from the child
process, and nothing else does. Every event is a small picklable value.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Planned:
    """The checkpoints this run evaluates (those without stored results) and the samples that
    takes in all, the progress total."""

    steps: list[int]
    samples: int


@dataclass(frozen=True)
class Note:
    """A line for the user that does not fail the job (said once per sweep process)."""

    message: str


@dataclass(frozen=True)
class Provenance:
    """What the job is made with: versions, commit, device, prompt and data fingerprints; and the
    training data's counts (records kept, dropped and why)."""

    values: dict[str, object]
    data_counts: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainStep:
    """One optimizer step's metrics (loss, grad norm, lr, time, memory, the method's own)."""

    step: int
    metrics: dict[str, float]


@dataclass(frozen=True)
class EngineChosen:
    """The rollout engine evaluation uses here (what `auto` became)."""

    engine: str


@dataclass(frozen=True)
class Decoded:
    """Progress within an evaluation: this many more samples decoded."""

    samples: int


@dataclass(frozen=True)
class CheckpointResult:
    """One checkpoint evaluated: metrics at each decoding budget (the full budget last: its row
    marks the checkpoint complete) and one generation record per sample."""

    step: int
    by_budget: dict[int, dict[str, float]]
    max_new_tokens: int
    n_samples: int
    n_problems: int
    records: list[dict]

    @property
    def metrics(self) -> dict[str, float]:
        """The metrics at the full decoding budget."""
        return self.by_budget[self.max_new_tokens]


@dataclass(frozen=True)
class Failed:
    """The job failed in its child process: its one-line error (`lost`: another worker took the
    claim over). Only isolation sends it; in-process a job raises."""

    message: str
    lost: bool = False


@dataclass(frozen=True)
class Finished:
    """The child's last event: the job ran to its end (isolation only)."""


Event = Planned | Note | Provenance | TrainStep | EngineChosen | Decoded | CheckpointResult | Failed | Finished
