"""The on-disk cache of artefacts built on this machine (built-in models), keyed by recipe hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path


def cache_dir() -> Path:
    """Where built-in models and other derived artefacts are cached (COPSD_CACHE overrides)."""
    return Path(os.environ.get("COPSD_CACHE") or Path.home() / ".cache" / "copsd")


def recipe_hash(recipe: dict) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:10]


def atomic_build(target: Path, build) -> Path:
    """Build a directory once: into a temp dir beside `target`, then rename (safe with workers)."""
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp", dir=target.parent))
    try:
        build(tmp)
        try:
            os.replace(tmp, target)
        except OSError:  # another process won the race
            if not (target / "config.json").is_file():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
