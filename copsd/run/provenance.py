"""What a job's numbers were made with: code version, library versions, device, prompts and data.

Recorded per job in the results DB (`jobs.provenance_json`) and as MLflow tags
(`copsd.provenance.*`); `copsd sweep status --job ID` prints it. The fingerprints are short
SHA-256 digests of exactly what was read, so two results with equal fingerprints saw the same
prompt strings and the same records in the same order.
"""

from __future__ import annotations

import hashlib
import json
import platform
import subprocess
from collections.abc import Iterable
from dataclasses import astuple, is_dataclass
from functools import lru_cache
from importlib import metadata
from pathlib import Path

LIBRARIES = ("torch", "transformers", "peft", "math-verify", "datasets", "mlflow")


def fingerprint(items: Iterable) -> str:
    """Order-sensitive digest of records (dataclasses, dicts or strings): 16 hex digits."""
    h = hashlib.sha256()
    for item in items:
        value = astuple(item) if is_dataclass(item) and not isinstance(item, type) else item
        h.update(json.dumps(value, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


@lru_cache(maxsize=1)
def code_version() -> dict[str, str | bool | None]:
    """copsd's version, plus the git commit and a dirty flag when it runs from a checkout."""
    import copsd

    out: dict[str, str | bool | None] = {"copsd_version": _version("copsd") or getattr(copsd, "__version__", None)}
    root = Path(copsd.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            commit = subprocess.run(
                ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            dirty = subprocess.run(
                ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                capture_output=True,
                text=True,
                timeout=10,
            ).stdout.strip()
            out["git_commit"] = commit or None
            out["git_dirty"] = bool(dirty)
        except (OSError, subprocess.SubprocessError):
            pass
    return out


def device_name(device) -> str:
    """The accelerator's marketing name, or the CPU's architecture and thread count."""
    import torch

    dev = torch.device(device) if device is not None else torch.device("cpu")
    if dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(dev)
    return f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)"


def collect(*, device, prompts: str, eval_data: str, train_data: str | None, extra: dict | None = None) -> dict:
    """The provenance record of one job run (all values JSON-serialisable)."""
    rec: dict = {**code_version()}
    rec["python"] = platform.python_version()
    for lib in LIBRARIES:
        rec[f"{lib.replace('-', '_')}_version"] = _version(lib)
    rec["device"] = device_name(device)
    rec["prompt_fingerprint"] = prompts
    rec["eval_data_fingerprint"] = eval_data
    if train_data is not None:
        rec["train_data_fingerprint"] = train_data
    rec.update(extra or {})
    return rec
