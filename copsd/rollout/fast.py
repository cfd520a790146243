"""The `fast` rollout engine: a static KV cache of slots, `prefill`, and a `decode_one_token` step
that runs as one CUDA-graph replay per token (gpt-fast's design over the model's own weights).

Nothing is copied from the model except the LoRA adapters: embeddings, norm weights, the
rotary table and every base projection weight are read in place. Ours are the attention, the
cache, the token loop and the way linear layers are applied:

* the cache is preallocated ([slots, kv_heads, capacity, head_dim] per layer); each slot holds
  one sequence at a time, its prompt at columns [0, P) and its tokens after it, with its own
  position (prompts are right-padded in prefill; rotary positions are cache columns);
* continuous batching: every `CHECK_EVERY` steps (or when a sequence must have hit its budget)
  the host collects stopped slots and refills them with the next sequences: prefill into those
  slots only, decode goes on for the others. Samples of one prompt are prefilled once: the
  other slots copy its cache columns and draw their first token from its saved hidden state;
* grouped-query attention folds the query-head group into the query-length axis, so the
  cache is read once per step and never repeated per head;
* decode attends to the cache up to a `BUCKET` boundary, not its full capacity; each bucket
  has its own captured graph (a handful per batch shape, reused across batches and steps);
* LoRA runs from shadow copies of A and B in the model dtype, refreshed before every batch
  (so the optimizer's in-place updates are always seen), with the A matrices of q/k/v and of
  gate/up stacked: one extra GEMM plus one fused add-GEMM per projection. PEFT itself computes
  adapters in fp32 with casts around them, which made LoRA half of a decode step (profile in
  docs/benchmarks.md). Disabled or merged adapters (`disable_adapter()`) are honoured
  (`projections.py`);
* sampling applies top-k before top-p, so only k logits are sorted (top_k=0 sorts the whole
  vocabulary, exactly); a draw is argmax(p / Exp(1)), a categorical sample without a host sync
  (`sampling.py`);
* each slot stops at its own stop token or budget; a stopped slot emits padding and stands
  still until it is refilled or the run ends.

Step levers (`EngineOptions`, off by default until measured on a GPU): `fuse` (q/k/v and gate/up
as one GEMM each), `compile` (inductor over the decode step), `flex` (FlexAttention: each slot
reads only its own cache blocks), `search` (top-p without a vocabulary sort).

On CPU (tests) the same code runs eagerly. `hf` stays the reference this engine is tested
against: token-for-token under greedy decoding, in distribution under sampling
(tests/test_rollout_fast.py; on a GPU tests/test_rollout_gpu.py).
"""

from __future__ import annotations

import inspect
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F

from copsd.rollout.projections import Projections
from copsd.rollout.sampling import sample_next
from copsd.rollout.types import SamplingParams, base_model, drain

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")
BUCKET = 128  # decode attends to the cache in multiples of this many positions
CHECK_EVERY = 16  # decode steps between host checks for "every row has stopped"
PROMPT_ALIGN = 8  # prefill pads prompts (on the right) to a multiple of this (aligned attention masks)


@dataclass(frozen=True)
class EngineOptions:
    """Step-level levers of issue 15, off by default until a GPU run shows they pay (docs/benchmarks.md).
    Each one computes the same distribution: in fp32 the plain engine's greedy tokens exactly
    (tests/test_rollout_fast.py); in bf16 fused kernels round differently, as `fast` does against
    `hf`. A benchmark names them as `fast+fuse`, `fast+fuse+flex+search`, ..."""

    fuse: bool = False  # q/k/v and gate/up as one GEMM each (base weights re-homed into one buffer)
    compile: bool = False  # torch.compile the decode step (fused elementwise kernels) before graph capture
    search: bool = False  # top-p without top-k by an exact threshold search instead of a full-vocabulary sort
    flex: bool = False  # decode attention by FlexAttention (implies compile): each slot reads only its own blocks

    @classmethod
    def parse(cls, name: str) -> EngineOptions:
        """`fast[+fuse][+compile][+flex][+search]` -> options; ValueError on anything else."""
        head, *flags = name.split("+")
        known = {f.name for f in fields(cls)}
        if head != "fast" or any(f not in known for f in flags) or len(set(flags)) < len(flags):
            raise ValueError(f"{name!r}: expected fast with optional +{' +'.join(sorted(known))}")
        return cls(**{f: True for f in flags})

    def label(self) -> str:
        return "+".join(["fast"] + [f.name for f in fields(self) if getattr(self, f.name)])


