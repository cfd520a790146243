"""Rollout engines behind one interface (`generate`) that evaluation and every method use.

* `hf`   -- transformers `generate`, the reference (`hf.py`);
* `fast` -- static KV cache + CUDA-graph decode over the model's own modules (`fast.py`);
* `auto` -- `fast` where supported (CUDA, Llama/Qwen family), else `hf` with a one-line note.
"""

from copsd.rollout.base import Rollout, SamplingParams, stop_token_ids
from copsd.rollout.batching import ENGINES, generate, resolve_engine

__all__ = ["ENGINES", "Rollout", "SamplingParams", "generate", "resolve_engine", "stop_token_ids"]
