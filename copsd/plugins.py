"""Plugins: packages that add languages, benchmarks, training data, built-in models or CLI
commands without the core importing them.

A plugin is a module with a `register()` function, announced by an entry point in the group
`copsd.plugins` (see pyproject.toml; the CPU testbed is one) or named in `$COPSD_PLUGINS`
(comma-separated module names, for a plugin that is not installed as a package). Registries call
`load_plugins()` before they are read, so a plugin is loaded once per process, on first use.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import entry_points
from typing import Any

from copsd.errors import CopsdError

GROUP = "copsd.plugins"
_loaded: list[str] = []
_state = {"done": False}


def load_plugins() -> list[str]:
    """Import and register every plugin (once); returns their names."""
    if _state["done"]:
        return list(_loaded)
    _state["done"] = True  # set first: a plugin's register() may read a registry
    try:
        targets = [(ep.name, ep.value) for ep in entry_points(group=GROUP)]
        extra = [m.strip() for m in os.environ.get("COPSD_PLUGINS", "").split(",") if m.strip()]
        targets += [(m, m) for m in extra if m not in {v.split(":")[0] for _, v in targets}]
        for name, target in targets:
            module, _, attr = target.partition(":")
            try:
                register = getattr(importlib.import_module(module), attr or "register")
            except (ImportError, AttributeError) as exc:
                raise CopsdError(f"plugin '{name}' ({target}) cannot be loaded: {exc}") from None
            register()
            _loaded.append(name)
    except BaseException:
        _state["done"] = False  # a later call tries again, from the start
        _loaded.clear()
        raise
    return list(_loaded)


COMMANDS_GROUP = "copsd.commands"


def plugin_commands() -> list[tuple[str, Any]]:
    """(name, Typer app) of every command group a plugin adds to `copsd` (entry points group
    `copsd.commands`); one that cannot be imported is skipped, so the rest of the CLI still works."""
    out = []
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            out.append((ep.name, ep.load()))
        except Exception:  # noqa: BLE001 - a broken plugin must not take the CLI down
            continue
    return out
