"""The option tables of docs/method.md, generated from the models' JSON schema.

    python scripts/option_table.py           # rewrite the tables between the markers
    python scripts/option_table.py --check   # exit 1 (one line) if docs/method.md is not current

One row per leaf field, named by its dotted path (`train.lr`, `eval.decoding.n_samples`): its type
and bounds, its default (per method where the methods differ), whether it is part of the job id
(`copsd.config.UNHASHED_PATHS` is the only place that says which are not), and its description,
which ends with where the default comes from. tests/test_option_table.py runs the check.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
CHECKOUT = str(ROOT)  # put on sys.path when copsd is not installed
DOC = ROOT / "docs" / "method.md"
BEGIN, END = "<!-- options:begin -->", "<!-- options:end -->"
COMMAND = "python scripts/option_table.py"

_TYPES = {"integer": "int", "number": "float", "boolean": "bool", "string": "str", "null": "null"}
_BOUNDS = (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<"))


@dataclass
class Row:
    path: str
    type: str
    defaults: dict[str | None, str] = field(default_factory=dict)  # variant (method) or None -> default
    descriptions: dict[str | None, str] = field(default_factory=dict)


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _type(p: dict) -> str:
    """A field's type as written in a spec: `int ≥ 1`, `float or null`, `"a" | "b"`, `list[int]`."""
    if "anyOf" in p:
        return " or ".join(_type(o) for o in p["anyOf"])
    if "$ref" in p:
        return _ref_name(p["$ref"])
    if "enum" in p:
        return " | ".join(json.dumps(v) for v in p["enum"])
    if "const" in p:
        return json.dumps(p["const"])
    t = p.get("type")
    if t == "array":
        items = _type(p["items"]) if p.get("items") else ""
        return f"list[{items}]" if items else "list"
    if t == "object":
        values = p.get("additionalProperties")
        return f"dict[str, {_type(values)}]" if isinstance(values, dict) and values else "dict"
    name = _TYPES.get(t, "any") if isinstance(t, str) else "any"
    bounds = [f"{sign} {p[k]:g}" if isinstance(p[k], float) else f"{sign} {p[k]}" for k, sign in _BOUNDS if k in p]
    return " ".join([name, ", ".join(bounds)]) if bounds else name


def _variants(p: dict) -> list[tuple[str | None, str]]:
    """The models a field holds, if it holds models: [(discriminator value or None, $ref)]."""
    options = [o for o in p.get("anyOf", [p]) if o.get("type") != "null"]
    if len(options) != 1:
        return []
    one = options[0]
    if "oneOf" in one:
        tags = {ref: tag for tag, ref in one.get("discriminator", {}).get("mapping", {}).items()}
        return [(tags.get(o["$ref"]), o["$ref"]) for o in one["oneOf"] if "$ref" in o]
    return [(None, one["$ref"])] if "$ref" in one else []


def _discriminator(p: dict) -> str | None:
    for o in p.get("anyOf", [p]):
        if "discriminator" in o:
            return o["discriminator"]["propertyName"]
    return None


def _walk(model: dict, defs: dict, prefix: str, tag: str | None, skip: str | None, out: dict[str, Row]) -> None:
    for name, p in model.get("properties", {}).items():
        if name == skip:
            continue  # the discriminator: set from the job's method, never written in a spec
        path = prefix + name
        variants = _variants(p)
        if variants:
            inner = _discriminator(p)
            for v_tag, ref in variants:
                _walk(defs[_ref_name(ref)], defs, path + ".", v_tag or tag, inner, out)
            continue
        values = p.get("additionalProperties")
        if p.get("type") == "object" and isinstance(values, dict) and "$ref" in values:
            _walk(defs[_ref_name(values["$ref"])], defs, path + ".<name>.", tag, None, out)
            continue
        row = out.setdefault(path, Row(path, _type(p)))
        row.defaults[tag] = _default_of(p, name in model.get("required", ()))
        row.descriptions[tag] = p.get("description", "")


def _default_of(p: dict, required: bool) -> str:
    if "default" in p:
        return f"`{json.dumps(p['default'], ensure_ascii=False)}`"
    if required:
        return "required"
    return {"array": "`[]`", "object": "`{}`"}.get(p.get("type", ""), "computed")  # a default_factory


def rows(model: type[BaseModel]) -> list[Row]:
    schema = model.model_json_schema()
    out: dict[str, Row] = {}
    _walk(schema, schema.get("$defs", {}), "", None, None, out)
    return list(out.values())


def _per_method(values: dict[str | None, str], tags: list[str]) -> str:
    """One value if every method has the field with the same value, else one line per method."""
    if None in values or (len(set(values.values())) == 1 and set(values) == set(tags)):
        return next(iter(values.values()))
    return "<br>".join(f"{t}: {v}" for t, v in values.items())


def _text(text: str) -> str:
    """Prose for a table cell: no HTML (`<think>` would vanish), no stray column break."""
    return text.replace("<", "&lt;").replace("\n", " ")


def table(model: type[BaseModel], unhashed: set[str] | None) -> list[str]:
    rs = rows(model)
    tags = sorted({t for r in rs for t in r.defaults if t is not None})
    head = ["option", "type", "default", *(["hashed"] if unhashed is not None else []), "description"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rs:
        cells = [f"`{r.path}`", r.type, _per_method(r.defaults, tags)]
        if unhashed is not None:
            cells.append("no" if r.path in unhashed else "yes")
        descriptions = {t: _text(d) for t, d in r.descriptions.items()}
        one = len(set(descriptions.values())) == 1
        cells.append(next(iter(descriptions.values())) if one else _per_method(descriptions, tags))
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return lines


def render() -> str:
    """The text between the markers."""
    if CHECKOUT not in sys.path:
        sys.path.insert(0, CHECKOUT)
    from copsd.config import UNHASHED_PATHS, JobConfig
    from copsd.spec import SweepSpec

    unhashed = {".".join(p) for p in UNHASHED_PATHS}
    return "\n".join(
        [
            f"<!-- generated by `{COMMAND}` from the models' JSON schema: edit the field descriptions, not this -->",
            "A job's options (`copsd/config.py`), as a spec's `defaults`, `methods.<method>` or matrix keys",
            "write them. The bracket that ends a description is where the default comes from: a file of the",
            "released code (`[released: …]`, GitHub `cisnlp/COPSD`), `[PAPER.md]`, or copsd's own choice",
            "(`[copsd]`). `hashed: no` marks a setting that says where things are or how fast they run: it is",
            "kept in the config and in MLflow but left out of the job id (`UNHASHED_PATHS`).",
            "",
            *table(JobConfig, unhashed),
            "",
            "A sweep spec's own options (`copsd/spec/models.py`); none of them is part of a job id.",
            "",
            *table(SweepSpec, None),
        ]
    )


def updated(text: str) -> str:
    """`text` with the region between the markers regenerated."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"{DOC.relative_to(ROOT)} lacks the markers {BEGIN} ... {END}")
    return text[: start + len(BEGIN)] + "\n" + render() + "\n" + text[end:]


def main(argv: list[str]) -> int:
    text = DOC.read_text(encoding="utf-8")
    try:
        new = updated(text)
    except ValueError as exc:
        print(exc)
        return 1
    where = DOC.relative_to(ROOT)
    if "--check" in argv:
        if new != text:
            print(f"{where}: the option table is not current; run `{COMMAND}`")
            return 1
        return 0
    if new != text:
        DOC.write_text(new, encoding="utf-8")
        print(f"{where}: option table rewritten")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
