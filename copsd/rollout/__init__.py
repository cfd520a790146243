"""Rollout engines behind one interface (`generate`, in `api.py`) that evaluation and every
method use.

* `hf`   -- transformers `generate`, the reference (`hf.py`);
* `fast` -- static KV cache + CUDA-graph decode over the model's own modules (`fast.py`);
* `auto` -- `fast` where supported (CUDA, Llama/Qwen family), else `hf` with a one-line note.
"""

from copsd.rollout.api import ENGINES, at_budget, generate, resolve_engine
from copsd.rollout.types import Rollout, SamplingParams, stop_token_ids

__all__ = ["ENGINES", "at_budget", "Rollout", "SamplingParams", "generate", "resolve_engine", "stop_token_ids"]
