"""Sweep specs: YAML -> validated `SweepSpec` -> fully resolved `JobConfig`s.

Resolution order for each point of the matrix (later wins):
  built-in defaults (PAPER.md) < spec `defaults` < spec `methods.<method>` < the matrix point.
Matrix keys are `language`, `model`, `method`, `seed` or any dotted field path of a job config
(`train.lr`, `eval.decoding.max_new_tokens`). A key that does not apply to a method (for example
`train.lr` for `base`) is dropped for that method, and identical jobs are merged.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from copsd.config import METHODS, TRAINED_METHODS, JobConfig
from copsd.errors import SpecError
from copsd.yaml_input import load_yaml, read_text_capped


class RunnerSettings(BaseModel):
    """How a sweep is run; never part of a job's identity."""

    model_config = ConfigDict(extra="forbid")
    max_attempts: int = Field(3, ge=1, description="a FAILED job is retried until it has failed this often")
    stale_after_s: float = Field(600.0, gt=0, description="a RUNNING job whose heartbeat is older is reclaimed")
    heartbeat_s: float = Field(30.0, gt=0)
    isolate: bool = Field(
        True,
        description="run each job in its own child process: a job killed by the kernel (out of memory) or "
        "crashing in native code is FAILED with the cause, and the sweep goes on (CLI: --no-isolate)",
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


class MlflowSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment: str = "copsd"
    log_generations: bool = True


class ParamSpace(BaseModel):
    """One searched job field: a float or int range (optionally log-scaled) or a list of choices."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = Field(False, description="sample on a log scale (learning rates)")
    step: float | None = Field(None, description="grid step of a float/int range")
    choices: list[Any] | None = None

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


class Objective(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str = Field("accuracy", description="a results column: accuracy, pass_at_k, maj_at_k, format_rate, ...")
    direction: Literal["maximize", "minimize"] = "maximize"
    split: str | None = Field(None, description="evaluate the trials on this split (e.g. dev); default: the spec's")
    languages: list[str] | None = Field(None, description="average over these languages; default: every one")
    step: Literal["final", "best"] = Field("final", description="the final checkpoint, or each job's best")


class SearchSettings(BaseModel):
    """`copsd tune`: an Optuna study over job fields; each trial runs the spec's jobs with the
    trial's values (ordinary hashed jobs in the results DB), the study lives in the same DB."""

    model_config = ConfigDict(extra="forbid")
    params: dict[str, ParamSpace] = Field(..., min_length=1, description="dotted job field -> its space")
    objective: Objective = Objective()
    n_trials: int = Field(
        20, ge=1, description="trials in the study that ended (complete, pruned or failed), over all workers"
    )
    max_failures: int = Field(
        3,
        ge=1,
        description="a `copsd tune` process stops (exit 1) after this many failed trials in a row, "
        "with the first one's reason",
    )
    sampler: Literal["tpe", "random"] = "tpe"
    seed: int = Field(0, ge=0, lt=2**32, description="the sampler's seed")
    pruner: Literal["median", "successive_halving", "threshold", "none"] = Field(
        "median",
        description="median: stop a trial whose checkpoint evaluations trail the others'; threshold: stop "
        "one whose value is worse than `threshold` (e.g. a collapsed run)",
    )
    threshold: float | None = Field(None, description="the threshold pruner's bound (below it when maximizing)")
    n_startup_trials: int = Field(2, ge=0, description="trials that are never pruned (the pruner's baseline)")

    @model_validator(mode="after")
    def _threshold_given(self) -> SearchSettings:
        if (self.pruner == "threshold") != (self.threshold is not None):
            raise ValueError("'threshold' is needed with 'pruner: threshold', and only then")
        return self


class SweepSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(..., min_length=1, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    defaults: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    methods: dict[str, dict[str, Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    runner: RunnerSettings = RunnerSettings()
    mlflow: MlflowSettings = MlflowSettings()
    search: SearchSettings | None = None  # only `copsd tune` reads it


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = d
    for k in keys[:-1]:
        nxt = node.get(k)
        if not isinstance(nxt, dict):
            nxt = {}
            node[k] = nxt
        node = nxt
    node[keys[-1]] = value


def _get_path(d: dict, dotted: str) -> Any:
    node: Any = d
    for k in dotted.split("."):
        if not isinstance(node, dict) or k not in node:
            return _MISSING
        node = node[k]
    return node


_MISSING = object()


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def _loc_str(loc: tuple) -> str:
    parts: list[str] = []
    for p in loc:
        if isinstance(p, int):
            parts.append(f"[{p}]")
        elif p in ("copsd", "grpo", "sft") and parts and parts[-1] == "train":
            continue  # pydantic's discriminator tag, not a field the user wrote
        else:
            parts.append(("." if parts else "") + str(p))
    return "".join(parts)


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    """Field names valid at `loc` (for 'unknown field' messages)."""
    from copsd.config import TRAIN_CLASSES

    cls: Any = model
    for p in loc[:-1]:
        if isinstance(p, int) or cls is None:
            continue
        if p in TRAIN_CLASSES:
            cls = TRAIN_CLASSES[p]
            continue
        fld = getattr(cls, "model_fields", {}).get(p)
        if fld is None:
            return []
        ann = fld.annotation
        cls = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)), None
        )
    return sorted(getattr(cls, "model_fields", {}) or [])


def format_validation_error(err: ValidationError, where: str, model: type[BaseModel], prefix: str = "") -> str:
    """First error of a pydantic ValidationError as one line: file, field path, what is allowed."""
    e = err.errors()[0]
    loc = tuple(e["loc"])
    path = prefix + _loc_str(loc)
    if e["type"] == "extra_forbidden":
        allowed = _allowed_fields(model, loc)
        field = str(loc[-1])
        hint = difflib.get_close_matches(field, allowed, n=1)
        did = f" (did you mean '{hint[0]}'?)" if hint else ""
        return f"{where}: unknown field '{path}'{did}; allowed here: {', '.join(allowed)}"
    msg = e["msg"].removeprefix("Value error, ")
    if not loc:  # a check across fields (e.g. language x benchmark): the message names them
        return f"{where}: {msg}"
    if e["type"] == "missing":
        return f"{where}: field '{path}' is required"
    return f"{where}: field '{path}': {msg}"


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"{path}: spec file not found")
    try:
        raw = load_yaml(read_text_capped(path, str(path)), str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{path}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); save the spec as UTF-8"
        ) from None
    return parse_spec(raw, where=str(path))


