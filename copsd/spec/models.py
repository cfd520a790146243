"""The models of a sweep spec: the matrix and its defaults, how it is run, and `copsd tune`'s search.

Every field is copsd's own (the released code has no sweep spec), so each description ends [copsd].
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

OURS = "[copsd]"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunnerSettings(_Spec):
    """How a sweep is run; never part of a job's identity."""

    max_attempts: int = Field(3, ge=1, description=f"a FAILED job is retried until it has failed this often {OURS}")
    stale_after_s: float = Field(
        600.0, gt=0, description=f"a RUNNING job whose heartbeat is older is reclaimed (seconds) {OURS}"
    )
    heartbeat_s: float = Field(
        30.0, gt=0, description=f"how often a running job refreshes its heartbeat (seconds) {OURS}"
    )
    isolate: bool = Field(
        True,
        description="run each job in its own child process: a job killed by the kernel (out of memory) or "
        f"crashing in native code is FAILED with the cause, and the sweep goes on (CLI: --no-isolate) {OURS}",
    )

    @model_validator(mode="after")
    def _heartbeat_well_under_stale(self) -> RunnerSettings:
        # a live job must refresh its heartbeat several times before anyone may call it stale
        if self.heartbeat_s * 3 > self.stale_after_s:
            raise ValueError(
                f"runner.heartbeat_s ({self.heartbeat_s:g}) must be at most a third of runner.stale_after_s "
                f"({self.stale_after_s:g}), or live jobs are reclaimed and run twice"
            )
        return self


class MlflowSettings(_Spec):
    experiment: str = Field("copsd", description=f"the MLflow experiment the sweep's runs go to {OURS}")
    log_generations: bool = Field(
        True, description=f"log each evaluation's graded samples (a JSONL artifact per checkpoint) {OURS}"
    )


class ParamSpace(_Spec):
    """One searched job field: a float or int range (optionally log-scaled) or a list of choices."""

    type: Literal["float", "int", "categorical"] = Field(
        ..., description=f"float or int: a range (low, high); categorical: a list of choices {OURS}"
    )
    low: float | None = Field(None, description=f"the range's lower end (float and int) {OURS}")
    high: float | None = Field(None, description=f"the range's upper end, included (float and int) {OURS}")
    log: bool = Field(False, description=f"sample on a log scale (learning rates) {OURS}")
    step: float | None = Field(None, description=f"grid step of a float/int range {OURS}")
    choices: list[Any] | None = Field(None, description=f"the values of a categorical parameter {OURS}")

    @model_validator(mode="after")
    def _complete(self) -> ParamSpace:
        """Everything Optuna would refuse mid-study (with a traceback) is refused here, at load time."""
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical parameter needs 'choices' (a non-empty list)")
            given = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if given:
                raise ValueError(f"a categorical parameter takes 'choices' only, not {', '.join(given)}")
            return self
        if self.choices is not None:
            raise ValueError(
                f"'choices' is for 'type: categorical'; a {self.type} parameter takes low, high, step, log"
            )
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} parameter needs 'low' and 'high'")
        if not (math.isfinite(self.low) and math.isfinite(self.high)):
            raise ValueError(f"'low' and 'high' must be finite numbers, not {self.low:g} and {self.high:g}")
        if not self.low < self.high:
            raise ValueError(f"a {self.type} parameter needs 'low' < 'high' (got low {self.low:g}, high {self.high:g})")
        if self.log and self.low <= 0:
            raise ValueError(f"'log: true' needs 'low' > 0 (got {self.low:g})")
        if self.step is not None:
            if self.log:
                raise ValueError(
                    "'step' and 'log: true' cannot be combined (Optuna samples a log range without a grid)"
                )
            if not (math.isfinite(self.step) and self.step > 0):
                raise ValueError(f"'step' must be > 0, not {self.step:g}")
        if self.type == "int":
            bad = [f"{k} {v:g}" for k in ("low", "high", "step") if (v := getattr(self, k)) is not None and v != int(v)]
            if bad:
                raise ValueError(f"an int parameter needs whole numbers, not {', '.join(bad)}")
        if self.step is not None:
            n = (self.high - self.low) / self.step
            if abs(n - round(n)) > 1e-9 * max(1.0, abs(n)):
                raise ValueError(
                    f"'high' - 'low' ({self.high - self.low:g}) must be a multiple of 'step' ({self.step:g}), "
                    "or the top of the range is never sampled"
                )
        return self

    def example(self) -> Any:
        """A value inside the space (used to validate the field path before any trial runs)."""
        if self.type == "categorical":
            return self.choices[0]  # type: ignore[index]
        return int(self.low) if self.type == "int" else self.low  # type: ignore[arg-type]


