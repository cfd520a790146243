"""The fast engine's cache sizes, as plain arithmetic (no torch: `copsd sweep plan --estimate`
reads them without loading it). Everything here reads `BUCKET` and `PROMPT_ALIGN` from this
module when it runs, so a test patches them here (`fast.layout.BUCKET`)."""

from __future__ import annotations

BUCKET = 128  # decode attends to the cache in multiples of this many positions
PROMPT_ALIGN = 8  # prefill pads prompts (on the right) to a multiple of this (aligned attention masks)


def round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def prompt_width(lengths) -> int:
    """Columns a prefill of prompts of these lengths takes (right-padded, aligned)."""
    return round_up(max(lengths), PROMPT_ALIGN)


def capacity(longest_prompt: int, max_new: int, flex: bool = False) -> int:
    """Cache positions per slot for prompts up to `longest_prompt` and `max_new` new tokens."""
    cap = round_up(round_up(longest_prompt, PROMPT_ALIGN) + max_new, BUCKET)
    if flex:  # inductor's CPU flex kernel fails to build for a one-block cache (torch 2.13)
        cap = max(cap, 2 * BUCKET)
    return cap


def kv_len(pos_bound: int, cap: int, flex: bool = False) -> int:
    """The cache length a decode step attends to when no live slot's position exceeds `pos_bound`.
    FlexAttention: the whole cache (its block mask bounds each slot's reads)."""
    return cap if flex else min(cap, round_up(pos_bound + 1, BUCKET))


def graph_kv_lens(shortest_prompt: int, needed: int, cap: int, flex: bool = False) -> list[int]:
    """The buckets a run may decode at (one captured graph each): from the shortest prompt up to the
    capacity the run needs, and the cache's whole capacity `cap`."""
    return sorted({kv_len(c, cap, flex) for c in range(shortest_prompt, needed, BUCKET)} | {cap})
