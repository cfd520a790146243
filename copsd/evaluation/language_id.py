"""Which language does a response reason in? Per-sample shares of the target language, English and
other languages, on the thinking part and on the answer part separately.

A response is cut into segments (sentences and lines); math is stripped first (`$…$`, `\\(…\\)`,
`\\[…\\]`, LaTeX commands, digits, symbols), and a segment with fewer than `MIN_LETTERS` letters
left is not identified (too short to tell; "3 + 4 = 7." says nothing about the language). Each
remaining segment is identified as one language, and a share is **letters** in segments of that
language over letters in all identified segments. A sample's *dominant* language is the label with
the largest share: `target`, `english` or `other`.

The identifier for real languages is py3langid 0.4 (langid.py's naive Bayes over byte n-grams,
retrained for 140 languages; its model is an npz file inside the 4.6 MB wheel, loaded without
pickle: no download, no code from a data file); docs/method.md, "Language identification", says
why it was chosen over CLD3 and lingua, its coverage and its measured accuracy. A target language
it does not know (Ewe, Twi, Vai, Wolof) is *unsupported*: its target share is None, never a
guess; the English share is still measured (English is always identified). Plugins register
identifiers for their own languages (`register_identifier`; the testbed's knows its vocabularies).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

MIN_LETTERS = 12


# segments -> one language code per segment (our registry code where there is one, else the
# identifier's own tag; "und" when it cannot tell)
Identifier = Callable[[list[str]], list[str]]

_PLUGIN_IDENTIFIERS: dict[str, tuple[Callable[[], Identifier], int]] = {}


def register_identifier(
    codes: Iterable[str], factory: Callable[[], Identifier], min_letters: int = MIN_LETTERS
) -> None:
    """A plugin's identifier for its languages (`factory` is called once, when first needed);
    `min_letters`: the shortest segment it can name (an exact vocabulary lookup needs one word)."""
    for code in codes:
        _PLUGIN_IDENTIFIERS[code] = (factory, min_letters)


# ---- text preparation ---------------------------------------------------------------------------
_DISPLAY_MATH = re.compile(r"\$\$.*?\$\$|\\\[.*?\\\]|\\\(.*?\\\)", re.S)
_INLINE_MATH = re.compile(r"\$([^$\n]{0,200}?)\$")
_PROSE = re.compile(r"[^\W\d_]{3,}\s+[^\W\d_]{3,}\s+[^\W\d_]{3,}")  # three words: prose, not math
_LATEX_CMD = re.compile(r"\\[A-Za-z]+")
_SPLIT = re.compile(r"(?<=[.!?。！？;:])\s+|\n+|(?<=[。！？])")
_NOT_LETTER = re.compile(r"[\W\d_]+")


def _strip_math(text: str) -> str:
    text = _DISPLAY_MATH.sub(" ", text)
    # `$…$` is math unless it holds prose (currency: "$2 for each egg and $3 …" is text)
    text = _INLINE_MATH.sub(lambda m: f" {m[1]} " if _PROSE.search(m[1]) else " ", text)
    return _LATEX_CMD.sub(" ", text)


def segments(text: str, min_letters: int = MIN_LETTERS) -> list[tuple[str, int]]:
    """(segment with math, digits and symbols removed, its letter count), for every segment with
    at least `min_letters` letters."""
    out = []
    for seg in _SPLIT.split(_strip_math(text or "")):
        words = _NOT_LETTER.sub(" ", seg).split()
        letters = sum(len(w) for w in words)
        if letters >= min_letters:
            out.append((" ".join(words), letters))
    return out


def split_thinking(text: str, thinking: bool) -> tuple[str, str]:
    """(thinking part, answer part) of a response: around `</think>`; a thinking response that
    never closed its block (cut at the budget) is all thinking; without thinking, all answer."""
    if "</think>" in text:
        think, _, answer = text.partition("</think>")
        return think.replace("<think>", " "), answer
    return (text, "") if thinking else ("", text)


# ---- identifiers --------------------------------------------------------------------------------
def _iso1_to_ours() -> dict[str, str]:
    from copsd.data.languages import registry

    out: dict[str, str] = {}
    for code, lang in registry().items():
        for alias in lang.aliases:
            out.setdefault(alias, code)
    return out


@lru_cache(maxsize=1)
def _langid_model():
    from py3langid.langid import MODEL_FILE, LanguageIdentifier

    return LanguageIdentifier.from_model_file(MODEL_FILE)


def langid_supports(target: str) -> bool:
    """Whether py3langid's model has a class for the target (through its ISO 639-1 alias)."""
    from copsd.data.languages import get_language

    classes = set(_langid_model().nb_classes)
    return target == "eng" or any(a in classes for a in get_language(target).aliases)


@lru_cache(maxsize=1)
def _langid() -> Identifier:
    model = _langid_model()
    ours = _iso1_to_ours()

    def identify(texts: list[str]) -> list[str]:
        tags = [model.classify(t)[0] for t in texts]
        return [ours.get(tag, tag) for tag in tags]

    return identify