class Objective(_Spec):
    metric: str = Field(
        "accuracy", description=f"a results column: accuracy, pass_at_k, maj_at_k, format_rate, ... {OURS}"
    )
    direction: Literal["maximize", "minimize"] = Field("maximize", description=f"which way the metric improves {OURS}")
    split: str | None = Field(
        None, description=f"evaluate the trials on this split (e.g. dev); default: the spec's {OURS}"
    )
    languages: list[str] | None = Field(None, description=f"average over these languages; default: every one {OURS}")
    step: Literal["final", "best"] = Field("final", description=f"the final checkpoint, or each job's best {OURS}")


class SearchSettings(_Spec):
    """`copsd tune`: an Optuna study over job fields; each trial runs the spec's jobs with the
    trial's values (ordinary hashed jobs in the results DB), the study lives in the same DB."""

    params: dict[str, ParamSpace] = Field(..., min_length=1, description=f"dotted job field -> its space {OURS}")
    objective: Objective = Field(Objective(), description=f"what a trial's jobs are scored by {OURS}")
    n_trials: int = Field(
        20, ge=1, description=f"trials in the study that ended (complete, pruned or failed), over all workers {OURS}"
    )
    max_failures: int = Field(
        3,
        ge=1,
        description="a `copsd tune` process stops (exit 1) after this many failed trials in a row, "
        f"with the first one's reason {OURS}",
    )
    sampler: Literal["tpe", "random"] = Field("tpe", description=f"Optuna's sampler: tpe | random {OURS}")
    seed: int = Field(0, ge=0, lt=2**32, description=f"the sampler's seed {OURS}")
    pruner: Literal["median", "successive_halving", "threshold", "none"] = Field(
        "median",
        description="median: stop a trial whose checkpoint evaluations trail the others'; threshold: stop "
        f"one whose value is worse than `threshold` (e.g. a collapsed run) {OURS}",
    )
    threshold: float | None = Field(None, description=f"the threshold pruner's bound (below it when maximizing) {OURS}")
    n_startup_trials: int = Field(2, ge=0, description=f"trials that are never pruned (the pruner's baseline) {OURS}")

    @model_validator(mode="after")
    def _threshold_given(self) -> SearchSettings:
        if (self.pruner == "threshold") != (self.threshold is not None):
            raise ValueError("'threshold' is needed with 'pruner: threshold', and only then")
        return self


class SweepSpec(_Spec):
    name: str = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9_.\-]+$",
        description=f"the sweep's name (letters, digits, _ . -): its key in the results DB and MLflow {OURS}",
    )
    description: str = Field("", description=f"free text shown with the sweep {OURS}")
    defaults: dict[str, Any] = Field(
        default_factory=dict, description=f"job config fields (nested) shared by every job {OURS}"
    )
    matrix: dict[str, list[Any]] = Field(
        default_factory=dict, description=f"key (a dotted job field) -> values; every combination is a job {OURS}"
    )
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description=f"method -> job config fields for that method's jobs only {OURS}"
    )
    exclude: list[dict[str, Any]] = Field(
        default_factory=list, description=f"matrix points to skip: each matches on the keys it names {OURS}"
    )
    runner: RunnerSettings = Field(RunnerSettings(), description=f"how the sweep is run {OURS}")
    mlflow: MlflowSettings = Field(MlflowSettings(), description=f"where the sweep is tracked {OURS}")
    search: SearchSettings | None = Field(
        None, description=f"the `copsd tune` study; only `copsd tune` reads it {OURS}"
    )
