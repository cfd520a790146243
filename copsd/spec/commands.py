"""What the CLI asks for: a spec by path or embedded name, the jobs `--only` keeps, `copsd eval`'s
one job, and a tuning trial's spec."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from copsd.config import JobConfig
from copsd.errors import SpecError
from copsd.spec.matrix import _MISSING, _get_path, filter_jobs, load_jobs
from copsd.spec.messages import format_validation_error
from copsd.spec.models import SweepSpec

EMBEDDED_SPECS = ("demo",)


def resolve_spec_path(spec: str) -> Path:
    """A spec file path, or the name of an embedded spec (`demo`)."""
    p = Path(spec)
    if p.is_file():
        return p
    if spec in EMBEDDED_SPECS:
        return Path(str(resources.files("copsd").joinpath("resources", "sweeps", f"{spec}.yaml")))
    raise SpecError(
        f"{spec}: spec file not found (give a path like sweeps/main.yaml, or an embedded spec: "
        f"{', '.join(EMBEDDED_SPECS)})"
    )


@dataclass(frozen=True)
class Selection:
    """A spec and the jobs a command works on: all of them, and those `--only` kept."""

    path: Path
    spec: SweepSpec
    all_jobs: list[JobConfig]
    jobs: list[JobConfig]


def select(spec: str, only: list[str] | None = None) -> Selection:
    path = resolve_spec_path(spec)
    s, jobs = load_jobs(path)
    chosen = filter_jobs(jobs, only or [])
    if only and not chosen:
        keys = [item.split("=", 1)[0].strip() for item in only]
        dumps = [j.model_dump(mode="json") for j in jobs]
        present = {
            k: sorted({str(v) for d in dumps if (v := _get_path(d, k)) is not _MISSING}) for k in keys if k != "id"
        }
        hint = "; ".join(f"{k}: {', '.join(v[:12])}" for k, v in present.items())
        raise SpecError(
            f"--only {' '.join(only)}: matches none of the {len(jobs)} jobs of {path}; values present: {hint}"
        )
    return Selection(path, s, jobs, chosen)


def eval_job(
    *,
    model: str,
    language: str,
    benchmark: str,
    split: str,
    limit: int | None,
    samples: int,
    temperature: float,
    top_p: float,
    top_k: int,
    max_new_tokens: int,
    batch_size: int,
    thinking: bool,
    seed: int,
    dtype: str,
    data_dir: str | None,
    engine: str,
) -> JobConfig:
    """The `base` job of `copsd eval` (one model, one language, no spec); errors name the option."""
    raw = {
        "method": "base",
        "model": model,
        "language": language,
        "seed": seed,
        "dtype": dtype,
        "eval": {
            "benchmark": benchmark,
            "split": split,
            "limit": limit,
            "thinking": thinking,
            "batch_size": batch_size,
            "data_dir": data_dir,
            "rollout_engine": engine,
            "decoding": {
                "n_samples": samples,
                "temperature": temperature,
                "top_p": top_p,
                "top_k": top_k,
                "max_new_tokens": max_new_tokens,
            },
        },
    }
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, "copsd eval", JobConfig)) from None


def with_values(spec: SweepSpec, values: dict[str, Any]) -> SweepSpec:
    """The spec with each given field fixed to one value (a one-point matrix axis): a tuning
    trial's jobs; the objective's split, if any, replaces the evaluation split."""
    matrix = {**spec.matrix, **{k: [v] for k, v in values.items()}}
    if spec.search is not None and spec.search.objective.split:
        matrix["eval.split"] = [spec.search.objective.split]
    return spec.model_copy(update={"matrix": matrix})