def _round_up(x: int, m: int) -> int:
    return (x + m - 1) // m * m


def unsupported_reason(model) -> str | None:
    """None when the fast engine can run `model`, else why not (one line)."""
    base = base_model(model)
    cfg = getattr(base, "config", None)
    mtype = getattr(cfg, "model_type", None)
    if mtype not in SUPPORTED_MODEL_TYPES:
        return f"model type {mtype!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    if getattr(cfg, "use_sliding_window", False) and getattr(cfg, "sliding_window", None):
        return "sliding-window attention is not supported"
    inner = getattr(base, "model", None)
    if inner is None or not hasattr(inner, "layers") or not hasattr(inner, "rotary_emb"):
        return "model has no .model.layers / .model.rotary_emb (not a Llama-family decoder)"
    for rope in (getattr(cfg, "rope_scaling", None), getattr(cfg, "rope_parameters", None)):
        if isinstance(rope, dict) and "dynamic" in str(rope.get("rope_type", rope.get("type", ""))):
            return "dynamic rotary scaling is not supported (it syncs with the host every step)"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    for m in model.modules():
        if getattr(m, "use_dora", None) and any(m.use_dora.values()):
            return "DoRA adapters are not supported"
        if hasattr(m, "lora_A") and len(getattr(m, "active_adapters", ())) > 1:
            return "more than one active LoRA adapter"
    return None


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _now(device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


def _flex_attention(*args, **kwargs) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(*args, **kwargs)


def _rms(norm, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


class _State:
    """Static buffers of one slot count and capacity; captured graphs read and advance them in place.

    Every slot holds one sequence at a time: its prompt at cache columns [0, P), its generated
    tokens after it. `pos` is where the slot's last token (`cur`) is written next, which is also
    its rotary position; `step` counts the tokens it has emitted into `out`."""

    def __init__(self, engine: FastEngine, slots: int, capacity: int, max_new: int):
        dev, dt = engine.device, engine.dtype
        shape = (slots, engine.n_kv, capacity, engine.head_dim)
        self.batch, self.capacity, self.max_new = slots, capacity, max_new
        self.k = [torch.zeros(shape, device=dev, dtype=dt) for _ in engine.layers]
        self.v = [torch.zeros(shape, device=dev, dtype=dt) for _ in engine.layers]
        self.cur = torch.zeros((slots, 1), dtype=torch.long, device=dev)  # last sampled token
        self.pos = torch.zeros((slots,), dtype=torch.long, device=dev)  # cache column `cur` goes to
        self.step = torch.zeros((slots,), dtype=torch.long, device=dev)  # tokens emitted so far
        self.finished = torch.ones((slots,), dtype=torch.bool, device=dev)  # idle slots count as finished
        self.out = torch.zeros((slots, max_new + 1), dtype=torch.long, device=dev)  # + a column finished rows write to
        self.limit = torch.full((slots,), max_new, dtype=torch.long, device=dev)  # each sequence's own budget
        self.rows = torch.arange(slots, device=dev)
        self.arange = torch.arange(capacity, device=dev)
        n = capacity // BUCKET  # FlexAttention's block ids, [slots, 1, 1, blocks]
        self.blocks = torch.arange(n, dtype=torch.int32, device=dev).expand(slots, 1, 1, n).contiguous()
        self.graphs: dict[tuple, tuple] = {}  # key -> (graph, the stop-id tensor it reads)


class FastEngine:
    """Static-cache decoder over a (PEFT-wrapped) Llama/Qwen causal LM; see the module docstring."""

    def __init__(self, model, options: EngineOptions | None = None):
        self.options = options or EngineOptions()
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"fast engine: {reason}")
        base = base_model(model)
        self._base = weakref.ref(base)  # not a strong reference: the model owns the engine
        self.inner = base.model
        self.layers = list(self.inner.layers)
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_kv = base.config.num_key_value_heads
        self.n_heads = base.config.num_attention_heads
        self._build_projections()
        self._flex_kw: dict = {}
        if self.options.flex:  # decoding needs no backward blocks (torch >= 2.6 lets us skip building them)
            from torch.nn.attention.flex_attention import BlockMask

            if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
                self._flex_kw = {"compute_q_blocks": False}
        # the step every decode runs (eagerly, or once per graph capture); compiled with aten's own
        # random ops, so it draws the eager step's random numbers for a seed (in fp32 the same
        # samples, tested; in bf16 inductor's fused kernels round differently). The function, not a
        # bound method: the engine must not reference itself, or it would outlive its model until a
        # garbage collection.
        self._step = None
        self._dynamo_limits: dict = {}
        if self.options.compile or self.options.flex:
            self._step = torch.compile(type(self).decode_one_token, dynamic=False, options={"fallback_random": True})
            # one compiled graph per (cache bucket, batch shape): more than dynamo's default 8 per
            # function, and past the limit an error, not a silent fall back to an eager step (keys
            # an older torch lacks are left out)
            limits = {"recompile_limit": 256, "accumulated_recompile_limit": 4096, "fail_on_recompile_limit_hit": True}
            self._dynamo_limits = {k: v for k, v in limits.items() if hasattr(torch._dynamo.config, k)}
        self.lora = False  # whether this batch applies the adapters (set per batch)
        self.state: _State | None = None
        self.pool: Any = None  # the CUDA-graph memory pool, shared by every captured graph
        self.last_timing: dict[str, float] = {}

    def __reduce__(self):
        """A copied or pickled model gets no engine (it makes its own on first use)."""
        return (type(None), ())

    def _modules(self) -> list:
        return [
            m
            for layer in self.layers
            for m in (
                layer.self_attn.q_proj,
                layer.self_attn.k_proj,
                layer.self_attn.v_proj,
                layer.self_attn.o_proj,
                layer.mlp.gate_proj,
                layer.mlp.up_proj,
                layer.mlp.down_proj,
            )
        ]

    def _fingerprint(self) -> tuple:
        """What captured graphs depend on: modules, adapter tensors and scales, and the storage of
        every weight they read (a model moved away and back keeps ids but not storage)."""
        ids = []
        for m in self._modules():
            ids += [id(m), getattr(m, "base_layer", m).weight.data_ptr()]
            for name in getattr(m, "active_adapters", ())[:1]:
                if name in getattr(m, "lora_A", {}):
                    ids += [id(m.lora_A[name].weight), id(m.lora_B[name].weight), float(m.scaling[name])]
        head = self._head()
        w = self.inner.embed_tokens.weight
        return (*ids, id(head), head.weight.data_ptr(), w.data_ptr(), w.device, w.dtype)

    def _head(self):
        return self._base().get_output_embeddings()

    def _build_projections(self) -> None:
        self.lm_head = self._head()
        w = self.inner.embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        self.proj = []
        fuse = self.options.fuse
        for layer in self.layers:
            a, m = layer.self_attn, layer.mlp
            self.proj.append(
                {
                    "qkv": Projections([a.q_proj, a.k_proj, a.v_proj], self.dtype, fuse),
                    "o": Projections([a.o_proj], self.dtype),
                    "gate_up": Projections([m.gate_proj, m.up_proj], self.dtype, fuse),
                    "down": Projections([m.down_proj], self.dtype),
                }
            )
        self._built_for = self._fingerprint()  # after: fusing moves the base weights

    def _lora_active(self) -> bool:
        """Adapters apply unless there are none, they are disabled, or merged into the base weights."""
        loras = [m for m in self._modules() if hasattr(m, "lora_A")]
        return bool(loras) and not any(m.disable_adapters or getattr(m, "merged", False) for m in loras)

    def _prepare(self) -> None:
        """Per call: rebuild if PEFT replaced modules, decide on LoRA, refresh its shadow copies."""
        if self._fingerprint() != self._built_for:  # PEFT re-wrapped, adapters replaced, model moved
            self.release()
            self._build_projections()
        self.lora = self._lora_active()
        if self.lora:
            with torch.no_grad():
                for group in self.proj:
                    for p in group.values():
                        p.sync()

    # ---- the decoder ----------------------------------------------------------------------
    def _attention(self, i: int, a, h, cos, sin, mask, kv_len: int, slots) -> torch.Tensor:
        """Decode (`slots` None): one token per slot, written at its `pos`, attending to the cache.
        Prefill (`slots` a tensor): whole right-padded prompts written into those slots' columns
        [0, T), attending to themselves."""
        B, T, _ = h.shape
        shape = (B, T, -1, self.head_dim)
        q, k, v = (y.view(shape) for y in self.proj[i]["qkv"](h, self.lora))
        if hasattr(a, "q_norm"):
            q, k = _rms(a.q_norm, q), _rms(a.k_norm, k)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = torch.addcmul(q * cos, _rotate_half(q), sin)
        k = torch.addcmul(k * cos, _rotate_half(k), sin)
        s = self.state
        assert s is not None
        kc, vc = s.k[i], s.v[i]
        if slots is None:
            kc[s.rows, :, s.pos] = k[:, :, 0].to(kc.dtype)  # each slot at its own column
            vc[s.rows, :, s.pos] = v[:, :, 0].to(vc.dtype)
            if self.options.flex:  # `mask` is a BlockMask: each slot reads its blocks up to its `pos` only
                o = _flex_attention(q, kc, vc, block_mask=mask, scale=a.scaling, enable_gqa=True)
                return self.proj[i]["o"](o.transpose(1, 2).reshape(B, T, -1), self.lora)[0]
            keys, values = kc[:, :, :kv_len], vc[:, :, :kv_len]
        else:
            kc[slots, :, :T] = k.to(kc.dtype)
            vc[slots, :, :T] = v.to(vc.dtype)
            keys, values = k.to(kc.dtype), v.to(vc.dtype)
        g = self.n_heads // self.n_kv
        qf = q.reshape(B, self.n_kv, g * T, self.head_dim)  # query heads of one kv head share its cache
        if T > 1 and g > 1:
            mask = mask.repeat(1, 1, g, 1)
        o = F.scaled_dot_product_attention(qf, keys, values, attn_mask=mask, scale=a.scaling)
        o = o.reshape(B, self.n_heads, T, self.head_dim).transpose(1, 2).reshape(B, T, -1)
        return self.proj[i]["o"](o, self.lora)[0]

    def _forward(self, ids, positions, mask, kv_len: int, slots=None, last=None) -> torch.Tensor:
        """Final-norm hidden state at position `last` of each row ([B] indices; None = the only
        one), [B, H]; writes K/V into the cache (see `_attention`)."""
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        for i, layer in enumerate(self.layers):
            x = x + self._attention(i, layer.self_attn, _rms(layer.input_layernorm, x), cos, sin, mask, kv_len, slots)
            gate, up = self.proj[i]["gate_up"](_rms(layer.post_attention_layernorm, x), self.lora)
            x = x + self.proj[i]["down"](F.silu(gate) * up, self.lora)[0]
        x = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        return _rms(self.inner.norm, x)

    def _additive(self, keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keep.shape, dtype=self.dtype, device=self.device).masked_fill(~keep, float("-inf"))

    def prefill(self, prompts: list[list[int]], slots: list[int], pad_id: int) -> torch.Tensor:
        """Run the prompts (right-padded) through the model, writing their K/V into cache columns
        [0, len) of `slots`; returns the final hidden state of each prompt's last token, [m, H]."""
        width = _round_up(max(map(len, prompts)), PROMPT_ALIGN)
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = torch.tensor(p, dtype=torch.long)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        pos = torch.arange(width, device=self.device)
        # causal, and real keys only; a padding query still sees the real tokens before it (no NaN)
        keep = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lens[:, None, None])
        return self._forward(
            ids.to(self.device),
            pos[None].expand(len(prompts), -1),
            self._additive(keep[:, None]),
            width,
            slots=torch.tensor(slots, device=self.device),
            last=lens - 1,
        )

    def _block_mask(self, kv_len: int):
        """FlexAttention's block-sparse view of the cache for one decode step: per slot, the blocks
        before the one holding `pos` are read whole, that one through the causal mask, and later
        ones not at all (a ragged cache without paging; on a GPU flex decoding splits the reads)."""
        from torch.nn.attention.flex_attention import BlockMask

        s = self.state
        assert s is not None
        n = kv_len // BUCKET
        pos = s.pos
        last = (pos // BUCKET).to(torch.int32).view(-1, 1, 1)
        every = s.blocks[..., :n]
        return BlockMask.from_kv_blocks(
            torch.ones_like(last),
            last.unsqueeze(-1).expand_as(every).contiguous(),
            full_kv_num_blocks=last,
            full_kv_indices=every,
            BLOCK_SIZE=(BUCKET, BUCKET),
            mask_mod=lambda b, h, q, kv: kv <= pos[b],
            seq_lengths=(1, kv_len),
            **self._flex_kw,
        )

    def decode_one_token(self, kv_len: int, params: SamplingParams, stops, pad_id: int) -> None:
        """Feed each slot's `cur` at its `pos`, sample its next token into `out`; finished slots
        emit padding and stand still. All state advances in place (so a graph can replay it)."""
        s = self.state
        assert s is not None
        if self.options.flex:
            mask = self._block_mask(kv_len)
        else:
            keep = s.arange[:kv_len][None, :] <= s.pos[:, None]
            mask = self._additive(keep[:, None, None])
        h = self._forward(s.cur, s.pos[:, None], mask, kv_len)
        tok = sample_next(self.lm_head(h).float(), params.temperature, params.top_k, params.top_p, self.options.search)
        active = ~s.finished
        tok = torch.where(active, tok, torch.full_like(tok, pad_id))
        s.out.scatter_(1, s.step[:, None], tok[:, None])  # a finished slot writes padding after its end
        s.step += active
        s.pos += active
        s.finished |= active & ((tok[:, None] == stops[None, :]).any(-1) | (s.step >= s.limit))
        s.cur.copy_(tok[:, None])

    def _call_step(self, kv_len: int, params: SamplingParams, stops, pad_id: int) -> None:
        if self._step is None:
            self.decode_one_token(kv_len, params, stops, pad_id)
            return
        with torch._dynamo.config.patch(self._dynamo_limits):
            self._step(self, kv_len, params, stops, pad_id)

    # ---- CUDA graphs ----------------------------------------------------------------------
    def _capture(self, kv_len, params, stops, pad_id) -> torch.cuda.CUDAGraph:
        """Captured before any prefill of the call, so the warm-up's cache writes hurt nothing."""
        s = self.state
        assert s is not None
        tensors = (s.cur, s.pos, s.step, s.finished, s.out, s.limit)
        saved = [t.clone() for t in tensors]
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):  # warm-up (lazy cuBLAS/SDPA init) outside the capture
            s.pos.fill_(kv_len - 1)
            self._call_step(kv_len, params, stops, pad_id)
        torch.cuda.current_stream(self.device).wait_stream(side)
        for t, v in zip(tensors, saved):
            t.copy_(v)
        g = torch.cuda.CUDAGraph()
        if self.pool is None:
            self.pool = torch.cuda.graph_pool_handle()
        with torch.cuda.graph(g, pool=self.pool):
            self._call_step(kv_len, params, stops, pad_id)
        return g

    # ---- scheduling ---------------------------------------------------------------------------
    def _start(
        self,
        assign: list[tuple[int, int]],
        limits: list[int],
        prompts,
        held: dict,
        params,
        stops,
        pad_id: int,
        share: bool,
    ) -> int:
        """Start sequences in free slots: `assign` = [(slot, prompt index)], each with its own token
        budget. With `share` a prompt is prefilled once: its other samples copy its cache columns
        from a slot that holds them (or keep them, when the slot held that prompt already) and draw
        their first token from its saved hidden state. Returns the number of prefilled rows."""
        s = self.state
        assert s is not None
        if share:
            moving = {b for b, p in assign if self._cached[b] != p}  # their columns get overwritten
            source = {p: b for b, p in enumerate(self._cached) if p >= 0 and b not in moving}
            fill: list[tuple[int, int]] = []  # (slot, prompt) to prefill: a prompt no kept slot holds
            for b, p in assign:
                if p not in source:
                    source[p] = b
                    fill.append((b, p))
        else:
            fill, source = list(assign), {}
        if fill:
            hidden = self.prefill([prompts[p] for _, p in fill], [b for b, _ in fill], pad_id)
            for r, (_, p) in enumerate(fill):
                held[p] = hidden[r]
        # sources keep their prompt or were just prefilled: none is a copy target. One gather per
        # layer copies every target's columns up to the longest of these prompts (the columns past a
        # slot's own prompt are masked until its decode overwrites them).
        copy = [(source[p], b, len(prompts[p])) for b, p in assign if share and self._cached[b] != p and source[p] != b]
        if copy:
            src_i = torch.tensor([c[0] for c in copy], device=self.device)
            dst_i = torch.tensor([c[1] for c in copy], device=self.device)
            n = max(c[2] for c in copy)
            for kc, vc in zip(s.k, s.v):
                kc[dst_i, :, :n] = kc[src_i, :, :n]
                vc[dst_i, :, :n] = vc[src_i, :, :n]
        for b, p in assign:
            self._cached[b] = p
        slots = torch.tensor([b for b, _ in assign], device=self.device)
        h = torch.stack([held[p] for _, p in assign])
        tok = sample_next(self.lm_head(h).float(), params.temperature, params.top_k, params.top_p, self.options.search)
        s.out[slots] = pad_id
        s.out[slots, 0] = tok
        s.cur[slots, 0] = tok
        s.pos[slots] = torch.tensor([len(prompts[p]) for _, p in assign], device=self.device)
        s.step[slots] = 1
        s.limit[slots] = torch.tensor(limits, device=self.device)
        s.finished[slots] = (tok[:, None] == stops[None, :]).any(-1) | (s.limit[slots] <= 1)
        return len(fill)

    def run(self, *args, **kwargs) -> list[list[int]]:
        """`stream` drained: each sequence's new tokens, through its stop token."""
        return drain(self.stream(*args, **kwargs))

    @torch.no_grad()
    def stream(
        self,
        prompts: list[list[int]],
        seqs: list[int],
        params: SamplingParams,
        stops: list[int],
        pad_id: int,
        seed: int,
        slots: int,
        *,
        refill: bool = True,
        share: bool = True,
        limits: list[int] | None = None,
        use_graph: bool | None = None,
    ) -> Generator[int, None, list[list[int]]]:
        """Decode one sequence per entry of `seqs` (a prompt index each; samples of one prompt
        adjacent) through `slots` cache rows. With `refill` a slot whose sequence stopped takes the
        next one at the following check (continuous batching); without, all slots wait for the
        slowest (a static batch, as before). `share`: prefill each prompt once (see `_start`).
        `limits`: a token budget per sequence (<= max_new_tokens; benchmarks use it to end rows
        at drawn lengths). Yields how many sequences finished at each check that finished some;
returns each sequence's new tokens, through its stop token. Samples
        depend on (seed, slots, refill, share, the order of `seqs`), not on history."""
        self._prepare()
        if use_graph is None:
            use_graph = self.device.type == "cuda"
        max_new = params.max_new_tokens
        limits = [max(1, min(max_new, x)) for x in limits] if limits is not None else [max_new] * len(seqs)
        longest = max(len(prompts[p]) for p in seqs) if seqs else 1
        capacity = _round_up(_round_up(longest, PROMPT_ALIGN) + max_new, BUCKET)
        if self.options.flex:  # inductor's CPU flex kernel fails to build for a one-block cache (torch 2.13)
            capacity = max(capacity, 2 * BUCKET)
        s = self.state
        if s is None or s.batch != slots or s.capacity < capacity or s.max_new != max_new:
            s = None
            self.release()  # before allocating: the old cache must not coexist with the new one
            s = self.state = _State(self, slots, capacity, max_new)
        s.finished.fill_(True)
        s.pos.zero_()
        self._cached = [-1] * slots  # the prompt whose K/V each slot's first columns hold
        stops_t = torch.tensor(stops or [-1], dtype=torch.long, device=self.device)
        bucket_of = lambda idx: min(s.capacity, _round_up(idx + 1, BUCKET))  # noqa: E731
        if self.options.flex:  # one graph over the whole cache: the block mask bounds each slot's reads
            bucket_of = lambda idx: s.capacity  # noqa: E731
        t0 = _now(self.device)
        graphs = {}
        if use_graph:  # captured before seeding, so warm-ups never shift the sampling RNG stream
            key = (params.temperature, params.top_k, params.top_p, pad_id, tuple(stops), self.lora)
            shortest = min(len(prompts[p]) for p in seqs) if seqs else 1
            for kv_len in sorted({bucket_of(c) for c in range(shortest, capacity, BUCKET)} | {s.capacity}):
                if (kv_len, *key) not in s.graphs:  # keeps the stop-id tensor the graph reads alive
                    s.graphs[(kv_len, *key)] = (self._capture(kv_len, params, stops_t, pad_id), stops_t)
                graphs[kv_len] = s.graphs[(kv_len, *key)][0]
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        torch.manual_seed(seed)
        t1 = _now(self.device)
        results: list[list[int] | None] = [None] * len(seqs)
        left: dict[int, int] = {}  # prompt -> samples not started yet (its saved hidden state is dropped at 0)
        for p in seqs:
            left[p] = left.get(p, 0) + 1
        held: dict[int, torch.Tensor] = {}
        owner = [-1] * slots  # the sequence each slot decodes (-1: idle)
        bound = [0] * slots  # an upper bound of each slot's `pos` (sets the attention bucket)
        deadline = [0] * slots  # the decode step by which the slot's sequence has surely ended
        queue, steps, prefill_s, useful, prefilled = 0, 0, 0.0, 0, 0

        def start(free: list[int]) -> None:
            nonlocal queue, prefill_s, prefilled
            take = seqs[queue : queue + len(free)]
            if not take:
                return
            avail, wanted, assign = sorted(free), set(take), []
            for p in take:  # a slot that holds the prompt's cache already, else one whose cache is not wanted
                b = next((b for b in avail if self._cached[b] == p), None)
                if b is None:
                    b = next((b for b in avail if self._cached[b] not in wanted), avail[0])
                avail.remove(b)
                assign.append((b, p))
            ta = _now(self.device)
            budget = limits[queue : queue + len(take)]
            prefilled += self._start(assign, budget, prompts, held, params, stops_t, pad_id, share)
            prefill_s += _now(self.device) - ta
            for j, (b, p) in enumerate(assign):
                owner[b], bound[b], deadline[b] = queue + j, len(prompts[p]), steps + budget[j] - 1
                left[p] -= 1
                if not left[p]:
                    held.pop(p, None)
            queue += len(take)

        start(list(range(slots)))
        while any(o >= 0 for o in owner):
            kv_len = bucket_of(max(x for x, o in zip(bound, owner) if o >= 0))  # live slots only
            if use_graph:
                graphs[kv_len].replay()
            else:
                self._call_step(kv_len, params, stops_t, pad_id)
            steps += 1
            bound = [min(x + 1, s.capacity - 1) if o >= 0 else x for x, o in zip(bound, owner)]
            if steps % CHECK_EVERY and steps < min(d for d, o in zip(deadline, owner) if o >= 0):
                continue
            fin = s.finished.tolist()
            done = [b for b in range(slots) if fin[b] and owner[b] >= 0]
            if done:
                lens = s.step[done].tolist()
                rows = s.out[done].tolist()
                for b, n, row in zip(done, lens, rows):
                    results[owner[b]] = row[:n]
                    useful += n
                    owner[b] = -1
                yield len(done)
            bound = s.pos.tolist()
            free = [b for b in range(slots) if owner[b] < 0]
            if queue < len(seqs) and free and (refill or len(free) == slots):
                start(free)
        t2 = _now(self.device)
        self.last_timing = {
            "capture_s": t1 - t0,
            "prefill_s": prefill_s,
            "decode_s": t2 - t1 - prefill_s,
            "decode_steps": steps,
            "useful_tokens": useful,
            "slot_steps": steps * slots,
            "prefilled_prompts": prefilled,
        }
        return results  # type: ignore[return-value]

    def generate_ids(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        stops: list[int],
        pad_id: int,
        seed: int,
        use_graph: bool | None = None,
        rows: int | None = None,
    ) -> list[list[int]]:
        """One static batch: `max_new_tokens` new tokens per prompt (`pad_id` after a row's stop
        token). `rows` (>= len(prompts)) is the number of slots: a short last batch decodes at the
        same shape, so its graphs are reused and its samples depend only on (seed, rows)."""
        n = len(prompts)
        out = self.run(prompts, list(range(n)), params, stops, pad_id, seed, max(rows or n, n), use_graph=use_graph)
        return [r + [pad_id] * (params.max_new_tokens - len(r)) for r in out]

    def release(self) -> None:
        """Free the cache and captured graphs (the next call allocates them again)."""
        self.state = None
        self.pool = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def engine_for(model, options: EngineOptions | None = None) -> FastEngine:
    """The model's fast engine, created on first use and kept on the model (graphs persist).
    The engine holds the model's modules but not the model, so dropping the model frees both.
    `options`: the engine is rebuilt when they differ from its own; None takes the engine the model
    has (a plain one on first use: jobs never pass options, benchmarks and tests do)."""
    eng = model.__dict__.get("_copsd_fast_engine")
    if eng is not None and options is not None and eng.options != options:
        eng.release()
        eng = None
    if eng is None:
        eng = FastEngine(model, options)
        model.__dict__["_copsd_fast_engine"] = eng
    return eng


def generate_ids(
    model,
    prompts: list[list[int]],
    params: SamplingParams,
    stops: list[int],
    pad_id: int,
    seed: int,
    rows: int | None = None,
) -> list[list[int]]:
    return engine_for(model).generate_ids(prompts, params, stops, pad_id, seed, rows=rows)
