"""Loading a spec and expanding its matrix into resolved, deduplicated jobs."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from copsd.config import METHODS, TRAINED_METHODS, JobConfig
from copsd.errors import SpecError
from copsd.spec.messages import _loc_str, format_validation_error
from copsd.spec.models import SweepSpec
from copsd.yaml_input import load_yaml, read_text_capped


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


def _point_job(spec: SweepSpec, point: dict[str, Any], where: str) -> JobConfig:
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
        job = _point_job(spec, point, where)
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
