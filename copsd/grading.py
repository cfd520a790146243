"""Answer extraction and equivalence: text in, answers out. A foundation module (it imports
nothing of copsd) because evaluation, the GRPO reward and the training-data reader all grade.

The answer is the content of the LAST `\\boxed{...}` with balanced braces (PAPER.md). Grading
normalises plain numbers first (thousands separators, `$`, trailing `.0`) and compares them
exactly; anything else goes to math-verify (`parse` + `verify`, gold first, as the released
COPSD evaluation does). math-verify's own timeouts use SIGALRM, which only works on the main
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


def _run_with_timeout(fn, timeout: float):
    result: list = []

    def target():
        try:
            result.append(fn())
        except Exception:  # math-verify raising counts as "not equivalent"
            result.append(None)

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    return result[0] if result else None


def _wrap(s: str) -> str:
    return s if ("$" in s or "\\boxed" in s) else f"${s}$"


@lru_cache(maxsize=65536)
def _math_verify(pred: str, gold: str) -> bool:
    from math_verify import parse, verify

    def go() -> bool:
        g = parse(_wrap(gold), parsing_timeout=None)
        p = parse(_wrap(pred), parsing_timeout=None)
        if not g or not p:
            return False
        return bool(verify(g, p, timeout_seconds=None))

    return bool(_run_with_timeout(go, VERIFY_TIMEOUT_S))


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
