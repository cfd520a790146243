"""Forward helpers the losses share: only the positions that predict completion tokens ever
reach the LM head, so the vocabulary-sized logits are never built for prompt positions."""

from __future__ import annotations

import torch

from copsd.rollout import base_model


def decoder_and_head(model):
    """(decoder returning hidden states, LM head) of a (PEFT-wrapped) causal LM."""
    base = base_model(model)
    return base.model, base.get_output_embeddings()


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def completion_hidden(
    decoder, prompts: list[list[int]], completions: list[list[int]], pad_id: int, device
) -> torch.Tensor:
    """Hidden states that predict each completion token ([sum of completion lengths, H], row order)
    for inputs prompt + completion: only these positions ever reach the LM head."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids, mask = pad_right(seqs, pad_id, device)
    hidden = decoder(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state  # no KV cache kept
    rows, cols = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        rows += [i] * len(c)
        cols += list(range(len(p) - 1, len(p) + len(c) - 1))
    return hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]
