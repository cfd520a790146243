"""A synthetic crosslingual world: templated arithmetic word problems in English and in two
synthetic low-resource languages (LRLs) made by a seeded one-to-one word mapping.

Everything is deterministic given the seeds below. Numbers, names, symbols and `\\boxed{`
stay the same across languages (as they would in a real translation); every other word maps to
a pseudo-word. `synlo` ("low" resource) and `synvlo` ("very low") differ only in how much
parallel English<->LRL text the pretraining corpus contains (see `build.py`).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from functools import lru_cache

WORLD_VERSION = 1
NAMES = (
    "anna",
    "ben",
    "carl",
    "dina",
    "emma",
    "finn",
    "gina",
    "hugo",
    "iris",
    "jack",
    "kate",
    "leo",
    "mia",
    "nick",
    "olga",
    "paul",
    "rosa",
    "sam",
    "tina",
    "vera",
)
OBJECTS = (
    "apples",
    "books",
    "coins",
    "pens",
    "cups",
    "eggs",
    "stones",
    "cards",
    "shells",
    "toys",
    "balls",
    "flowers",
    "stamps",
    "marbles",
    "candies",
)
MAX_NUMBER = 100


@dataclass(frozen=True)
class SyntheticLanguage:
    code: str
    name: str
    seed: int
    parallel_share: float  # share of pretraining documents that are parallel snippets


SYNTHETIC = {
    "synlo": SyntheticLanguage("synlo", "Synlo", 11, 0.30),
    "synvlo": SyntheticLanguage("synvlo", "Synvlo", 23, 0.10),
}


@dataclass(frozen=True)
class WorldProblem:
    kind: str
    question: str  # English, lower case, tokens separated by spaces
    solution: str  # English: "7 + 5 = 12 . the answer is \\boxed{ 12 } ."
    answer: int


def _solution(expr: str, value: int) -> str:
    return f"{expr} = {value} . the answer is \\boxed{{ {value} }} ."


def generate_problem(rng: random.Random) -> WorldProblem:
    """One problem from one of six templates. Operands are small (sums of two numbers up to 30,
    products up to 5 x 10) so that a ~1M-parameter model learns the arithmetic in minutes."""
    kind = rng.choice(("add", "sub", "together", "more", "mul", "two_step"))
    n1, n2 = rng.sample(NAMES, 2)
    obj = rng.choice(OBJECTS)
    if kind == "add":
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        q = f"{n1} has {a} {obj} . {n1} gets {b} more {obj} . how many {obj} does {n1} have now ?"
        return WorldProblem(kind, q, _solution(f"{a} + {b}", a + b), a + b)
    if kind == "sub":
        a = rng.randint(2, 40)
        b = rng.randint(1, a - 1)
        q = f"{n1} has {a} {obj} . {n1} gives {b} {obj} to {n2} . how many {obj} does {n1} have left ?"
        return WorldProblem(kind, q, _solution(f"{a} - {b}", a - b), a - b)
    if kind == "together":
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        q = f"{n1} has {a} {obj} and {n2} has {b} {obj} . how many {obj} do they have together ?"
        return WorldProblem(kind, q, _solution(f"{a} + {b}", a + b), a + b)
    if kind == "more":
        a = rng.randint(2, 40)
        b = rng.randint(1, a - 1)
        q = f"{n1} has {a} {obj} . {n2} has {b} {obj} . how many more {obj} does {n1} have than {n2} ?"
        return WorldProblem(kind, q, _solution(f"{a} - {b}", a - b), a - b)
    if kind == "mul":
        a, b = rng.randint(2, 5), rng.randint(2, 10)
        q = f"{n1} buys {a} bags . each bag has {b} {obj} . how many {obj} does {n1} have ?"
        return WorldProblem(kind, q, _solution(f"{a} * {b}", a * b), a * b)
    a, b = rng.randint(5, 30), rng.randint(1, 20)
    c = rng.randint(1, a + b - 1)
    q = f"{n1} has {a} {obj} . {n1} buys {b} more and then gives away {c} . how many {obj} does {n1} have now ?"
    sol = f"{a} + {b} = {a + b} . {a + b} - {c} = {a + b - c} . the answer is \\boxed{{ {a + b - c} }} ."
    return WorldProblem(kind, q, sol, a + b - c)


# ---- the synthetic languages -------------------------------------------------------------------
_KEEP = re.compile(r"^(\d+|[^a-z]+)$")  # numbers and symbol-only tokens stay as they are


def _pseudo_word(rng: random.Random) -> str:
    cons, vows = "bdfgklmnprstvz", "aeiou"
    return "".join(rng.choice(cons) + rng.choice(vows) for _ in range(rng.randint(2, 3)))


@lru_cache(maxsize=8)
def _mapping(code: str, words: tuple[str, ...]) -> dict[str, str]:
    lang = SYNTHETIC[code]
    rng = random.Random(lang.seed)
    taken = set(words)
    out = {}
    for w in words:
        while True:
            p = _pseudo_word(rng)
            if p not in taken:
                taken.add(p)
                out[w] = p
                break
    return out


def _core(token: str) -> tuple[str, str, str]:
    """('(', 'word', ',') for '(Word,' : prefix punctuation, lower-case core, suffix punctuation."""
    m = re.match(r"^([^A-Za-z]*)([A-Za-z][A-Za-z'\-]*)([^A-Za-z]*)$", token)
    if not m:
        return "", token, ""
    return m.group(1), m.group(2).lower(), m.group(3)


def translatable_words(texts: list[str]) -> tuple[str, ...]:
    words = set()
    for t in texts:
        for tok in t.split():
            pre, core, suf = _core(tok)
            if core and not _KEEP.match(core) and core not in NAMES and "\\" not in tok and "{" not in tok:
                words.add(core)
    return tuple(sorted(words))


def base_texts(eng: dict) -> list[str]:
    """Every English text of the world a language must cover (templates + prompt strings);
    `eng` is the registry's English entry."""
    from copsd.data.languages import TEACHER_DEFAULTS

    rng = random.Random(0)
    probs = [generate_problem(rng) for _ in range(3000)]
    return (
        [p.question for p in probs]
        + [p.solution for p in probs]
        + list(OBJECTS)
        + [eng["instruction"], eng["thinking"]]
        + list(TEACHER_DEFAULTS.values())
    )