@dataclass(frozen=True)
class LanguageIdentifier:
    """Identification for one target language: which identifier, and whether it knows the target."""

    target: str
    identify: Identifier
    supported: bool
    name: str  # "py3langid" or "plugin:<code>", for provenance
    min_letters: int = MIN_LETTERS


@lru_cache(maxsize=64)
def identifier_for(target: str) -> LanguageIdentifier:
    from copsd.plugins import load_plugins

    load_plugins()
    if target in _PLUGIN_IDENTIFIERS:
        factory, min_letters = _PLUGIN_IDENTIFIERS[target]
        return LanguageIdentifier(target, factory(), True, f"plugin:{target}", min_letters)
    return LanguageIdentifier(target, _langid(), langid_supports(target), "py3langid")


# ---- per sample and per evaluation --------------------------------------------------------------
@dataclass(frozen=True)
class Shares:
    """Letters identified as the target language, English and anything else."""

    target: int = 0
    english: int = 0
    other: int = 0

    def __add__(self, o: Shares) -> Shares:
        return Shares(self.target + o.target, self.english + o.english, self.other + o.other)

    @property
    def total(self) -> int:
        return self.target + self.english + self.other

    def rate(self, which: str, supported: bool = True) -> float | None:
        if not self.total or (which == "target" and not supported):
            return None
        return getattr(self, which) / self.total

    def dominant(self, supported: bool = True) -> str | None:
        """`target`, `english` or `other` (the largest share); None with nothing identified, and
        for an unsupported target unless English is the largest."""
        if not self.total:
            return None
        best = max(("target", "english", "other"), key=lambda k: getattr(self, k))
        if not supported and best != "english":
            return None
        return best


def identify_parts(texts: list[str], lid: LanguageIdentifier, cache: dict[str, str] | None = None) -> list[Shares]:
    """Shares of each text: one identifier call for the distinct segments not in `cache` (an
    evaluation passes one cache to its every budget, whose cut responses repeat the full ones'
    segments, and samples repeat the question)."""
    per_text = [segments(t, lid.min_letters) for t in texts]
    flat = [s for segs in per_text for s, _ in segs]
    cache = {} if cache is None else cache
    todo = [s for s in dict.fromkeys(flat) if s not in cache]
    if todo:
        cache.update(zip(todo, lid.identify(todo)))
    labels = iter([cache[s] for s in flat])
    out = []
    for segs in per_text:
        t = e = o = 0
        for _, letters in segs:
            lab = next(labels)
            if lab == lid.target and lid.target != "eng":
                t += letters
            elif lab == "eng":
                e += letters
            else:
                o += letters
        out.append(Shares(t, e, o))
    return out


def _mean(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def language_metrics(
    responses: list[str], correct: list[bool], target: str, *, thinking: bool, cache: dict[str, str] | None = None
) -> tuple[dict[str, float | None], list[dict]]:
    """The language rates (results.schema.LANGUAGE_COLUMNS, in that order) over samples (means of per-sample shares; samples with nothing
    identifiable left out), and per sample: the dominant language of each part and the shares."""
    lid = identifier_for(target)
    parts = [split_thinking(r, thinking) for r in responses]
    cache = {} if cache is None else cache  # segment -> label, shared by both parts
    think = identify_parts([p[0] for p in parts], lid, cache)
    answer = identify_parts([p[1] for p in parts], lid, cache)
    whole = [a + b for a, b in zip(think, answer)]
    sup = lid.supported
    dom = [w.dominant(sup) for w in whole]
    known = [d for w, d in zip(whole, dom) if w.total]  # samples with something identifiable

    def acc_when(which: str) -> float | None:
        hits = [c for c, d in zip(correct, dom) if d == which]
        return float(np.mean(hits)) if hits else None

    metrics = {
        "target_language_rate": _mean([w.rate("target", sup) for w in whole]),
        "english_rate": _mean([w.rate("english") for w in whole]),
        "target_language_rate_think": _mean([s.rate("target", sup) for s in think]),
        "english_rate_think": _mean([s.rate("english") for s in think]),
        "target_language_rate_answer": _mean([s.rate("target", sup) for s in answer]),
        "english_rate_answer": _mean([s.rate("english") for s in answer]),
        "target_dominant_rate": (sum(d == "target" for d in known) / len(known)) if known and sup else None,
        "english_dominant_rate": (sum(d == "english" for d in known) / len(known)) if known else None,
        "accuracy_target_dominant": acc_when("target") if sup else None,
        "accuracy_english_dominant": acc_when("english"),
    }
    if target == "eng":  # the target is English: its rates are the English ones
        for key in [k for k in metrics if k.startswith(("target_", "accuracy_target"))]:
            metrics[key] = metrics[key.replace("target_language", "english").replace("target", "english")]
    per_sample = [
        {
            "language_think": _label(t.dominant(sup), target),
            "language_answer": _label(a.dominant(sup), target),
            "target_share": w.rate("target", sup),
            "english_share": w.rate("english"),
        }
        for t, a, w in zip(think, answer, whole)
    ]
    return metrics, per_sample


def _label(dominant: str | None, target: str) -> str | None:
    return {"target": target, "english": "eng", "other": "other"}.get(dominant or "", None)
