"""Types shared by rollout engines."""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TypeVar

R = TypeVar("R")


@dataclass(frozen=True)
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    max_new_tokens: int = 1024


@dataclass
class Rollout:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int]  # generated tokens, up to and including the stop token if one was hit
    text: str  # decoded generated tokens without special tokens
    finished: bool  # hit a stop token within the budget (False = truncated)


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """EOS ids from the tokenizer, the chat template's end-of-turn and the model's generation config."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    for tok in ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>"):
        if tok in vocab:
            ids.add(int(vocab[tok]))
    gc = getattr(model, "generation_config", None)
    eos = getattr(gc, "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(int(e) for e in eos)
    return sorted(ids)


def drain(stream: Generator[object, None, R]) -> R:
    """Run a progress stream (a generator that yields progress and returns its result) to its end."""
    while True:
        try:
            next(stream)
        except StopIteration as stop:
            return stop.value


def base_model(model):
    """The model under a peft wrapper (or the model itself): where its config and layers live."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def lazy_attributes(package: str, home: dict[str, str]) -> Callable[[str], object]:
    """A package's `__getattr__` that loads on first use a name of `home` (name -> the submodule
    that defines it) or a submodule itself, so importing the package loads nothing heavy."""

    def attribute(name: str) -> object:
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        if importlib.util.find_spec(f"{package}.{name}") is not None:
            return importlib.import_module(f"{package}.{name}")
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return attribute
