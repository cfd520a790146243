"""Answer extraction and equivalence: text in, answers out. A foundation module (it imports
nothing of copsd) because evaluation, the GRPO reward and the training-data reader all grade.

Two graders (`eval.grader`), both applied to every sample so one evaluation answers both:
- `paper` reproduces the released evaluation (african_langs_eval/evaluate_math.py) rule for
  rule: the last `\\boxed` in the whole response, which must be complete and spelt exactly
  `\\boxed{`; both sides wrapped in `$...$` unless they hold a `$`; math-verify `parse` with its
  defaults and `verify(gold, pred)`. What it rejects stays rejected (`\\$18`, `1 000`, `\\fbox`,
  a truncated last box, `18 dollars`).
- `lenient` (copsd's own): the last non-empty, complete `\\boxed{}`/`\\fbox{}`; plain numbers
  normalised first (thousands separators, `$`, trailing `.0`) and compared exactly; anything
  else goes to math-verify (gold first). math-verify's own timeouts use SIGALRM, which only works on the main
thread, so it is called with them off and bounded by our own thread timeout instead: grading
works from any thread or worker process.
"""

from __future__ import annotations

import logging
import re
import threading
from functools import lru_cache

# We bound math-verify with our own timeout (below); silence its "timeout is disabled" warning.
logging.getLogger("math_verify").setLevel(logging.ERROR)

_BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
_NUM = re.compile(r"^[-+]?(\d+(\.\d*)?|\.\d+)$")
VERIFY_TIMEOUT_S = 5.0


def extract_boxed(text: str | None) -> str | None:
    """Content of the last `\\boxed{...}` (balanced braces) that is not empty, stripped; None if
    there is none. An empty box is skipped like a truncated one: real models echo the
    instruction's `\\boxed{}` (docs/real_models.md), which is no answer."""
    if not text:
        return None
    starts = [m.end() for m in _BOXED.finditer(text)]
    for start in reversed(starts):
        depth, i = 1, start
        while i < len(text):
            c = text[i]
            if c == "{":
                depth += 1
            elif c == "}":
                depth -= 1
                if depth == 0:
                    content = text[start:i].strip()
                    if content:
                        return content
                    break  # an empty box: try the one before it
            i += 1
        # unbalanced (truncated) or empty last box: try the one before it
    return None


def normalize_answer(ans: str) -> str:
    """Plain-number normalisation: `$1,000.00` -> `1000`, `18.0` -> `18`, `\\$18` -> `18`."""
    s = str(ans).strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    s = s.replace("\\$", "").replace("$", "").replace("\\!", "").replace("\\,", "").strip()
    s = s.rstrip(".").strip()
    if re.fullmatch(r"[-+]?\d{1,3}(,\d{3})+(\.\d+)?", s) or re.fullmatch(r"[-+]?\d{1,3}( \d{3})+(\.\d+)?", s):
        s = s.replace(",", "").replace(" ", "")
    if _NUM.match(s):
        if "." in s:
            s = s.rstrip("0").rstrip(".") or "0"
        s = s.lstrip("+")
        if s.startswith("-") and s[1:] in ("0", ""):
            s = "0"
    return s


class _TimedOut(Exception):
    """math-verify took longer than VERIFY_TIMEOUT_S; raised (not returned) so that `lru_cache`
    does not remember a verdict that load, not the answer, decided."""


def _run_with_timeout(fn, timeout: float, on_error=None):
    """fn() in a thread, bounded by `timeout` (raises _TimedOut); `on_error` if fn raises."""
    result: list = []

    def target():
        try:
            result.append(fn())
        except Exception:  # by default math-verify raising counts as "not equivalent"
            result.append(on_error)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if not result:
        raise _TimedOut()
    return result[0]


def _uncached_on_timeout(fn):
    """Call a cached grading function; a timeout is "not equivalent" this time, and not cached."""

    def call(*args):
        try:
            return fn(*args)
        except _TimedOut:
            return False

    return call


def _wrap(s: str) -> str:
    return s if ("$" in s or "\\boxed" in s) else f"${s}$"


@lru_cache(maxsize=65536)
def _math_verify_cached(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    def go() -> bool:
        g = parse(_wrap(gold), parsing_timeout=None)
        p = parse(_wrap(pred), parsing_timeout=None)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=None))

    return bool(_run_with_timeout(go, VERIFY_TIMEOUT_S))


_math_verify = _uncached_on_timeout(_math_verify_cached)


def is_equivalent(pred: str | None, gold: str) -> bool:
    """Does the extracted answer `pred` equal the reference `gold`? (None is never correct.)"""
    if pred is None or not str(pred).strip():
        return False
    p, g = normalize_answer(pred), normalize_answer(gold)
    if p == g:
        return True
    if _NUM.match(p) and _NUM.match(g):
        try:
            return abs(float(p) - float(g)) <= 1e-9 * max(1.0, abs(float(g)))
        except ValueError:
            return False
    return _math_verify(p, g)


# ---- the released GRPO reward (multilingual_grpo_train.py), reproduced rule for rule --------------
_RATIO = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*:\s*(-?\d+(?:\.\d+)?)\s*")


