"""Prompts -> length-sorted sequences -> an engine -> `Rollout`s, the same for every engine.

Sequences (prompt x sample) are sorted by prompt length (samples of a prompt adjacent, so the
fast engine prefills each prompt once). `hf` cuts them into static batches, each seeded from
(seed, batch index); `fast` streams them through `batch_size` cache slots, refilling a slot as
soon as its sequence stops. A given seed, batch size and engine give the same samples on every
run and after a resume.
"""

from __future__ import annotations

from collections.abc import Generator

import torch

from copsd.rollout import fast, hf
from copsd.rollout.types import Rollout, SamplingParams, drain, stop_token_ids

ENGINES = ("auto", "fast", "hf")


def _batch_seed(seed: int, batch_index: int) -> int:
    return (seed * 1_000_003 + batch_index * 7919) % (2**63 - 1)


def engine_choice(engine: str, model) -> tuple[str, str | None]:
    """The engine `engine` means for `model`, and why `auto` fell back to `hf` (None when it did not).
    `auto` is `fast` on a CUDA device for supported models, else `hf`."""
    if engine not in ENGINES:
        raise ValueError(f"unknown rollout engine {engine!r}; choose one of {', '.join(ENGINES)}")
    if engine != "auto":
        if engine == "fast" and (reason := fast.unsupported_reason(model)):
            raise ValueError(f"rollout engine 'fast' cannot run this model: {reason}; use engine 'hf'")
        return engine, None
    device = next(model.parameters()).device
    reason = fast.unsupported_reason(model)
    if reason is None and device.type != "cuda":
        reason = "CUDA graphs need a GPU (on CPU the two engines cost about the same)"
    return ("fast", None) if reason is None else ("hf", reason)


def resolve_engine(engine: str, model) -> str:
    """The engine's name only; whoever runs a job says the fallback note once (`engine_note`)."""
    return engine_choice(engine, model)[0]


def engine_note(engine: str, model) -> str | None:
    """The line that tells a user `auto` chose `hf`, and why; None when there is nothing to say."""
    name, reason = engine_choice(engine, model)
    return f"note: rollout engine '{name}' ({reason})" if reason else None


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 64,
    seed: int = 0,
    engine: str = "auto",
) -> list[list[Rollout]]:
    """`generate_stream` drained."""
    return drain(generate_stream(model, tokenizer, prompts, params, batch_size=batch_size, seed=seed, engine=engine))


@torch.no_grad()
def generate_stream(
    model,
    tokenizer,
    prompts: list[str],
    params: SamplingParams,
    *,
    batch_size: int = 64,
    seed: int = 0,
    engine: str = "auto",
) -> Generator[int, None, list[list[Rollout]]]:
    """Yields how many sequences finished since the last yield (its caller shows progress and can
    stop between yields); returns `params.n` samples for each prompt, grouped by prompt, in sample order.
    `fast` decodes every sequence through `batch_size` slots with continuous batching (one seed);
    `hf` decodes static batches of `batch_size`, each seeded from (seed, batch index)."""
    name = resolve_engine(engine, model)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    seqs = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
    seqs.sort(key=lambda s: (len(encoded[s[0]]), s[0], s[1]))
    stops = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    out: list[list[Rollout | None]] = [[None] * params.n for _ in prompts]
    rows = min(batch_size, len(seqs))  # fast: cache slots

    def keep(batch: list[tuple[int, int]], new: list[list[int]]) -> None:
        for (i, j), toks in zip(batch, new):
            cut = next((k for k, t in enumerate(toks) if t in stops), None)
            finished = cut is not None
            toks = toks[: cut + 1] if finished else toks
            text = tokenizer.decode(toks, skip_special_tokens=True)
            out[i][j] = Rollout(i, j, encoded[i], toks, text, finished)

    if name == "fast" and seqs:
        eng = fast.engine_for(model)
        new = yield from eng.stream(encoded, [i for i, _ in seqs], params, stops, pad_id, _batch_seed(seed, 0), rows)
        keep(seqs, new)
        return out  # type: ignore[return-value]
    for b, start in enumerate(range(0, len(seqs), batch_size)):
        batch = seqs[start : start + batch_size]
        keep(batch, hf.generate_ids(model, [encoded[i] for i, _ in batch], params, stops, pad_id, _batch_seed(seed, b)))
        yield len(batch)
    return out  # type: ignore[return-value]


def at_budget(r: Rollout, budget: int, tokenizer) -> Rollout:
    """The rollout cut to `budget` new tokens. Its first `budget` tokens are a sample from exactly
    what a decode with `max_new_tokens=budget` draws from (decoding is step by step); with `hf`
    they are even the same draw (per-batch seeds: tests/test_budgets.py checks it against real
    decodes), with `fast` the draw differs because slots are refilled at other times."""
    if len(r.token_ids) <= budget:
        return r
    toks = r.token_ids[:budget]
    return Rollout(
        r.prompt_index, r.sample_index, r.prompt_ids, toks, tokenizer.decode(toks, skip_special_tokens=True), False
    )
