"""Rollout engines behind one interface (`generate`, in `api.py`) that evaluation and every
method use.

* `hf`   -- transformers `generate`, the reference (`hf.py`);
* `fast` -- static KV cache + CUDA-graph decode over the model's own modules (`fast.py`);
* `auto` -- `fast` where supported (CUDA, Llama/Qwen family), else `hf` (`engine_note` says why, once per sweep).
"""

from copsd.rollout.api import ENGINES, at_budget, engine_note, generate, generate_stream, resolve_engine
from copsd.rollout.types import Rollout, SamplingParams, base_model, drain, stop_token_ids

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