def first_box_after_think(text: str | None) -> str | None:
    """The released GRPO reward's answer: the FIRST `\\boxed{` after the last `</think>` (the whole
    text when there is none), balanced braces, stripped; None when there is no box or it is cut off.
    Only the exact characters `\\boxed{` count (no `\\fbox`, no space before the brace); an empty
    box is the empty string (never correct)."""
    if not text:
        return None
    end = text.rfind("</think>")
    region = text[end + len("</think>") :] if end != -1 else text
    i = region.find("\\boxed{")
    if i == -1:
        return None
    start = j = i + len("\\boxed{")
    depth = 1
    while j < len(region):
        if region[j] == "{":
            depth += 1
        elif region[j] == "}":
            depth -= 1
            if depth == 0:
                return region[start:j].strip()
        j += 1
    return None


@lru_cache(maxsize=65536)
def _released_reward_verify_cached(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    def go() -> bool:
        m = _RATIO.fullmatch(pred)
        p = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}" if m else pred  # a:b is read as a fraction
        return bool(verify(parse(gold, parsing_timeout=None), parse(p, parsing_timeout=None), timeout_seconds=None))

    return bool(_run_with_timeout(go, VERIFY_TIMEOUT_S))


_released_reward_verify = _uncached_on_timeout(_released_reward_verify_cached)


def grpo_reward_correct(text: str, gold: str) -> bool:
    """The released GRPO correctness reward: math-verify on the unwrapped strings (gold first), else
    equality after removing all whitespace and lower-casing (raw prediction, not the fraction form)."""
    pred = first_box_after_think(text)
    if pred is None:
        return False
    if pred and _released_reward_verify(pred, str(gold)):
        return True
    squash = lambda x: re.sub(r"\s+", "", x).lower()  # noqa: E731
    return bool(squash(pred)) and squash(pred) == squash(str(gold))


# ---- the released evaluation's grader (`eval.grader: paper`) ---------------------------------------
PAPER_EMPTY_VOTE = "[empty box]"  # what an empty `\\boxed{}` votes as in Maj@k (graded wrong)


def extract_boxed_paper(text: str | None) -> str | None:
    """The released evaluation's answer: from the LAST `\\boxed` anywhere (thinking included),
    brace counting from there; None when that box never closes or is not spelt `\\boxed{...}`;
    an empty box gives "" (formatted, but never correct)."""
    if not text:
        return None
    idx = text.rfind("\\boxed")
    if idx < 0:
        return None
    depth, close = 0, None
    for i in range(idx, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                close = i
                break
    if close is None:
        return None
    box = text[idx : close + 1]
    return box[len("\\boxed{") : -1].strip() if box.startswith("\\boxed{") else None


_FAILED = object()


@lru_cache(maxsize=65536)
def _paper_equivalent_cached(pred: str | None, gold: str) -> bool:
    """The released evaluation's check: `$`-wrap, math-verify defaults, `verify(gold, pred)`; the
    string fallback (no `$`, no spaces, lower case) only when math-verify raises."""
    if pred is None:
        return False
    from math_verify import parse, verify

    p, g = pred.strip(), str(gold).strip()

    def go() -> bool:
        pw = p if ("$" in p or "\\boxed{" in p) else f"${p}$"
        gw = g if ("$" in g or "\\boxed{" in g) else f"${g}$"
        return bool(verify(parse(gw, parsing_timeout=None), parse(pw, parsing_timeout=None), timeout_seconds=None))

    # a timeout raises _TimedOut: "not equivalent" (as math-verify's own 5 s timeout), but not cached
    verdict = _run_with_timeout(go, VERIFY_TIMEOUT_S, on_error=_FAILED)
    if verdict is _FAILED:  # the released fallback, only when math-verify raises
        squash = lambda x: x.replace("$", "").replace(" ", "").lower().strip()  # noqa: E731
        return squash(pred) == squash(str(gold))
    return bool(verdict)


paper_equivalent = _uncached_on_timeout(_paper_equivalent_cached)


# ---- the two graders behind one interface --------------------------------------------------------
class Grader:
    """Extraction, equivalence and the Maj@k vote key of one grading rule."""

    name = ""

    def extract(self, text: str | None) -> str | None:
        raise NotImplementedError

    def correct(self, pred: str | None, gold: str) -> bool:
        raise NotImplementedError

    def vote_key(self, pred: str) -> str:
        raise NotImplementedError


class PaperGrader(Grader):
    name = "paper"

    def extract(self, text: str | None) -> str | None:
        return extract_boxed_paper(text)

    def correct(self, pred: str | None, gold: str) -> bool:
        return bool(pred) and paper_equivalent(pred, str(gold))

    def vote_key(self, pred: str) -> str:
        return pred or PAPER_EMPTY_VOTE  # raw strings: `18` and `18.0` are different votes, as released


class LenientGrader(Grader):
    name = "lenient"

    def extract(self, text: str | None) -> str | None:
        return extract_boxed(text)

    def correct(self, pred: str | None, gold: str) -> bool:
        return is_equivalent(pred, gold)

    def vote_key(self, pred: str) -> str:
        return normalize_answer(pred)


GRADERS: dict[str, Grader] = {"paper": PaperGrader(), "lenient": LenientGrader()}
