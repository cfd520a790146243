"""Building `builtin:testbed`: a word-level tokenizer, the pretraining corpus, and a ~1M-parameter
Qwen3 pretrained from scratch on it (a few minutes on 2 CPU cores, once per machine).

The corpus is what makes COPSD's effect visible (found by a feasibility prototype):
  - English problem+solution chats, in the evaluation and the training prompt formats;
  - English "teacher" documents whose prompt carries the problem and its reference solution as
    context (this is how a model trained from scratch learns to use privileged context);
  - sentence-level parallel English <-> LRL snippets (more for `synlo` than for `synvlo`);
  - and NO LRL problem+solution documents: the LRLs' math must come from transfer.
The chat template is ChatML WITHOUT thinking tokens (see CHAT_TEMPLATE): prompts get the plain
assistant turn, the documented fallback for templates without `<think>`.
"""

from __future__ import annotations

import json
import math
import random
import shutil
import time
from pathlib import Path

import torch

from copsd.models.cache import atomic_build, cache_dir, recipe_hash
from copsd.testbed.world import SYNTHETIC, WORLD_VERSION, english_split, translate

RECIPE = {
    "kind": "testbed",
    "version": 1,
    "n_docs": 24000,
    "shares": {"chat": 0.60, "teacher": 0.10},  # the rest: parallel snippets, split by language shares
    "hidden_size": 128,
    "intermediate_size": 512,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "num_key_value_heads": 4,
    "steps": 1000,
    "batch_size": 16,
    "block_size": 256,
    "lr": 2e-3,
    "warmup": 50,
    "seed": 0,
}
PARALLEL_SEP = "|||"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
# ChatML without thinking tokens: the assistant turn starts bare, so the student's LRL prompt ends
# exactly where the English chats it learned from do (with a `<think>` + sentence prefix, a from-
# scratch model never learns to continue after the LRL sentence it only saw in parallel text).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)


def _template_tokenizer(vocab: dict[str, int] | None = None):
    """A word-level PreTrainedTokenizerFast with the Qwen3-style chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = vocab or {t: i for i, t in enumerate(SPECIALS)}
    tk = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tk.decoder = decoders.WordPiece(prefix="##", cleanup=False)  # joins words with single spaces
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="[UNK]",
        padding_side="left",
        additional_special_tokens=["<|im_start|>"],
    )
    tok.chat_template = CHAT_TEMPLATE
    return tok


def corpus(tok, recipe: dict = RECIPE) -> list[str]:
    """The pretraining documents (strings), deterministic given the recipe."""
    from copsd.data.languages import get_language
    from copsd.prompts import student_prompt, teacher_prompt, training_student_prompt

    rng = random.Random(recipe["seed"])
    n = recipe["n_docs"]
    pool = english_split("pretrain", 6000)
    eng = get_language("eng")
    docs: list[str] = []
    n_chat = int(n * recipe["shares"]["chat"])
    n_teacher = int(n * recipe["shares"]["teacher"])
    for i in range(n_chat):
        p = rng.choice(pool)
        fmt = student_prompt if i % 2 == 0 else training_student_prompt
        docs.append(fmt(tok, p.question, "eng") + " " + p.solution + " <|im_end|>")
    for _ in range(n_teacher):
        p = rng.choice(pool)
        docs.append(
            teacher_prompt(tok, p.question, "eng", problem_en=p.question, solution_en=p.solution)
            + " "
            + p.solution
            + " <|im_end|>"
        )
    n_par = n - n_chat - n_teacher
    total_share = sum(s.parallel_share for s in SYNTHETIC.values())

    def sentences_of(p):
        parts = [s.strip() for s in p.question.split(" . ") if s.strip()]
        return [s if s.endswith("?") else s + " ." for s in parts]

    for code, lang in SYNTHETIC.items():
        for _ in range(int(n_par * lang.parallel_share / total_share)):
            p = rng.choice(pool)
            r = rng.random()
            if r < 0.15:
                en = rng.choice([eng.instruction, p.solution])
            else:
                en = rng.choice(sentences_of(p))
            lrl = translate(en, code)
            docs.append(f"{en} {PARALLEL_SEP} {lrl}" if rng.random() < 0.5 else f"{lrl} {PARALLEL_SEP} {en}")
    rng.shuffle(docs)
    return docs


def _vocabulary(tok, docs: list[str]) -> dict[str, int]:
    """Every whitespace token of the corpus and of every prompt the testbed languages can produce."""
    from copsd.data.languages import get_language
    from copsd.prompts import student_prompt, teacher_prompt, training_student_prompt

    words: set[str] = set()
    extra = []
    for code in ("eng", *SYNTHETIC):
        p = english_split("test", 1)[0]
        q = translate(p.question, code)
        extra += [
            student_prompt(tok, q, code),
            training_student_prompt(tok, q, code),
            student_prompt(tok, q, code, thinking=False),
            teacher_prompt(tok, q, code, problem_en=p.question, solution_en=p.solution),
            translate(p.solution, code),
            get_language(code).teacher.transition,
        ]
    words.update(str(i) for i in range(0, 201))
    for text in docs + extra:
        for special in SPECIALS:
            text = text.replace(special, " ")
        words.update(text.split())
    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for w in sorted(words):
        vocab.setdefault(w, len(vocab))
    return vocab


def build_testbed(out_dir: Path, recipe: dict = RECIPE, log=print) -> None:
    """Tokenizer + pretrained model into `out_dir` (HF format)."""
    from transformers import GenerationConfig

    tok, model, _ = pretrain(recipe, log=log)
    model.generation_config = GenerationConfig(
        eos_token_id=model.config.eos_token_id, pad_token_id=model.config.pad_token_id
    )
    tok.save_pretrained(out_dir)
    model.save_pretrained(out_dir)


def pretrain(recipe: dict = RECIPE, log=print, stop_after: int | None = None):
    """The recipe's tokenizer and model, pretrained for its steps (or only the first `stop_after`,
    on the same schedule: a cheap check that the recipe still starts as the shipped build did);
    returns (tokenizer, model, loss per step)."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    t0 = time.time()
    draft = _template_tokenizer()
    docs = corpus(draft, recipe)
    tok = _template_tokenizer(_vocabulary(draft, docs))
    ids: list[int] = []
    starts: list[int] = []  # training windows start at document starts, so a whole teacher
    eot = tok.convert_tokens_to_ids("<|endoftext|>")  # document (reference + answer) fits in one
    for d in docs:
        starts.append(len(ids))
        ids += tok(d, add_special_tokens=False)["input_ids"] + [eot]
    unk = sum(1 for i in ids if i == tok.unk_token_id)
    if unk:
        raise RuntimeError(f"testbed corpus has {unk} unknown tokens; the vocabulary builder missed some words")
    data = torch.tensor(ids, dtype=torch.long)
    doc_starts = torch.tensor([s for s in starts if s + recipe["block_size"] < len(ids)])
    log(f"testbed: {len(docs)} documents, {len(data)} tokens, vocabulary {len(tok)}")

    torch.manual_seed(recipe["seed"])
    config = Qwen3Config(
        vocab_size=len(tok),
        hidden_size=recipe["hidden_size"],
        intermediate_size=recipe["intermediate_size"],
        num_hidden_layers=recipe["num_hidden_layers"],
        num_attention_heads=recipe["num_attention_heads"],
        num_key_value_heads=recipe["num_key_value_heads"],
        head_dim=recipe["hidden_size"] // recipe["num_attention_heads"],
        max_position_embeddings=1024,
        tie_word_embeddings=True,
        bos_token_id=None,
        eos_token_id=tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=tok.pad_token_id,
    )
    model = Qwen3ForCausalLM(config)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe["lr"], weight_decay=0.01, betas=(0.9, 0.95))
    steps, warm, bs, block = recipe["steps"], recipe["warmup"], recipe["batch_size"], recipe["block_size"]
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    )
    g = torch.Generator().manual_seed(recipe["seed"])
    model.train()
    losses: list[float] = []
    for step in range(1, min(steps, stop_after or steps) + 1):
        pick = doc_starts[torch.randint(0, len(doc_starts), (bs,), generator=g)]
        x = torch.stack([data[s : s + block] for s in pick])
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if step % 100 == 0 or step == 1:
            log(f"testbed pretraining step {step}/{steps} loss {losses[-1]:.3f} ({time.time() - t0:.0f}s)")
    model.eval()
    return tok, model, losses


