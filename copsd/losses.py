"""The COPSD loss: a full-vocabulary, token-level divergence between teacher and student.

Per vocabulary entry v at each position (logits divided by `temperature` first):
    forward_kl   p_T(v) * (log p_T(v) - log p_S(v))                 = KL(p_T || p_S)   [paper default]
    reverse_kl   p_S(v) * (log p_S(v) - log p_T(v))                 = KL(p_S || p_T)
    jsd          beta * p_T (log p_T - log M) + (1-beta) * p_S (log p_S - log M),  M = beta p_T + (1-beta) p_S
                 (as released: beta = 0 means forward_kl, beta = 1 means reverse_kl)
Each entry is clamped from above at `clip` (the released code's per-entry clip, 0.05) BEFORE the
vocabulary sum, so a clamped entry contributes no gradient. `token_divergence` returns the
vocabulary sum per position; the trainer averages it over rollout tokens.

`chunked_token_divergence` computes the same values from hidden states and the LM head, a chunk
of positions at a time under activation checkpointing, so full-vocabulary fp32 logits for the
whole rollout are never held (at 151,936 entries x 1024 tokens x 4 rollouts that is 2.5 GB).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

Kind = Literal["forward_kl", "reverse_kl", "jsd"]
KINDS = ("forward_kl", "reverse_kl", "jsd")
ClipMode = Literal["entry", "token_rescale"]


def _entry_divergence(s_logp: torch.Tensor, t_logp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    if kind == "forward_kl":
        return t_logp.exp() * (t_logp - s_logp)
    if kind == "reverse_kl":
        return s_logp.exp() * (s_logp - t_logp)
    if kind == "jsd":
        # The released generalized JSD special-cases its endpoints (the mixture formula is 0 there):
        # beta = 0 is KL(p_T || p_S) and beta = 1 is KL(p_S || p_T).
        if beta <= 0.0:
            return _entry_divergence(s_logp, t_logp, "forward_kl", beta)
        if beta >= 1.0:
            return _entry_divergence(s_logp, t_logp, "reverse_kl", beta)
        m_logp = torch.logsumexp(torch.stack([t_logp + math.log(beta), s_logp + math.log(1.0 - beta)]), dim=0)
        return beta * t_logp.exp() * (t_logp - m_logp) + (1.0 - beta) * s_logp.exp() * (s_logp - m_logp)
    raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def token_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    kind: Kind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    clip: float | None = None,
    clip_mode: ClipMode = "entry",
) -> torch.Tensor:
    """Divergence per position ([..., V] logits -> [...] values), computed in fp32.

    clip_mode "entry" (the paper's): each vocabulary entry clamped from above at `clip` before the
    sum; a clamped entry passes no gradient, and entries where p_T < p_S stay negative, so the
    per-token value can go below zero. "token_rescale" (ours): a token whose summed divergence d
    exceeds `clip` is scaled by clip / d (the factor without gradient): its value is capped at
    `clip` but its gradient keeps its direction, only shrunk."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    d = _entry_divergence(s, t, kind, beta)
    if clip is None:
        return d.sum(dim=-1)
    if clip_mode == "entry":
        return d.clamp(max=clip).sum(dim=-1)
    if clip_mode == "token_rescale":
        tok = d.sum(dim=-1)
        return tok * (clip / tok.detach().clamp(min=clip))
    raise ValueError(f"clip_mode must be 'entry' or 'token_rescale', got {clip_mode!r}")


def chunked_token_divergence(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    *,
    kind: Kind = "forward_kl",
    beta: float = 0.5,
    temperature: float = 1.0,
    clip: float | None = None,
    clip_mode: ClipMode = "entry",
    chunk_size: int = 256,
) -> torch.Tensor:
    """Same values as `token_divergence(lm_head(hs), lm_head(ht))` per position, for [N, H] hidden
    states, holding full-vocabulary logits for at most `chunk_size` positions at a time (also in
    the backward pass, which recomputes each chunk's logits)."""
    if student_hidden.shape[:-1] != teacher_hidden.shape[:-1]:
        raise ValueError(
            f"student {tuple(student_hidden.shape)} and teacher {tuple(teacher_hidden.shape)} positions differ"
        )
    teacher_hidden = teacher_hidden.detach()

    def one(hs: torch.Tensor, ht: torch.Tensor) -> torch.Tensor:
        return token_divergence(
            lm_head(hs), lm_head(ht), kind=kind, beta=beta, temperature=temperature, clip=clip, clip_mode=clip_mode
        )

    return _map_chunks(one, student_hidden, teacher_hidden, chunk_size)


def _map_chunks(fn, x: torch.Tensor, other: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """fn over row chunks of (x, other), concatenated; each chunk under activation checkpointing
    when x needs a gradient, so only one chunk's intermediates (logits) live at a time."""
    outs = []
    for i in range(0, x.shape[0], chunk_size):
        a, b = x[i : i + chunk_size], other[i : i + chunk_size]
        if torch.is_grad_enabled() and a.requires_grad:
            outs.append(checkpoint(fn, a, b, use_reentrant=False))
        else:
            outs.append(fn(a, b))
    return torch.cat(outs) if outs else x.new_zeros((0,), dtype=torch.float32)


def divergence_diagnostics(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    kind: Kind,
    beta: float,
    temperature: float,
    clip: float | None,
    clip_mode: ClipMode = "entry",
) -> tuple[float, float]:
    """(mean unclipped per-token divergence, share the clip cuts: of vocabulary entries for
    clip_mode 'entry', of tokens for 'token_rescale'): logged."""
    with torch.no_grad():
        s = F.log_softmax(student_logits.float() / temperature, dim=-1)
        t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
        entries = _entry_divergence(s, t, kind, beta)
        per_token = entries.sum(-1)
        if clip is None:
            share = 0.0
        elif clip_mode == "entry":
            share = float((entries > clip).float().mean())
        else:
            share = float((per_token > clip).float().mean())
        return float(per_token.mean()), share


def chunked_token_logprobs(
    hidden: torch.Tensor,
    lm_head: torch.nn.Module,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    chunk_size: int = 256,
) -> torch.Tensor:
    """log p(target) per position from [N, H] hidden states (for GRPO and SFT), a chunk at a time."""

    def one(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logp = F.log_softmax(lm_head(h).float() / temperature, dim=-1)
        return logp.gather(-1, y.unsqueeze(-1)).squeeze(-1)

    return _map_chunks(one, hidden, targets, chunk_size)
