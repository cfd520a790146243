"""Random-weight Qwen3 models of the real shapes (no download), the device's measured peak bandwidth,
and what every speed measurement shares (its options, its memory readings, a failed row)."""

from __future__ import annotations

import gc
import random
import time
import traceback
from typing import Any

import torch

from copsd.models.shapes import QWEN3, QWEN3_VOCAB, ModelShape
from copsd.rollout import base_model

# the Qwen3 shapes benchmarks run (copsd.models.shapes), and a tiny one for CPU tests
SHAPES: dict[str, ModelShape] = {
    **{name: QWEN3[name] for name in ("qwen3-1.7b", "qwen3-4b", "qwen3-8b")},
    "tiny": ModelShape(hidden=128, intermediate=384, layers=2, heads=4, kv_heads=2, head_dim=32, vocab=4096, tied=True),
}


def random_model(shape: str, device: torch.device, dtype: torch.dtype):
    """A Qwen3ForCausalLM of `shape` with random weights, built directly on `device`."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    kw: dict[str, Any] = dict(  # Qwen3's published config besides the shape
        rope_theta=1_000_000.0,
        max_position_embeddings=40960,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=151645,
        pad_token_id=151643,
    )
    kw.update(SHAPES[shape].config())
    if kw["vocab_size"] < QWEN3_VOCAB:  # the tiny shape: special tokens at the end of its vocabulary
        kw.update(eos_token_id=kw["vocab_size"] - 2, pad_token_id=kw["vocab_size"] - 1)
    config = Qwen3Config(**kw)
    gc.collect()  # free an earlier benchmark's model before allocating the next one
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.manual_seed(0)
    with torch.device(device):
        model = Qwen3ForCausalLM._from_config(config, dtype=dtype)
    return model.eval()


def random_prompts(batch: int, prompt_len: int, vocab: int, seed: int) -> list[list[int]]:
    """Random token prompts, lengths spread over [prompt_len/2, prompt_len] (left padding is exercised)."""
    rng = random.Random(seed)
    return [
        [rng.randrange(1000, vocab - 1000) for _ in range(rng.randint(prompt_len // 2, prompt_len))]
        for _ in range(batch)
    ]


def with_lora(model, r: int = 64, alpha: int = 128):
    """PEFT LoRA on every projection (PAPER.md), B non-zero so the adapters do real work."""
    from peft import LoraConfig, get_peft_model

    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, task_type="CAUSAL_LM"))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 1e-3)
    return model.eval()


def decode_weight_bytes(model, dtype: torch.dtype) -> int:
    """Weight bytes one decode step reads: every weight once, LoRA at the model dtype (the fast
    engine's shadow copies), the input embedding only where it is also the LM head (tied)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    base = base_model(model)
    emb, head = base.get_input_embeddings().weight, base.get_output_embeddings().weight
    total = 0
    for name, p in model.named_parameters():  # a tied embedding is listed once
        if p is emb and emb.data_ptr() != head.data_ptr():
            continue  # untied: decode looks up B rows, not the whole table
        total += p.numel() * (itemsize if "lora_" in name else p.element_size())
    return total


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    itemsize = torch.empty((), dtype=dtype).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * config.head_dim * itemsize


def measured_peak_bandwidth(device: torch.device) -> float | None:
    """Bytes/s of a large device-to-device copy (read + write), the practical peak; None on CPU."""
    if device.type != "cuda":
        return None
    x = torch.empty(2 * 2**30, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize(device)
    bw = 2 * x.numel() * 10 / (time.perf_counter() - t0)
    del x, y
    torch.cuda.empty_cache()
    return bw


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


DTYPES = ("bfloat16", "float16", "float32")


def check_options(device: str | None, shape: str, dtype: str) -> str:
    """Checks the options every speed measurement shares; returns the device to run on."""
    from copsd.errors import CopsdError

    if shape not in SHAPES:
        raise CopsdError(f"--shape: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if dtype not in DTYPES:
        raise CopsdError(f"--dtype: unknown dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CopsdError("--device cuda: no CUDA device is visible; use --device cpu (with --shape tiny)")
    return dev


def positive_ints(csv: str, option: str) -> list[int]:
    """'32,128' -> [32, 128]; anything else is a one-line error naming the option."""
    from copsd.errors import CopsdError

    try:
        values = [int(x) for x in csv.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise CopsdError(f"{option} takes comma-separated positive integers, got {csv!r}")
    return values


def failed_row(row: dict, name: str, exc: Exception) -> dict:
    """What a benchmark row records when its engine fails: running out of memory, for any engine;
    any other error only for a lever engine (`fast+…`, e.g. torch.compile without a compiler), so
    the run goes on to the next row. Anything else is re-raised: plain fast, static or hf failing
    is a failed run."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        row["error"] = "out of memory"
    elif "+" in name:
        first = str(exc).splitlines()[0] if str(exc) else ""
        row["error"] = f"{type(exc).__name__}: {first}"[:300]
        row["traceback"] = "".join(traceback.format_exception(exc))[-4000:]
    else:
        raise exc
    return row
