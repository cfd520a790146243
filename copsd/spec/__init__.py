"""Sweep specs: YAML -> validated `SweepSpec` -> fully resolved `JobConfig`s.

Resolution order for each point of the matrix (later wins):
  built-in defaults (PAPER.md) < spec `defaults` < spec `methods.<method>` < the matrix point.
Matrix keys are `language`, `model`, `method`, `seed` or any dotted field path of a job config
(`train.lr`, `eval.decoding.max_new_tokens`). A key that does not apply to a method (for example
`train.lr` for `base`) is dropped for that method, and identical jobs are merged.

`models.py`: the spec's pydantic models; `matrix.py`: loading a spec and expanding its matrix into
jobs; `messages.py`: a validation error as one line; `commands.py`: what the CLI asks for.
"""

from copsd.spec.commands import EMBEDDED_SPECS, Selection, eval_job, resolve_spec_path, select, with_values
from copsd.spec.matrix import expand, filter_jobs, load_jobs, load_spec, parse_spec
from copsd.spec.messages import format_validation_error
from copsd.spec.models import MlflowSettings, Objective, ParamSpace, RunnerSettings, SearchSettings, SweepSpec

__all__ = [
    "EMBEDDED_SPECS",
    "MlflowSettings",
    "Objective",
    "ParamSpace",
    "RunnerSettings",
    "SearchSettings",
    "Selection",
    "SweepSpec",
    "eval_job",
    "expand",
    "filter_jobs",
    "format_validation_error",
    "load_jobs",
    "load_spec",
    "parse_spec",
    "resolve_spec_path",
    "select",
    "with_values",
]