def parse_spec(raw: Any, where: str = "<spec>") -> SweepSpec:
    if not isinstance(raw, dict):
        raise SpecError(f"{where}: a spec must be a mapping with at least 'name' and 'matrix'")
    try:
        spec = SweepSpec.model_validate(raw)
    except ValidationError as err:
        raise SpecError(format_validation_error(err, where, SweepSpec)) from None
    for m in spec.methods:
        if m not in METHODS:
            raise SpecError(f"{where}: field 'methods.{m}': unknown method; allowed: {', '.join(METHODS)}")
    for key, values in spec.matrix.items():
        if not values:
            raise SpecError(f"{where}: field 'matrix.{key}' is an empty list; give at least one value")
        if key == "method":
            for i, v in enumerate(values):
                if v not in METHODS:
                    raise SpecError(
                        f"{where}: field 'matrix.method[{i}]': unknown method '{v}'; allowed: {', '.join(METHODS)}"
                    )
        if key == "language":
            from copsd.data.languages import canonical_code

            for i, v in enumerate(values):
                try:
                    canonical_code(v)
                except Exception as exc:
                    raise SpecError(f"{where}: field 'matrix.language[{i}]': {exc}") from None
    return spec


def _point_jobs(spec: SweepSpec, point: dict[str, Any], where: str) -> JobConfig | None:
    method = point.get("method", spec.defaults.get("method"))
    if method is None:
        raise SpecError(f"{where}: no method given; put 'method' in 'matrix' or 'defaults'")
    cfg = _deep_merge(spec.defaults, spec.methods.get(method, {}))
    for key, value in point.items():
        if key.startswith("train.") and method not in TRAINED_METHODS:
            continue  # a training hyperparameter does not apply to the untrained model
        _set_path(cfg, key, value)
    if method not in TRAINED_METHODS:
        cfg.pop("train", None)
    cfg["method"] = method
    try:
        return JobConfig.model_validate(cfg)
    except ValidationError as err:
        e_loc = _loc_str(tuple(err.errors()[0]["loc"]))
        source = "defaults."
        if not e_loc:
            source = ""
        elif e_loc in point or any(e_loc.startswith(k + ".") or k.startswith(e_loc) for k in point):
            source = "matrix."
        elif _get_path(spec.methods.get(method, {}), e_loc) is not _MISSING:
            source = f"methods.{method}."
        who = ", ".join(f"{k}={v}" for k, v in point.items())
        raise SpecError(format_validation_error(err, f"{where} (job {who})", JobConfig, prefix=source)) from None


def expand(spec: SweepSpec, where: str = "<spec>") -> list[JobConfig]:
    """All jobs of a spec, deduplicated by job id, in matrix order."""
    keys = list(spec.matrix)
    jobs: dict[str, JobConfig] = {}
    for values in itertools.product(*(spec.matrix[k] for k in keys)):
        point = dict(zip(keys, values))
        if any(all(point.get(k) == v for k, v in ex.items()) for ex in spec.exclude):
            continue
        job = _point_jobs(spec, point, where)
        jobs.setdefault(job.job_id, job)
    return list(jobs.values())


def load_jobs(path: str | Path) -> tuple[SweepSpec, list[JobConfig]]:
    spec = load_spec(path)
    return spec, expand(spec, where=str(path))


def filter_jobs(jobs: list[JobConfig], only: list[str]) -> list[JobConfig]:
    """`--only key=value` (dotted paths allowed, comma = any of); all filters must match."""
    if not only:
        return jobs
    conds: list[tuple[str, set[str]]] = []
    for item in only:
        if "=" not in item:
            raise SpecError(f"--only '{item}': expected key=value, e.g. --only language=swa --only method=base,copsd")
        k, v = item.split("=", 1)
        conds.append((k.strip(), {s.strip() for s in v.split(",")}))

    def matches(got: Any, vals: set[str]) -> bool:
        if str(got) in vals:
            return True
        for v in vals:
            try:
                if yaml.safe_load(v) == got:
                    return True
            except yaml.YAMLError:
                pass
        return False

    from copsd.data.languages import canonical_code

    conds = [(k, {canonical_code(v) for v in vals}) if k == "language" else (k, vals) for k, vals in conds]
    dumps = []
    for job in jobs:
        d = job.model_dump(mode="json")
        d["id"] = job.job_id
        dumps.append(d)
    for k, _ in conds:
        if dumps and all(_get_path(d, k) is _MISSING for d in dumps):
            raise SpecError(
                f"--only '{k}': no such field in these jobs (e.g. id, method, model, language, seed, train.lr)"
            )
    return [
        job
        for job, d in zip(jobs, dumps)
        if all((got := _get_path(d, k)) is not _MISSING and matches(got, vals) for k, vals in conds)
    ]


# ---- what the CLI asks for -------------------------------------------------------------------------
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
