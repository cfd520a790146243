"""Sampling inside a decode step, on the device and without a host sync, so that a CUDA graph
can hold it: transformers' temperature -> top-k -> top-p, then a categorical draw as
argmax(p / Exp(1)). Tested against transformers' own warpers (tests/test_rollout_fast.py)."""

from __future__ import annotations

import torch


def top_p_floor(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """The smallest probability top-p keeps in each row of `probs` [B, V] (fp32), found without a
    sort, as its int32 bit pattern [B]: token q is kept iff the mass of tokens more likely than q
    is below top_p, which is iff q >= the largest t with mass(p >= t) >= top_p. Non-negative
    floats order like their bit patterns, so bisecting the integers between 0 and the row's
    maximum finds t exactly in 30 fixed rounds (a CUDA graph cannot stop early). Ties at the
    boundary are all kept; a sort keeps the ones it happens to put first. Where the mass above a
    token is within fp32 rounding of top_p, summation order decides (the sort sums in sorted
    order, this in vocabulary order), as between any two fp32 implementations."""
    bits = probs.view(torch.int32)
    lo = torch.zeros(probs.shape[0], dtype=torch.int32, device=probs.device)  # mass(p >= 0) = 1 >= top_p
    hi = bits.amax(-1) + 1  # mass(p >= hi) = 0 < top_p
    for _ in range(30):  # hi - lo <= bits of 1.0 + 1 < 2**30, halved every round
        mid = lo + (hi - lo) // 2
        enough = torch.where(bits >= mid[:, None], probs, 0.0).sum(-1) >= top_p
        lo = torch.where(enough, mid, lo)
        hi = torch.where(enough, hi, mid)
    return lo


def sample_next(
    logits: torch.Tensor, temperature: float, top_k: int, top_p: float, search: bool = False
) -> torch.Tensor:
    """Next token per row from fp32 logits [B, V]: greedy when temperature <= 0, else
    temperature -> top-k -> top-p (transformers' order and semantics) -> a categorical draw.
    `search`: top-p without top-k finds its cut with `top_p_floor` instead of sorting the vocabulary."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits / temperature
    full = top_k <= 0 or top_k >= logits.shape[-1]
    if full and (top_p >= 1.0 or search):  # draw from the (cut) softmax in vocabulary order, no sort
        probs = torch.softmax(logits, dim=-1)
        if top_p < 1.0:
            probs = probs.masked_fill(probs.view(torch.int32) < top_p_floor(probs, top_p)[:, None], 0.0)
        return torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1)
    if not full:
        vals, idx = torch.topk(logits, top_k, dim=-1)  # sorted, descending
    else:  # top-p over the whole vocabulary needs the full sort
        vals, idx = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(vals, dim=-1)
    if top_p < 1.0:
        # keep the smallest prefix whose mass reaches top_p (the most likely token always stays)
        probs = probs.masked_fill(probs.cumsum(-1) - probs >= top_p, 0.0)
    choice = torch.argmax(probs / torch.empty_like(probs).exponential_(1), dim=-1, keepdim=True)
    return idx.gather(-1, choice).squeeze(-1)
