"""Reference rollout engine: batched transformers `generate` with left padding.

Sequences (prompt x sample) are sorted by prompt length to cut padding, then cut into
batches; the RNG is reseeded per batch from (seed, batch index), so a given seed and batch
size give the same samples on every run and after a resume.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from copsd.rollout.base import Rollout, SamplingParams, stop_token_ids


def _batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919) % (2**63 - 1)


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 64,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> list[list[Rollout]]:
    """`params.n` samples for each prompt; returns rollouts grouped by prompt, in sample order."""
    from transformers import GenerationConfig

    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seqs = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
    seqs.sort(key=lambda s: (len(encoded[s[0]]), s[0], s[1]))
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    greedy = params.temperature <= 0
    gen_cfg = GenerationConfig(
        do_sample=not greedy,
        temperature=None if greedy else params.temperature,
        top_p=None if greedy else params.top_p,
        top_k=None if greedy else params.top_k,
        max_new_tokens=params.max_new_tokens,
        eos_token_id=stops,
        pad_token_id=pad_id,
    )
    device = next(model.parameters()).device
    out: list[list[Rollout | None]] = [[None] * params.n for _ in prompts]
    for b, start in enumerate(range(0, len(seqs), batch_size)):
        batch = seqs[start : start + batch_size]
        width = max(len(encoded[i]) for i, _ in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, (i, _) in enumerate(batch):
            e = encoded[i]
            ids[r, width - len(e) :] = torch.tensor(e)
            mask[r, width - len(e) :] = 1
        torch.manual_seed(_batch_seed(seed, b))
        gen = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen_cfg)
        new = gen[:, width:].tolist()
        for r, (i, j) in enumerate(batch):
            toks = new[r]
            cut = next((k for k, t in enumerate(toks) if t in stops), None)
            finished = cut is not None
            toks = toks[: cut + 1] if finished else toks
            text = tokenizer.decode(toks, skip_special_tokens=True)
            out[i][j] = Rollout(i, j, encoded[i], toks, text, finished)
        if on_batch:
            on_batch(len(batch))
    return out  # type: ignore[return-value]
