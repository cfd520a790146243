"""Benchmark loaders: AfriMGSM (Hub or local copy), MGSM, PolyMath, GSM8K test, and the
synthetic `testbed` (English + the synthetic LRLs, generated on the fly).

Every loader returns a list of `Problem`s in file order; `limit` takes the first N. Bundled
files live in `copsd/resources/benchmarks/` (see ATTRIBUTION.md there).
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from copsd.errors import CopsdError, DataError
from copsd.languages import AFRIMGSM_LANGUAGES

AFRIMGSM_HUB_ID = "masakhane/afrimgsm"
MGSM_LANGS = {"ben": "bn", "deu": "de", "eng": "en", "spa": "es", "fra": "fr", "jpn": "ja",
              "rus": "ru", "swa": "sw", "tel": "te", "tha": "th", "zho": "zh"}
POLYMATH_LANGS = {"ara": "ar", "ben": "bn", "deu": "de", "eng": "en", "spa": "es", "fra": "fr",
                  "ind": "id", "ita": "it", "jpn": "ja", "kor": "ko", "msa": "ms", "por": "pt",
                  "rus": "ru", "swa": "sw", "tel": "te", "tha": "th", "vie": "vi", "zho": "zh"}
BENCHMARK_LANGUAGES: dict[str, tuple[str, ...]] = {
    "afrimgsm": AFRIMGSM_LANGUAGES + ("eng", "fra"),
    "mgsm": tuple(MGSM_LANGS),
    "polymath": tuple(POLYMATH_LANGS),
    "gsm8k": ("eng",),
    "testbed": ("eng", "synlo", "synvlo"),
}
BENCHMARK_SPLITS = {
    "afrimgsm": ("test", "dev"),
    "mgsm": ("test",),
    "polymath": ("low", "medium", "high", "top"),
    "gsm8k": ("test",),
    "testbed": ("test",),
}


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str


def check_language(benchmark: str, language: str, split: str) -> None:
    """Raise ValueError (so pydantic reports it at the field) if the pair is not offered."""
    langs = BENCHMARK_LANGUAGES[benchmark]
    if language not in langs:
        raise ValueError(f"benchmark '{benchmark}' has no language '{language}'; it has: {', '.join(langs)}")
    if split not in BENCHMARK_SPLITS[benchmark]:
        raise ValueError(
            f"benchmark '{benchmark}' has no split '{split}'; it has: {', '.join(BENCHMARK_SPLITS[benchmark])}"
        )


def _bundled(*parts: str) -> Path:
    return Path(str(resources.files("copsd").joinpath("resources", "benchmarks", *parts)))


def _read_tsv(path: Path, has_header: bool) -> list[tuple[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    if has_header:
        if not rows:
            raise DataError(f"{path}: empty file")
        header = [h.strip() for h in rows[0]]
        answer_col = "answer_number" if "answer_number" in header else "answer" if "answer" in header else None
        if "question" not in header or answer_col is None:
            raise DataError(f"{path}: needs columns 'question' and 'answer_number' (or 'answer'); found {header}")
        qi, ai = header.index("question"), header.index(answer_col)
        return [(r[qi], r[ai]) for r in rows[1:] if len(r) > max(qi, ai)]
    out = []
    for i, r in enumerate(rows, 1):
        if len(r) != 2:
            raise DataError(f"{path}:{i}: expected 2 tab-separated columns (question, answer), found {len(r)}")
        out.append((r[0], r[1]))
    return out


def _clean_answer(a: str) -> str:
    a = str(a).strip()
    return a[:-2] if a.endswith(".0") and a[:-2].lstrip("-").isdigit() else a


def afrimgsm_dir_from_env() -> str | None:
    return os.environ.get("COPSD_AFRIMGSM_DIR") or None


def _afrimgsm_file(language: str, split: str, data_dir: str | None) -> Path:
    data_dir = data_dir or afrimgsm_dir_from_env()
    if data_dir:
        root = Path(data_dir).expanduser()
        if not root.is_dir():
            raise DataError(
                f"AfriMGSM directory '{root}' does not exist; set eval.data_dir / --data-dir / COPSD_AFRIMGSM_DIR "
                "to a folder with <lang>/test.tsv and <lang>/dev.tsv"
            )
        for cand in (root / language / f"{split}.tsv", root / "data" / language / f"{split}.tsv"):
            if cand.is_file():
                return cand
        raise DataError(f"AfriMGSM file {root / language / (split + '.tsv')} not found (layout: <lang>/{split}.tsv)")
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(AFRIMGSM_HUB_ID, f"data/{language}/{split}.tsv", repo_type="dataset"))
    except Exception as exc:  # offline, no cache, gated, ...
        raise DataError(
            f"AfriMGSM '{language}/{split}' could not be fetched from the Hub ({AFRIMGSM_HUB_ID}: "
            f"{type(exc).__name__}); download it where the Hub is reachable or point eval.data_dir / "
            "COPSD_AFRIMGSM_DIR at a local copy laid out as <lang>/test.tsv"
        ) from None


def load_problems(benchmark: str, language: str, split: str = "test", limit: int | None = None,
                  data_dir: str | None = None) -> list[Problem]:
    """Problems of one benchmark/language/split, in file order (the first `limit` if given)."""
    try:
        check_language(benchmark, language, split)
    except ValueError as exc:
        raise CopsdError(str(exc)) from None
    if benchmark == "afrimgsm":
        path = _afrimgsm_file(language, split, data_dir)
        rows = _read_tsv(path, has_header=True)
        probs = [Problem(f"afrimgsm-{language}-{split}-{i}", q, _clean_answer(a)) for i, (q, a) in enumerate(rows)]
    elif benchmark == "mgsm":
        rows = _read_tsv(_bundled("mgsm", f"mgsm_{MGSM_LANGS[language]}.tsv"), has_header=False)
        probs = [Problem(f"mgsm-{language}-{i}", q, _clean_answer(a)) for i, (q, a) in enumerate(rows)]
    elif benchmark == "polymath":
        path = _bundled("polymath", POLYMATH_LANGS[language], f"{split}.jsonl")
        probs = [Problem(r["id"], r["question"], str(r["answer"]).strip()) for r in _read_jsonl(path)]
    elif benchmark == "gsm8k":
        path = _bundled("gsm8k", "test.jsonl")
        probs = [Problem(f"gsm8k-{i}", r["question"], _clean_answer(r["answer"].split("####")[-1].replace(",", "")))
                 for i, r in enumerate(_read_jsonl(path))]
    elif benchmark == "testbed":
        from copsd.testbed.world import TEST_SIZE, problems

        probs = [Problem(f"testbed-{language}-{i}", q, str(p.answer))
                 for i, (q, p) in enumerate(problems(language, "test", TEST_SIZE))]
    else:  # pragma: no cover - guarded by check_language
        raise CopsdError(f"unknown benchmark '{benchmark}'")
    if not probs:
        raise DataError(f"benchmark '{benchmark}' language '{language}' split '{split}' has no problems")
    return probs[:limit] if limit else probs


def _read_jsonl(path: Path) -> list[dict]:
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{i}: invalid JSON ({exc.msg})") from None
    return out


def availability(benchmark: str, language: str, split: str) -> str:
    """'bundled', 'local', 'hub-cache', or 'hub' (needs network) - for `copsd data list`."""
    if benchmark != "afrimgsm":
        return "bundled"
    d = afrimgsm_dir_from_env()
    if d and (Path(d) / language / f"{split}.tsv").is_file():
        return "local"
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(AFRIMGSM_HUB_ID, f"data/{language}/{split}.tsv", repo_type="dataset")
        if isinstance(hit, str):
            return "hub-cache"
    except Exception:
        pass
    return "hub"
