"""A pydantic validation error as one line: file, field path, what is allowed there."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from copsd.config import TRAIN_CLASSES


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
