"""Loading models and tokenizers: a Hub id, a local directory, or a `builtin:` model built offline.

Every failure becomes a one-line `ModelLoadError` that says what to do (a missing path, an
unreachable Hub, a repo without weights), never a transformers traceback.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from copsd.errors import ModelLoadError


def resolve_device(device: str | None = None) -> torch.device:
    if device and device != "auto":
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@cache
def cpu_bf16_native() -> bool:
    """Whether this CPU computes bfloat16 natively (x86 AVX512-BF16 or AMX-BF16, Arm BF16), where
    real models decode 2.5-3.7x faster in bf16 (docs/benchmarks.md); elsewhere torch emulates bf16, slowly."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:  # not Linux: no cheap check; fp32 stays the safe choice
        text = ""
    flags: set[str] = set()
    for line in text.splitlines():
        if line.startswith(("flags", "Features")):
            flags |= set(line.partition(":")[2].split())
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on GPUs that support it, fp32 on CPU. An explicit `bfloat16` is honoured on a
    CPU with native bf16 (`cpu_bf16_native`: AVX512-BF16/AMX) and computes in fp32 on other CPUs;
    `float16` always computes in fp32 on a CPU (half matmuls are slow or missing there)."""
    if dtype == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if device.type == "cpu" and (dtype == "float16" or (dtype == "bfloat16" and not cpu_bf16_native())):
        return torch.float32  # a GPU spec run on such a CPU (tests, smoke runs) computes in fp32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    source: str  # the directory it was loaded from


def _looks_like_path(name: str) -> bool:
    """A Hub id is `org/name`; anything else with a slash, or that exists here, is a path."""
    return name.startswith((".", "/", "~")) or name.strip("/").count("/") > 1 or Path(name).exists()


def resolve_model_source(name: str) -> str:
    """Map a spec's `model` to something `from_pretrained` accepts (building builtins on demand)."""
    if name.startswith("builtin:"):
        from copsd.models.builtin import build_builtin

        return str(build_builtin(name.split(":", 1)[1]))
    if _looks_like_path(name):
        p = Path(name).expanduser()
        if not p.exists():
            raise ModelLoadError(
                f"model path '{name}' does not exist; give a local model directory or a Hub id like Qwen/Qwen3-1.7B"
            )
        if p.is_file() and p.suffix == ".gguf":  # real weights from llama.cpp's format, converted once
            from copsd.models.gguf import import_gguf

            return str(import_gguf(p))
        if not (p / "config.json").is_file():
            raise ModelLoadError(
                f"model path '{name}' has no config.json; point it at a saved Hugging Face model directory"
            )
        return str(p)
    return name


REMOTE_CODE = (
    "copsd never runs Python code shipped with a model (trust_remote_code=False: that code could do anything "
    "on this machine); use a model whose architecture transformers includes (Qwen3, Qwen2, Llama, ...)"
)


def _hub_error(name: str, exc: Exception) -> ModelLoadError:
    text = str(exc)
    if "trust_remote_code" in text or "custom code" in text:  # before the offline guess: it is not the Hub
        return ModelLoadError(
            f"model '{name}' needs its own Python code to load (an auto_map in its config); {REMOTE_CODE}"
        )
    offline = os.environ.get("HF_HUB_OFFLINE") == "1" or any(
        s in text for s in ("connect", "offline", "resolve", "Connection", "Max retries", "Network")
    )
    if offline:
        return ModelLoadError(
            f"cannot load model '{name}': the Hugging Face Hub is unreachable and it is not in the local cache; "
            f"download it where the Hub is reachable (huggingface-cli download {name}) or give a local directory"
        )
    if "is not a local folder and is not a valid model identifier" in text or "404" in text:
        return ModelLoadError(
            f"model '{name}' is neither a local directory nor a model on the Hugging Face Hub; check the spelling"
        )
    return ModelLoadError(f"cannot load model '{name}': {type(exc).__name__}: {text.splitlines()[0][:300]}")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    source = resolve_model_source(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"  # batched generation pads on the left (GGUF tokenizers come right-padded)
    return tok


def load_model(name: str, *, dtype: str = "auto", device: str | None = None) -> LoadedModel:
    """Model in eval mode on `device`, with its tokenizer (left padding, a pad token)."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # our own progress bars; one per model load is noise
    source = resolve_model_source(name)
    tok = load_tokenizer(name)
    dev = resolve_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=resolve_dtype(dtype, dev), trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise _hub_error(name, exc) from None
    model.to(dev)
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, source=source)
