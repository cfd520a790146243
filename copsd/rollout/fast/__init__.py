"""The `fast` rollout engine: a static KV cache of slots, `prefill`, and a `decode_one_token` step
that runs as one CUDA-graph replay per token (gpt-fast's design over the model's own weights).

Nothing is copied from the model except the LoRA adapters: embeddings, norm weights, the rotary
table and every base projection weight are read in place. Ours are the attention, the cache, the
token loop and the way linear layers are applied, one file each:

* `support.py`   -- which models it runs (`unsupported_reason`);
* `options.py`   -- the step levers (`EngineOptions`);
* `model.py`     -- the decoder's math: `prefill`, `decode_one_token` (grouped-query attention with
  the query-head group folded into the query-length axis, so the cache is read once per step);
* `cache.py`     -- the slot cache (each slot one sequence at a time, its prompt at columns [0, P)
  and its own positions), the `BUCKET`s decode attends to, CUDA-graph capture (a graph per bucket,
  reused across batches and steps);
* `scheduler.py` -- continuous batching: every `CHECK_EVERY` steps (or when a sequence must have hit
  its budget) stopped slots are refilled with the next sequences; samples of one prompt are
  prefilled once (the other slots copy its cache columns);
* `engine.py`    -- `FastEngine` (all of the above, kept on the model: `engine_for`), `generate_ids`.

LoRA runs from shadow copies of A and B in the model dtype, refreshed before every batch (so the
optimizer's in-place updates are always seen), with the A matrices of q/k/v and of gate/up stacked:
one extra GEMM plus one fused add-GEMM per projection. PEFT itself computes adapters in fp32 with
casts around them, which made LoRA half of a decode step (profile in docs/benchmarks.md). Disabled
or merged adapters (`disable_adapter()`) are honoured (`../projections.py`). Sampling applies top-k
before top-p, so only k logits are sorted (top_k=0 sorts the whole vocabulary, exactly); a draw is
argmax(p / Exp(1)), a categorical sample without a host sync (`../sampling.py`). Each slot stops at
its own stop token or budget; a stopped slot emits padding and stands still until it is refilled or
the run ends.

Step levers (`EngineOptions`, off by default until measured on a GPU): `fuse` (q/k/v and gate/up
as one GEMM each), `compile` (inductor over the decode step), `flex` (FlexAttention: each slot
reads only its own cache blocks), `search` (top-p without a vocabulary sort).

On CPU (tests) the same code runs eagerly. `hf` stays the reference this engine is tested
against: token-for-token under greedy decoding, in distribution under sampling
(tests/test_rollout_fast.py; on a GPU tests/test_rollout_gpu.py).

The package loads lazily (`__getattr__`): importing `copsd.rollout.fast.layout` (the cache sizes,
which the memory estimate reads) does not load torch. To change a constant (tests), patch the
module that owns it: `fast.layout.BUCKET`, `fast.scheduler.CHECK_EVERY`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from copsd.rollout.types import lazy_attributes

_HOME = {
    "BUCKET": "layout",
    "PROMPT_ALIGN": "layout",
    "round_up": "layout",
    "CHECK_EVERY": "scheduler",
    "EngineOptions": "options",
    "FastEngine": "engine",
    "engine_for": "engine",
    "generate_ids": "engine",
    "SUPPORTED_MODEL_TYPES": "support",
    "unsupported_reason": "support",
}
__all__ = [
    "BUCKET",
    "CHECK_EVERY",
    "EngineOptions",
    "FastEngine",
    "PROMPT_ALIGN",
    "SUPPORTED_MODEL_TYPES",
    "engine_for",
    "generate_ids",
    "round_up",
    "unsupported_reason",
]

if TYPE_CHECKING:
    from copsd.rollout.fast.engine import FastEngine, engine_for, generate_ids
    from copsd.rollout.fast.layout import BUCKET, PROMPT_ALIGN, round_up
    from copsd.rollout.fast.options import EngineOptions
    from copsd.rollout.fast.scheduler import CHECK_EVERY
    from copsd.rollout.fast.support import SUPPORTED_MODEL_TYPES, unsupported_reason


__getattr__ = lazy_attributes(__name__, _HOME)
