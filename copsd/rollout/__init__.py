"""Rollout engines: one interface (`generate`) that evaluation and every method use.

`hf` (transformers `generate`) is the reference engine; faster engines plug in behind the same
signature (see issue 5).
"""

from copsd.rollout.base import Rollout, SamplingParams, stop_token_ids
from copsd.rollout.hf import generate

__all__ = ["Rollout", "SamplingParams", "generate", "stop_token_ids"]
