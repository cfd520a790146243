"""Reference rollout engine: transformers `generate` on one left-padded batch."""

from __future__ import annotations

import torch

from copsd.rollout.types import SamplingParams, base_model


@torch.no_grad()
def generate_ids(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    stops: list[int],
    pad_id: int,
    seed: int,
    rows: int | None = None,
    limits: list[int] | None = None,
) -> list[list[int]]:
    """Raw new tokens per prompt (up to `max_new_tokens`; after a row's stop token, `pad_id`).
    `rows` is accepted for the engine interface; `generate` decodes the batch as given.
    `limits`: each row's exact length, ended by forcing `stops[0]` there and nowhere else (benchmarks)."""
    from transformers import GenerationConfig, LogitsProcessorList

    greedy = params.temperature <= 0
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else params.temperature,
        top_p=None if greedy else params.top_p,
        top_k=None if greedy else params.top_k,
        max_new_tokens=params.max_new_tokens,
        min_new_tokens=None if stops else params.max_new_tokens,  # no stops: decode the whole budget
        eos_token_id=stops or None,
        pad_token_id=pad_id,
    )
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
        mask[r, width - len(p) :] = 1
    device = next(model.parameters()).device
    # transformers fills every unset field from the model's own generation config (a checkpoint's
    # repetition_penalty, min_p, ...); a bare one keeps sampling exactly what `params` says.
    base = base_model(model)
    saved = base.generation_config
    base.generation_config = GenerationConfig(eos_token_id=stops or None, pad_token_id=pad_id)
    try:
        torch.manual_seed(seed)
        extra = LogitsProcessorList([_StopAt(limits, width, stops[0])] if limits is not None else [])
        gen = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg, logits_processor=extra
        )
    finally:
        base.generation_config = saved
    return gen[:, width:].tolist()


class _StopAt:
    """A logits processor that makes row r's `limits[r]`-th new token the stop token, and no
    earlier one (so a row's length is exactly its limit)."""

    def __init__(self, limits: list[int], width: int, stop: int):
        self.limits, self.width, self.stop = torch.tensor(limits), width, stop

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        last = self.limits.to(scores.device) == input_ids.shape[1] - self.width + 1
        scores[:, self.stop] = float("-inf")
        if bool(last.any()):
            scores[last] = float("-inf")
            scores[last, self.stop] = 0.0
        return scores
