"""Model shapes without weights: `ModelShape` (the numbers memory and cost estimates and the speed
benchmarks' random-weight models are made of), the published shapes of the models the shipped
specs name, and `model_shape`, which finds a spec's model's shape without loading it.

The one place the Qwen3 shapes are stated: `copsd.training.memory` estimates from them,
`copsd.training.cost` names them (`short_name`, the keys of resources/throughput.yaml) and
`copsd.speed.shapes` builds its random-weight models from them (`ModelShape.config`)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ModelShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool  # the LM head is the input embedding

    @property
    def q(self) -> int:
        return self.heads * self.head_dim

    @property
    def kv(self) -> int:
        return self.kv_heads * self.head_dim

    def params(self) -> int:
        """Parameters of the decoder (norms included) and the embedding (+ the LM head if untied)."""
        H, inter = self.hidden, self.intermediate
        attn = H * self.q + 2 * H * self.kv + self.q * H  # q, k, v, o projections
        norms = 2 * H + 2 * self.head_dim  # input/post-attention norms, q_norm, k_norm
        per_layer = attn + 3 * H * inter + norms  # gate, up, down
        return self.layers * per_layer + H + self.vocab * H * (1 if self.tied else 2)

    def projections(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each projection LoRA can target."""
        H, inter, q, kv = self.hidden, self.intermediate, self.q, self.kv
        return {
            "q_proj": (H, q),
            "k_proj": (H, kv),
            "v_proj": (H, kv),
            "o_proj": (q, H),
            "gate_proj": (H, inter),
            "up_proj": (H, inter),
            "down_proj": (inter, H),
        }

    def lora_params(self, r: int, targets: tuple[str, ...]) -> int:
        """A (r x in) + B (out x r) per targeted projection per layer."""
        proj = self.projections()
        return self.layers * sum(r * (proj[t][0] + proj[t][1]) for t in targets if t in proj)

    def config(self) -> dict[str, Any]:
        """The transformers config fields of this shape (the inverse of `shape_from_config`)."""
        return dict(
            hidden_size=self.hidden,
            intermediate_size=self.intermediate,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            head_dim=self.head_dim,
            vocab_size=self.vocab,
            tie_word_embeddings=self.tied,
        )


QWEN3_VOCAB = 151936


def _qwen3(hidden: int, intermediate: int, layers: int, heads: int, tied: bool) -> ModelShape:
    return ModelShape(hidden, intermediate, layers, heads, 8, 128, QWEN3_VOCAB, tied)  # 8 kv heads of 128


# Shapes of the models the shipped specs name, so that `sweep plan --estimate` needs neither the
# network nor a download: the published config.json of each (Qwen3: vocabulary 151,936, 8 kv heads
# of dimension 128; SmolLM2-135M-Instruct: HuggingFaceTB's config, which builtin:smollm2-135m-instruct
# is converted to) and the recipes of the tiny builtins (copsd/models/builtin.py; their vocabulary
# is the trained tokenizer's, about the recipe's 1,024).
KNOWN_SHAPES: dict[str, ModelShape] = {
    "Qwen/Qwen3-0.6B": _qwen3(1024, 3072, 28, 16, True),
    "Qwen/Qwen3-1.7B": _qwen3(2048, 6144, 28, 16, True),
    "Qwen/Qwen3-4B": _qwen3(2560, 9728, 36, 32, True),
    "Qwen/Qwen3-8B": _qwen3(4096, 12288, 36, 32, False),
    "Qwen/Qwen3-14B": _qwen3(5120, 17408, 40, 40, False),
    "builtin:smollm2-135m-instruct": ModelShape(576, 1536, 30, 9, 3, 64, 49152, True),
}


def short_name(model: str) -> str:
    """'Qwen/Qwen3-1.7B' -> 'qwen3-1.7b': how benchmarks and resources/throughput.yaml name a shape."""
    return model.rsplit("/", 1)[-1].lower()


QWEN3 = {short_name(k): v for k, v in KNOWN_SHAPES.items() if k.startswith("Qwen/Qwen3-")}


def _builtin_recipes() -> dict[str, ModelShape]:
    from copsd.models.builtin import TINY_QWEN3, TINY_QWEN3_REALVOCAB

    recipes: tuple[dict[str, Any], ...] = (TINY_QWEN3, TINY_QWEN3_REALVOCAB)
    return {f"builtin:{r['kind']}": shape_from_config({**r, "tie_word_embeddings": True}) for r in recipes}


def shape_from_config(cfg: Any) -> ModelShape:
    """From a transformers config object or a config.json dict (a multimodal one's text_config)."""

    def get(key: str, default: Any = None) -> Any:
        return cfg.get(key, default) if isinstance(cfg, dict) else getattr(cfg, key, default)

    text = get("text_config")
    if text is not None:
        return shape_from_config(text)
    heads = get("num_attention_heads")
    return ModelShape(
        hidden=get("hidden_size"),
        intermediate=get("intermediate_size"),
        layers=get("num_hidden_layers"),
        heads=heads,
        kv_heads=get("num_key_value_heads") or heads,
        head_dim=get("head_dim") or get("hidden_size") // heads,
        vocab=get("vocab_size"),
        tied=bool(get("tie_word_embeddings", False)),  # absent: untied (Qwen3's and Llama's default)
    )


def _config_file(model: str) -> Path | None:
    """config.json of a local model directory, or of a Hub model already in the local HF cache."""
    p = Path(model).expanduser()
    if p.is_dir():
        return p / "config.json" if (p / "config.json").is_file() else None
    if model.startswith(("builtin:", ".", "/", "~")) or model.count("/") != 1:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(model, "config.json")
    except Exception:  # noqa: BLE001 - no cache, a malformed id: the shape is simply unknown here
        return None
    return Path(hit) if isinstance(hit, str) else None


@lru_cache(maxsize=64)
def model_shape(model: str) -> ModelShape | None:
    """The shape of a spec's `model` without loading weights or using the network: its config.json
    (a local directory, or a Hub model in the local cache), else the table above, else (unless
    HF_HUB_OFFLINE) the Hub's config through transformers' AutoConfig; None if still unknown (a
    plugin's builtin, an unreachable Hub)."""
    path = _config_file(model)
    if path is not None:
        try:
            return shape_from_config(json.loads(path.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):  # not JSON, or missing fields: try transformers'
            try:
                from transformers import AutoConfig

                return shape_from_config(AutoConfig.from_pretrained(str(path.parent), trust_remote_code=False))
            except Exception:  # noqa: BLE001 - fall back to the table
                pass
    if model in KNOWN_SHAPES:
        return KNOWN_SHAPES[model]
    if model.startswith("builtin:"):
        return _builtin_recipes().get(model)
    if model.count("/") == 1 and not Path(model).exists() and not _offline():
        try:  # a Hub model neither cached nor in the table: its config alone (a few kB)
            from transformers import AutoConfig

            return shape_from_config(AutoConfig.from_pretrained(model, trust_remote_code=False))
        except Exception:  # noqa: BLE001 - unreachable, gated, unknown: the shape stays unknown
            return None
    return None


def _offline() -> bool:
    return any(os.environ.get(k) == "1" for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