_NOT_TRANSLATED = {"language", "english"} | {s.name.lower() for s in SYNTHETIC.values()}


@lru_cache(maxsize=8)
def _language_mapping(code: str, instruction: str, thinking: str) -> dict[str, str]:
    eng = {"instruction": instruction, "thinking": thinking}
    words = tuple(w for w in translatable_words(base_texts(eng)) if w not in _NOT_TRANSLATED)
    return _mapping(code, words)


def translate(text: str, code: str, eng: dict | None = None) -> str:
    """Word-by-word translation of English world text into a synthetic language."""
    if code == "eng":
        return text
    if eng is None:
        from copsd.data.languages import registry

        r = registry()["eng"]
        eng = {"instruction": r.instruction, "thinking": r.thinking}
    mapping = _language_mapping(code, eng["instruction"], eng["thinking"])
    out = []
    for tok in text.split():
        pre, core, suf = _core(tok)
        out.append(pre + mapping[core] + suf if core in mapping else tok)
    return " ".join(out)


def vocabularies() -> dict[str, frozenset[str]]:
    """The words of English world text and of each synthetic language (their translations)."""
    from copsd.data.languages import registry

    r = registry()["eng"]
    out: dict[str, frozenset[str]] = {}
    for code in SYNTHETIC:
        mapping = _language_mapping(code, r.instruction, r.thinking)
        out["eng"] = frozenset(mapping)
        out[code] = frozenset(mapping.values())
    return out


def identify_segments(texts: list[str]) -> list[str]:
    """The testbed's language identifier: each segment's language is the vocabulary most of its
    words belong to ("und" when none of them is a world word); exact, since the languages are
    word-by-word codes of the same English."""
    vocab = vocabularies()
    out = []
    for text in texts:
        words = text.lower().split()
        counts = {code: sum(w in v for w in words) for code, v in vocab.items()}
        best = max(counts, key=lambda c: counts[c])
        out.append(best if counts[best] else "und")
    return out


def language_entries(eng: dict) -> dict[str, dict]:
    """Registry entries of the synthetic languages, from the registry's English entry."""
    out = {}
    for code, lang in SYNTHETIC.items():
        out[code] = {
            "name": lang.name,
            "script": "Latin (synthetic)",
            "aliases": [],
            "instruction": translate(eng["instruction"], code, eng),
            "thinking": translate(eng["thinking"].replace("English", lang.name), code, eng),
            "synthetic": True,
        }
    return out


TEST_SIZE = 200
TRAIN_SIZE = 2000
_SPLIT_SEEDS = {"test": 3, "train": 2, "pretrain": 1}


@lru_cache(maxsize=8)
def english_split(split: str, n: int) -> tuple[WorldProblem, ...]:
    """`n` distinct English problems of a split; the splits use disjoint seeds and every non-test
    split excludes the test questions, so nothing is trained on the evaluation set."""
    rng = random.Random(_SPLIT_SEEDS[split] * 1000 + WORLD_VERSION)
    banned = {p.question for p in english_split("test", TEST_SIZE)} if split != "test" else set()
    out, seen = [], set()
    while len(out) < n:
        p = generate_problem(rng)
        if p.question in seen or p.question in banned:
            continue
        seen.add(p.question)
        out.append(p)
    return tuple(out)


def problems(language: str, split: str, n: int) -> list[tuple[str, WorldProblem]]:
    """(question in `language`, its English problem) for the first `n` problems of a split."""
    return [(translate(p.question, language), p) for p in english_split(split, n)]