# The pretrained model ships with the package (built by `copsd testbed build --ship` from RECIPE),
# so every machine starts from the same weights: pretraining from scratch is not reproducible
# across CPUs (different kernels round differently and 1,000 steps amplify it).
SHIPPED = Path(__file__).resolve().parent / "model"
KEY_FILE = "testbed_key.json"


def testbed_key() -> dict:
    """What the testbed model is a function of: its recipe, the world, and the English prompt
    strings it was pretrained with (changing any of them means another model)."""
    from copsd.data.languages import get_language

    eng = get_language("eng")
    return {**RECIPE, "world": WORLD_VERSION, "instruction": eng.instruction, "thinking": eng.thinking}


def testbed_path() -> Path:
    """Where a testbed rebuilt on this machine lives (the cache, keyed by `testbed_key`)."""
    return cache_dir() / "models" / f"testbed-{recipe_hash(testbed_key())}"


def shipped_path() -> Path | None:
    """The shipped model, if it was built from the current key (else None)."""
    f = SHIPPED / KEY_FILE
    if not f.is_file() or not (SHIPPED / "config.json").is_file():
        return None
    return SHIPPED if json.loads(f.read_text(encoding="utf-8")).get("hash") == recipe_hash(testbed_key()) else None


def testbed_model(log=None) -> Path:
    """`builtin:testbed`: the shipped model, or (when the recipe or English prompts changed) one
    built on this machine."""
    import sys

    shipped = shipped_path()
    if shipped is not None:
        return shipped
    say = log or (lambda m: print(m, file=sys.stderr, flush=True))
    say("note: the shipped testbed model was built from another recipe or other English prompts; rebuilding it")
    return build_testbed_cached(log=say)


def build_testbed_cached(log=None) -> Path:
    """Pretrain the testbed model on this machine once (a few minutes on 2 cores), then reuse it."""
    import sys

    target = testbed_path()
    if not (target / "config.json").is_file():
        say = log or (lambda m: print(m, file=sys.stderr, flush=True))
        say(f"building the testbed model (once per machine) into {target}")
        atomic_build(target, lambda tmp: build_testbed(tmp, log=say))
    return target


def ship(built: Path) -> Path:
    """Copy a built testbed model into the package (maintainers, from a checkout)."""
    SHIPPED.mkdir(exist_ok=True)
    for old in SHIPPED.iterdir():
        old.unlink()
    for f in sorted(Path(built).iterdir()):
        if f.is_file():
            shutil.copyfile(f, SHIPPED / f.name)  # contents only: the build dir may be private (0600)
    key = testbed_key()
    (SHIPPED / KEY_FILE).write_text(
        json.dumps({"hash": recipe_hash(key), "key": key}, indent=1) + "\n", encoding="utf-8"
    )
    return SHIPPED
