"""The fast engine's model math: the decoder forward over the model's own modules (embeddings,
norms, rotary table and base weights read in place), `prefill` of whole prompts into cache slots
and `decode_one_token`, one token per slot.

Grouped-query attention folds the query-head group into the query-length axis, so the cache is
read once per step and never repeated per head. Linear layers are `Projections` (LoRA from shadow
copies; with `fuse` one GEMM per group); sampling is `sample_next` (no host sync)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from copsd.rollout.fast.cache import SlotCache, block_mask
from copsd.rollout.fast.layout import prompt_width
from copsd.rollout.fast.options import EngineOptions
from copsd.rollout.projections import Projections
from copsd.rollout.sampling import sample_next
from copsd.rollout.types import SamplingParams


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
    return torch.cat((-x2, x1), dim=-1)


def _flex_attention(*args, **kwargs) -> torch.Tensor:
    from torch.nn.attention.flex_attention import flex_attention

    return flex_attention(*args, **kwargs)


def _rms(norm, x: torch.Tensor) -> torch.Tensor:
    return F.rms_norm(x, (x.shape[-1],), norm.weight, norm.variance_epsilon)


def projections_of(layer, dtype: torch.dtype, fuse: bool) -> dict[str, Projections]:
    a, m = layer.self_attn, layer.mlp
    return {
        "qkv": Projections([a.q_proj, a.k_proj, a.v_proj], dtype, fuse),
        "o": Projections([a.o_proj], dtype),
        "gate_up": Projections([m.gate_proj, m.up_proj], dtype, fuse),
        "down": Projections([m.down_proj], dtype),
    }


class Decoder:
    """A Llama/Qwen decoder's forward over its own modules, writing K/V into a `SlotCache`.
    `lora`: whether the adapters apply to this batch (set by the engine per call)."""

    def __init__(self, config, inner, layers: list, lm_head, options: EngineOptions, flex_kw: dict):
        self.inner, self.layers, self.lm_head = inner, layers, lm_head
        self.options, self.flex_kw = options, flex_kw
        self.head_dim = layers[0].self_attn.head_dim
        self.n_kv, self.n_heads = config.num_key_value_heads, config.num_attention_heads
        w = inner.embed_tokens.weight
        self.device, self.dtype = w.device, w.dtype
        self.proj = [projections_of(layer, self.dtype, options.fuse) for layer in layers]
        self.lora = False

    def sync_lora(self) -> None:
        """Refresh the adapters' shadow copies (the optimizer updates the adapters in place)."""
        with torch.no_grad():
            for group in self.proj:
                for p in group.values():
                    p.sync()

    def sample(self, h: torch.Tensor, params: SamplingParams) -> torch.Tensor:
        """The next token of each row of final hidden states `h` [B, H]."""
        logits = self.lm_head(h).float()
        return sample_next(logits, params.temperature, params.top_k, params.top_p, self.options.search)

    def _attention(self, cache: SlotCache, i: int, a, h, cos, sin, mask, kv_len: int, slots) -> torch.Tensor:
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
        kc, vc = cache.k[i], cache.v[i]
        if slots is None:
            kc[cache.rows, :, cache.pos] = k[:, :, 0].to(kc.dtype)  # each slot at its own column
            vc[cache.rows, :, cache.pos] = v[:, :, 0].to(vc.dtype)
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

    def forward(self, cache: SlotCache, ids, positions, mask, kv_len: int, slots=None, last=None) -> torch.Tensor:
        """Final-norm hidden state at position `last` of each row ([B] indices; None = the only
        one), [B, H]; writes K/V into the cache (see `_attention`)."""
        x = self.inner.embed_tokens(ids)
        cos, sin = self.inner.rotary_emb(x, positions)
        for i, layer in enumerate(self.layers):
            h = _rms(layer.input_layernorm, x)
            x = x + self._attention(cache, i, layer.self_attn, h, cos, sin, mask, kv_len, slots)
            gate, up = self.proj[i]["gate_up"](_rms(layer.post_attention_layernorm, x), self.lora)
            x = x + self.proj[i]["down"](F.silu(gate) * up, self.lora)[0]
        x = x[:, -1] if last is None else x[torch.arange(x.shape[0], device=x.device), last]
        return _rms(self.inner.norm, x)

    def _additive(self, keep: torch.Tensor) -> torch.Tensor:
        return torch.zeros(keep.shape, dtype=self.dtype, device=self.device).masked_fill(~keep, float("-inf"))

    def prefill(self, cache: SlotCache, prompts: list[list[int]], slots: list[int], pad_id: int) -> torch.Tensor:
        """Run the prompts (right-padded) through the model, writing their K/V into cache columns
        [0, len) of `slots`; returns the final hidden state of each prompt's last token, [m, H]."""
        width = prompt_width(map(len, prompts))
        ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, : len(p)] = torch.tensor(p, dtype=torch.long)
        lens = torch.tensor([len(p) for p in prompts], device=self.device)
        pos = torch.arange(width, device=self.device)
        # causal, and real keys only; a padding query still sees the real tokens before it (no NaN)
        keep = (pos[None, :] <= pos[:, None])[None] & (pos[None, None, :] < lens[:, None, None])
        return self.forward(
            cache,
            ids.to(self.device),
            pos[None].expand(len(prompts), -1),
            self._additive(keep[:, None]),
            width,
            slots=torch.tensor(slots, device=self.device),
            last=lens - 1,
        )

    def decode_one_token(self, cache: SlotCache, kv_len: int, params: SamplingParams, stops, pad_id: int) -> None:
        """Feed each slot's `cur` at its `pos`, sample its next token into `out`; finished slots
        emit padding and stand still. All state advances in place (so a graph can replay it)."""
        if self.options.flex:
            mask = block_mask(cache, kv_len, self.flex_kw)
        else:
            keep = cache.arange[:kv_len][None, :] <= cache.pos[:, None]
            mask = self._additive(keep[:, None, None])
        h = self.forward(cache, cache.cur, cache.pos[:, None], mask, kv_len)
        cache.advance(self.sample(h, params), stops, pad_id)
