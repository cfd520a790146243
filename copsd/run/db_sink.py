"""A job's writes to the results DB (its provenance and its result rows), each fenced by the
claim's owner token: once another worker took the claim over, a write raises `LostOwnership` and
nothing is written. The recorder (`copsd.run.recorder`) hands it the job's events."""

from __future__ import annotations

from dataclasses import dataclass

from copsd.config import JobConfig
from copsd.results.db import ResultsDB
from copsd.run import events


@dataclass
class JobRows:
    job: JobConfig
    db: ResultsDB
    owner: str | None = None  # None: unfenced (tools and tests)

    def provenance(self, values: dict[str, object]) -> None:
        self.db.set_provenance(self.job.job_id, values)

    def checkpoint(self, r: events.CheckpointResult) -> None:
        """One row per decoding budget, the smaller budgets first: the full budget's row is the
        one that marks the checkpoint complete, so a crash in between leaves it pending."""
        job, e = self.job, self.job.eval
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
