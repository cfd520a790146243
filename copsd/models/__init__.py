"""Models: loading (Hub id, local directory, `builtin:` name) and the built-in models' registry.

The loaders are imported on first use (PEP 562): `copsd.models.builtin` and `.cache` are needed by
plugins and the CLI's help, and importing torch there would add 2-3 s to every `copsd` command,
`--help` and reports included."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "atomic_build": "copsd.models.cache",
    "cache_dir": "copsd.models.cache",
    "recipe_hash": "copsd.models.cache",
    "LoadedModel": "copsd.models.load",
    "load_model": "copsd.models.load",
    "load_tokenizer": "copsd.models.load",
    "resolve_device": "copsd.models.load",
    "resolve_dtype": "copsd.models.load",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'copsd.models' has no attribute {name!r}")
