"""The fast engine's static KV cache of slots, its attention buckets, and the CUDA graphs that
replay a decode step over it.

The cache is preallocated, [slots, kv_heads, capacity, head_dim] per layer. Every slot holds one
sequence at a time: its prompt at columns [0, P) (prompts right-padded to `PROMPT_ALIGN` in
prefill) and its generated tokens after it, at its own rotary positions (= cache columns). Decode
attends to the cache up to a `BUCKET` boundary, not its whole capacity; each bucket has its own
captured graph (a handful per batch shape, reused across batches and steps).

The sizes (`BUCKET`, `PROMPT_ALIGN`, capacities) are in `layout.py`, which needs no torch (the
memory estimate reads them too); this module reads `layout.BUCKET` when it runs, so tests patch
`fast.layout.BUCKET`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from copsd.rollout.fast import layout


class SlotCache:
    """Static buffers of one slot count and capacity; captured graphs read and advance them in place.

    `pos` is where the slot's last token (`cur`) is written next, which is also its rotary
    position; `step` counts the tokens it has emitted into `out`."""

    def __init__(self, slots: int, cap: int, max_new: int, layers: int, kv_heads: int, head_dim: int, device, dtype):
        dev, dt = device, dtype
        shape = (slots, kv_heads, cap, head_dim)
        self.batch, self.capacity, self.max_new = slots, cap, max_new
        self.k = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(layers)]
        self.v = [torch.zeros(shape, device=dev, dtype=dt) for _ in range(layers)]
        self.cur = torch.zeros((slots, 1), dtype=torch.long, device=dev)  # last sampled token
        self.pos = torch.zeros((slots,), dtype=torch.long, device=dev)  # cache column `cur` goes to
        self.step = torch.zeros((slots,), dtype=torch.long, device=dev)  # tokens emitted so far
        self.finished = torch.ones((slots,), dtype=torch.bool, device=dev)  # idle slots count as finished
        self.out = torch.zeros((slots, max_new + 1), dtype=torch.long, device=dev)  # + a column finished rows write to
        self.limit = torch.full((slots,), max_new, dtype=torch.long, device=dev)  # each sequence's own budget
        self.rows = torch.arange(slots, device=dev)
        self.arange = torch.arange(cap, device=dev)
        n = cap // layout.BUCKET  # FlexAttention's block ids, [slots, 1, 1, blocks]
        self.blocks = torch.arange(n, dtype=torch.int32, device=dev).expand(slots, 1, 1, n).contiguous()
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, the stop-id tensor it reads)

    def fits(self, slots: int, cap: int, max_new: int) -> bool:
        return self.batch == slots and self.capacity >= cap and self.max_new == max_new

    def reset(self) -> None:
        """Every slot idle, at column 0."""
        self.finished.fill_(True)
        self.pos.zero_()

    def copy_columns(self, src: list[int], dst: list[int], n: int) -> None:
        """Slots `dst` take the first `n` cache columns of slots `src` (one gather per layer)."""
        src_i = torch.tensor(src, device=self.pos.device)
        dst_i = torch.tensor(dst, device=self.pos.device)
        for kc, vc in zip(self.k, self.v):
            kc[dst_i, :, :n] = kc[src_i, :, :n]
            vc[dst_i, :, :n] = vc[src_i, :, :n]

    def begin(self, slots: list[int], tok: torch.Tensor, positions: list[int], limits: list[int], stops, pad_id: int):
        """Sequences start in `slots`: their first token `tok` emitted, next written at `positions`."""
        dev = self.pos.device
        rows = torch.tensor(slots, device=dev)
        self.out[rows] = pad_id
        self.out[rows, 0] = tok
        self.cur[rows, 0] = tok
        self.pos[rows] = torch.tensor(positions, device=dev)
        self.step[rows] = 1
        self.limit[rows] = torch.tensor(limits, device=dev)
        self.finished[rows] = (tok[:, None] == stops[None, :]).any(-1) | (self.limit[rows] <= 1)

    def advance(self, tok: torch.Tensor, stops, pad_id: int) -> None:
        """One decode step's token per slot: finished slots emit padding and stand still."""
        active = ~self.finished
        tok = torch.where(active, tok, torch.full_like(tok, pad_id))
        self.out.scatter_(1, self.step[:, None], tok[:, None])  # a finished slot writes padding after its end
        self.step += active
        self.pos += active
        self.finished |= active & ((tok[:, None] == stops[None, :]).any(-1) | (self.step >= self.limit))
        self.cur.copy_(tok[:, None])


def block_mask(cache: SlotCache, kv_len: int, flex_kw: dict):
    """FlexAttention's block-sparse view of the cache for one decode step: per slot, the blocks
    before the one holding `pos` are read whole, that one through the causal mask, and later
    ones not at all (a ragged cache without paging; on a GPU flex decoding splits the reads)."""
    from torch.nn.attention.flex_attention import BlockMask

    n = kv_len // layout.BUCKET
    pos = cache.pos
    last = (pos // layout.BUCKET).to(torch.int32).view(-1, 1, 1)
    every = cache.blocks[..., :n]
    return BlockMask.from_kv_blocks(
        torch.ones_like(last),
        last.unsqueeze(-1).expand_as(every).contiguous(),
        full_kv_num_blocks=last,
        full_kv_indices=every,
        BLOCK_SIZE=(layout.BUCKET, layout.BUCKET),
        mask_mod=lambda b, h, q, kv: kv <= pos[b],
        seq_lengths=(1, kv_len),
        **flex_kw,
    )


def capture(cache: SlotCache, kv_len: int, step: Callable[[], None], device, pool: Any) -> tuple[Any, Any]:
    """`step` (one decode step at `kv_len`) captured as a CUDA graph in memory pool `pool` (made
    when None); returns (graph, pool). Captured before any prefill of the call, so the warm-up's
    cache writes hurt nothing."""
    tensors = (cache.cur, cache.pos, cache.step, cache.finished, cache.out, cache.limit)
    saved = [t.clone() for t in tensors]
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # warm-up (lazy cuBLAS/SDPA init) outside the capture
        cache.pos.fill_(kv_len - 1)
        step()
    torch.cuda.current_stream(device).wait_stream(side)
    for t, v in zip(tensors, saved):
        t.copy_(v)
    g = torch.cuda.CUDAGraph()
    if pool is None:
        pool = torch.cuda.graph_pool_handle()
    with torch.cuda.graph(g, pool=pool):
        step()
    return g, pool
