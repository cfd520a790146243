"""The fast engine: a `Decoder` over the model's modules, a `SlotCache`, captured decode graphs
and the `Scheduler`, kept on the model between calls (`engine_for`)."""

from __future__ import annotations

import inspect
import weakref
from collections.abc import Generator
from typing import Any

import torch

from copsd.rollout.fast import layout as cache_layout
from copsd.rollout.fast.cache import SlotCache, capture
from copsd.rollout.fast.model import Decoder
from copsd.rollout.fast.options import EngineOptions
from copsd.rollout.fast.scheduler import Scheduler, now
from copsd.rollout.fast.support import unsupported_reason
from copsd.rollout.types import SamplingParams, base_model, drain


class FastEngine:
    """Static-cache decoder over a (PEFT-wrapped) Llama/Qwen causal LM; see the package docstring."""

    def __init__(self, model, options: EngineOptions | None = None):
        self.options = options or EngineOptions()
        reason = unsupported_reason(model)
        if reason:
            raise ValueError(f"fast engine: {reason}")
        base = base_model(model)
        self._base = weakref.ref(base)  # not a strong reference: the model owns the engine
        self.config = base.config
        self.inner = base.model
        self.layers = list(self.inner.layers)
        self._flex_kw: dict = {}
        if self.options.flex:  # decoding needs no backward blocks (torch >= 2.6 lets us skip building them)
            from torch.nn.attention.flex_attention import BlockMask

            if "compute_q_blocks" in inspect.signature(BlockMask.from_kv_blocks).parameters:
                self._flex_kw = {"compute_q_blocks": False}
        self._build_decoder()
        # the step every decode runs (eagerly, or once per graph capture); compiled with aten's own
        # random ops, so it draws the eager step's random numbers for a seed (in fp32 the same
        # samples, tested; in bf16 inductor's fused kernels round differently). The function, not a
        # bound method: the engine must not reference itself, or it would outlive its model until a
        # garbage collection.
        self._step = None
        self._dynamo_limits: dict = {}
        if self.options.compile or self.options.flex:
            self._step = torch.compile(Decoder.decode_one_token, dynamic=False, options={"fallback_random": True})
            # one compiled graph per (cache bucket, batch shape): more than dynamo's default 8 per
            # function, and past the limit an error, not a silent fall back to an eager step (keys
            # an older torch lacks are left out)
            limits = {"recompile_limit": 256, "accumulated_recompile_limit": 4096, "fail_on_recompile_limit_hit": True}
            self._dynamo_limits = {k: v for k, v in limits.items() if hasattr(torch._dynamo.config, k)}
        self.state: SlotCache | None = None
        self.pool: Any = None  # the CUDA-graph memory pool, shared by every captured graph
        self.last_timing: dict[str, float] = {}

    def __reduce__(self):
        """A copied or pickled model gets no engine (it makes its own on first use)."""
        return (type(None), ())

    @property
    def device(self) -> torch.device:
        return self.decoder.device

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.dtype

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
        base = self._base()
        assert base is not None, "the engine outlived its model"
        return base.get_output_embeddings()

    def _build_decoder(self) -> None:
        self.decoder = Decoder(self.config, self.inner, self.layers, self._head(), self.options, self._flex_kw)
        self._built_for = self._fingerprint()  # after: fusing moves the base weights

    def _lora_active(self) -> bool:
        """Adapters apply unless there are none, they are disabled, or merged into the base weights."""
        loras = [m for m in self._modules() if hasattr(m, "lora_A")]
        return bool(loras) and not any(m.disable_adapters or getattr(m, "merged", False) for m in loras)

    def _prepare(self) -> None:
        """Per call: rebuild if PEFT replaced modules, decide on LoRA, refresh its shadow copies."""
        if self._fingerprint() != self._built_for:  # PEFT re-wrapped, adapters replaced, model moved
            self.release()
            self._build_decoder()
        self.decoder.lora = self._lora_active()
        if self.decoder.lora:
            self.decoder.sync_lora()

    def _call_step(self, kv_len: int, params: SamplingParams, stops, pad_id: int) -> None:
        assert self.state is not None
        if self._step is None:
            self.decoder.decode_one_token(self.state, kv_len, params, stops, pad_id)
            return
        with torch._dynamo.config.patch(self._dynamo_limits):
            self._step(self.decoder, self.state, kv_len, params, stops, pad_id)

    def _cache_for(self, slots: int, cap: int, max_new: int) -> SlotCache:
        """The cache of this call: the last one when it fits, else a new one (graphs go with it)."""
        s = self.state
        if s is None or not s.fits(slots, cap, max_new):
            self.release()  # before allocating: the old cache must not coexist with the new one
            d = self.decoder
            s = self.state = SlotCache(slots, cap, max_new, len(self.layers), d.n_kv, d.head_dim, d.device, d.dtype)
        s.reset()
        return s

    def _graphs(self, s: SlotCache, shortest: int, cap: int, params, stops: list[int], stops_t, pad_id: int) -> dict:
        """A captured graph per bucket this call may decode at (kept on the cache for later calls)."""
        key = (params.temperature, params.top_k, params.top_p, pad_id, tuple(stops), self.decoder.lora)
        graphs = {}
        for kv_len in cache_layout.graph_kv_lens(shortest, cap, s.capacity, self.options.flex):
            if (kv_len, *key) not in s.graphs:  # keeps the stop-id tensor the graph reads alive
                step = lambda n=kv_len: self._call_step(n, params, stops_t, pad_id)  # noqa: E731
                g, self.pool = capture(s, kv_len, step, self.device, self.pool)
                s.graphs[(kv_len, *key)] = (g, stops_t)
            graphs[kv_len] = s.graphs[(kv_len, *key)][0]
        return graphs

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
        slowest (a static batch, as before). `share`: prefill each prompt once (`Scheduler`).
        `limits`: a token budget per sequence (<= max_new_tokens; benchmarks use it to end rows
        at drawn lengths). Yields how many sequences finished at each check that finished some;
        returns each sequence's new tokens, through its stop token. Samples depend on (seed,
        slots, refill, share, the order of `seqs`), not on history."""
        self._prepare()
        if use_graph is None:
            use_graph = self.device.type == "cuda"
        max_new = params.max_new_tokens
        limits = [max(1, min(max_new, x)) for x in limits] if limits is not None else [max_new] * len(seqs)
        longest = max(len(prompts[p]) for p in seqs) if seqs else 1
        cap = cache_layout.capacity(longest, max_new, self.options.flex)
        s = self._cache_for(slots, cap, max_new)
        stops_t = torch.tensor(stops or [-1], dtype=torch.long, device=self.device)
        t0 = now(self.device)
        graphs = {}
        if use_graph:  # captured before seeding, so warm-ups never shift the sampling RNG stream
            shortest = min(len(prompts[p]) for p in seqs) if seqs else 1
            graphs = self._graphs(s, shortest, cap, params, stops, stops_t, pad_id)
        if self.device.type == "cuda":
            torch.cuda.manual_seed(seed)
        torch.manual_seed(seed)
        t1 = now(self.device)
        sched = Scheduler(self.decoder, s, prompts, seqs, limits, params, stops_t, pad_id, refill=refill, share=share)

        def step(kv_len: int) -> None:
            if use_graph:
                graphs[kv_len].replay()
            else:
                self._call_step(kv_len, params, stops_t, pad_id)

        results = yield from sched.decode(step)
        t2 = now(self.device)
        self.last_timing = {
            "capture_s": t1 - t0,
            "prefill_s": sched.prefill_s,
            "decode_s": t2 - t1 - sched.prefill_s,
            **sched.timing(),
        }
        return results

    def generate_ids(
        self,
        prompts: list[list[int]],
        params: SamplingParams,
        stops: list[int],
        pad_id: int,
        seed: int,
        rows: int | None = None,
        *,
        use_graph: bool | None = None,
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


def generate_ids(model, *args, **kwargs) -> list[list[int]]:
    """`hf.generate_ids`'s interface (model, prompts, params, stops, pad_id, seed, rows=None): one
    static batch through the model's engine (`FastEngine.generate_ids`)."""
    return engine_for(model).generate_ids(*args, **kwargs)
