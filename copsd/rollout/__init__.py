"""Rollout engines behind one interface (`generate`, in `api.py`) that evaluation and every
method use.

* `hf`   -- transformers `generate`, the reference (`hf.py`);
* `fast` -- static KV cache + CUDA-graph decode over the model's own modules (`fast/`);
* `auto` -- `fast` where supported (CUDA, Llama/Qwen family), else `hf` (`engine_note` says why,
  once per sweep).

The package loads lazily (`__getattr__`), so a module that needs only torch-free facts from it
(`rollout.fast.layout`) does not load torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from copsd.rollout.types import lazy_attributes

_HOME = {
    "ENGINES": "api",
    "at_budget": "api",
    "engine_note": "api",
    "generate": "api",
    "generate_stream": "api",
    "resolve_engine": "api",
    "Rollout": "types",
    "SamplingParams": "types",
    "base_model": "types",
    "drain": "types",
    "stop_token_ids": "types",
}
__all__ = [
    "ENGINES",
    "Rollout",
    "SamplingParams",
    "at_budget",
    "base_model",
    "drain",
    "engine_note",
    "generate",
    "generate_stream",
    "resolve_engine",
    "stop_token_ids",
]

if TYPE_CHECKING:
    from copsd.rollout.api import ENGINES, at_budget, engine_note, generate, generate_stream, resolve_engine
    from copsd.rollout.types import Rollout, SamplingParams, base_model, drain, stop_token_ids


__getattr__ = lazy_attributes(__name__, _HOME)
