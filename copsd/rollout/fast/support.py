"""Which models the fast engine can run: `unsupported_reason` says why not, in one line."""

from __future__ import annotations

from copsd.rollout.types import base_model

SUPPORTED_MODEL_TYPES = ("qwen3", "qwen2", "llama")


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
    if (act := getattr(cfg, "hidden_act", "silu")) != "silu":
        return f"activation {act!r} is not silu"
    for m in model.modules():
        if getattr(m, "use_dora", None) and any(m.use_dora.values()):
            return "DoRA adapters are not supported"
        if hasattr(m, "lora_A") and len(getattr(m, "active_adapters", ())) > 1:
            return "more than one active LoRA adapter"
    return None
