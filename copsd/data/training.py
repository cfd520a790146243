"""Training records for every method: target-language problem, English problem, English solution.

Accepted sources (`train.data_path`; `{language}` in it is replaced by the language code):
- a COPSD JSON/JSONL file with `problem` (English), `solution` (English) and `problem_<lang>`
  (the released training format), or the Hub variant with `problem_translated` + `language`;
- a directory holding such files (e.g. `translated_<lang>.json`);
- a Hub dataset id, loaded with `datasets.load_dataset(id, split="train")` (local files go
  through the same library's json/parquet builders);
- nothing, for a language with a default source: the bundled GSM8K-train + Swahili translations
  for `swa`, and whatever plugins add with `register_default_source` (the testbed's languages).
Records whose English problem is an evaluation test problem (GSM8K test, hence MGSM) are dropped:
we never train on the evaluation test sets.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

from copsd.data.benchmarks import load_problems, quiet_datasets, read_jsonl
from copsd.data.languages import canonical_code, registry
from copsd.errors import DataError
from copsd.grading import extract_boxed
from copsd.plugins import load_plugins


@dataclass(frozen=True)
class TrainExample:
    id: str
    problem: str  # in the target language
    problem_en: str
    solution_en: str
    answer: str


def clean_gsm8k_solution(solution: str) -> tuple[str, str]:
    """Drop `<<calc>>` annotations and end with a boxed answer: ('... The answer is \\boxed{18}.', '18')."""
    body, _, ans = solution.partition("####")
    body = re.sub(r"<<[^<>]*>>", "", body).strip()
    ans = ans.strip().replace(",", "")
    return (f"{body}\nThe answer is \\boxed{{{ans}}}." if ans else body), ans


def _res(*parts: str) -> Path:
    return Path(str(resources.files("copsd").joinpath("resources", *parts)))


def _norm(q: str) -> str:
    return " ".join(q.lower().split())


@lru_cache(maxsize=1)
def test_problem_set() -> frozenset[str]:
    """English evaluation test problems (GSM8K test; MGSM is its first 250)."""
    return frozenset(_norm(p.question) for b in ("gsm8k", "mgsm") for p in load_problems(b, "eng"))


def _bundled_swahili() -> list[TrainExample]:
    gsm = [
        json.loads(x) for x in _res("train", "gsm8k_train.jsonl").read_text(encoding="utf-8").splitlines() if x.strip()
    ]
    by_q = {}
    for i, r in enumerate(gsm):
        by_q.setdefault(r["question"], (i, r))
    en = _res("train", "gsm8k_train.en").read_text(encoding="utf-8").split("\n")
    sw = _res("train", "gsm8k_train.sw").read_text(encoding="utf-8").split("\n")
    out = []
    for q_en, q_sw in zip(en, sw):
        hit = by_q.get(q_en)
        if hit is None or not q_sw.strip():
            continue
        i, r = hit
        sol, ans = clean_gsm8k_solution(r["answer"])
        out.append(TrainExample(f"gsm8k-train-{i}", q_sw.strip(), q_en.strip(), sol, ans))
    return out


def _answer_of(rec: dict, solution: str) -> str:
    for k in ("Answer", "answer", "answer_number"):
        if rec.get(k) not in (None, ""):
            return str(rec[k]).strip()
    if "####" in solution:
        return solution.rsplit("####", 1)[1].strip().replace(",", "")
    return extract_boxed(solution) or ""


def _records_from_files(files: list[Path]) -> list[dict]:
    """Records of local JSON/JSONL/parquet files, read with `datasets` (one file at a time: files of
    different languages have different columns). Where `datasets` cannot read a JSON file, our own
    reader names the bad line (or reads it, when only column types disagree between records)."""
    from datasets import load_dataset

    quiet_datasets()
    recs: list[dict] = []
    for f in files:
        builder = "parquet" if f.suffix == ".parquet" else "json"
        kwargs = {"field": "data"} if f.suffix == ".json" and _top_level_is_object(f) else {}
        try:
            recs += list(load_dataset(builder, data_files=str(f), split="train", **kwargs))
        except Exception as exc:  # noqa: BLE001 - arrow/json raise many types
            if builder == "parquet":
                raise DataError(f"{f}: cannot read training records ({type(exc).__name__})") from None
            recs += _read_json_records(f)
    return recs


def _top_level_is_object(f: Path) -> bool:
    """A `.json` file holding {"data": [...]} rather than a list of records."""
    with open(f, encoding="utf-8") as fh:
        return fh.read(4096).lstrip().startswith("{")


def _read_json_records(f: Path) -> list[dict]:
    if f.suffix == ".jsonl":
        return read_jsonl(f)
    try:
        data = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{f}:{exc.lineno}: invalid JSON ({exc.msg})") from None
    return data if isinstance(data, list) else data.get("data", [])


def _load_records(data_path: str) -> list[dict]:
    """A file, a directory of files, or a Hub dataset id (its train split, via `datasets.load_dataset`)."""
    p = Path(data_path).expanduser()
    if p.is_file():
        return _records_from_files([p])
    if p.is_dir():
        files = sorted(x for x in p.rglob("*") if x.suffix in (".json", ".jsonl", ".parquet"))
        if not files:
            raise DataError(f"{p}: no .json/.jsonl/.parquet training files in this directory")
        return _records_from_files(files)
    if data_path.startswith((".", "/", "~")) or data_path.count("/") != 1:
        raise DataError(
            f"training data '{data_path}' not found (give a COPSD JSON file, a directory, or a Hub dataset id)"
        )
    from datasets import load_dataset

    quiet_datasets()
    try:
        return list(load_dataset(data_path, split="train"))
    except Exception as exc:  # offline, no cache, gated, ...
        raise DataError(
            f"training data '{data_path}' could not be loaded from the Hub ({type(exc).__name__}); load it once "
            "where the Hub is reachable (it is cached) or set train.data_path to a local file"
        ) from None


def _to_examples(recs: list[dict], language: str, source: str, counts: dict | None = None) -> list[TrainExample]:
    """Records -> examples for `language`. As released, a record whose translation-quality flag
    (`problem_<lang>_ok`) is present and not exactly true is dropped (with `datasets`, a flag
    column that some records lack reads as null there, so those records are dropped too)."""
    lang = registry()[language]
    keys = [f"problem_{c}" for c in (language, *lang.aliases)]
    names = {language, *lang.aliases, lang.name.lower()}
    out = []
    dropped = 0
    for i, r in enumerate(recs):
        key = next((k for k in keys if r.get(k)), None)
        if key is not None and f"{key}_ok" in r and r[f"{key}_ok"] is not True:
            dropped += 1
            continue
        if key is not None:
            problem = r[key]
        elif r.get("problem_translated") and str(r.get("language", "")).strip().lower() in names:
            problem = r["problem_translated"]
        else:
            continue
        if not r.get("problem") or not r.get("solution"):
            raise DataError(f"{source}: record {i} lacks 'problem' (English) or 'solution' (English)")
        sol = str(r["solution"])
        if "####" in sol and "\\boxed" not in sol:
            sol, _ = clean_gsm8k_solution(sol)
        out.append(
            TrainExample(
                str(r.get("id") or f"{source}-{i}"),  # datasets fills a missing id with None
                str(problem),
                str(r["problem"]),
                sol,
                _answer_of(r, str(r["solution"])),
            )
        )
    if counts is not None:
        counts["records_read"] = len(recs)
        counts["dropped_quality_flag"] = dropped
    return out


# language -> (examples, a name for messages): the data used when `train.data_path` is unset
DefaultSource = Callable[[str], tuple[list[TrainExample], str]]
_DEFAULT_SOURCES: dict[str, DefaultSource] = {
    "swa": lambda _lang: (_bundled_swahili(), "bundled GSM8K-train (swa)"),
}


def register_default_source(language: str, source: DefaultSource) -> None:
    """Training data for `language` when the spec gives no `train.data_path` (plugins)."""
    _DEFAULT_SOURCES[language] = source


def default_source_languages() -> list[str]:
    load_plugins()
    return sorted(_DEFAULT_SOURCES)


def load_training_data(
    language: str,
    data_path: str | None = None,
    *,
    val_size: int = 32,
    seed: int = 0,
    counts: dict | None = None,
    max_examples: int | None = None,
) -> tuple[list[TrainExample], list[TrainExample]]:
    """(train, validation) for one language; a seeded shuffle, then the last `val_size` held out.

    `counts`, when given, receives what was read and dropped (logged with the job)."""
    counts = {} if counts is None else counts
    language = canonical_code(language)
    if data_path is None:
        defaults = default_source_languages()
        if language not in defaults:
            raise DataError(
                f"no training data for language '{language}': set train.data_path to a COPSD JSON file with "
                f"'problem', 'solution' and 'problem_{language}' (or a Hub dataset id); bundled: {', '.join(defaults)}"
            )
        examples, source = _DEFAULT_SOURCES[language](language)
    else:
        data_path = data_path.replace("{language}", language)  # e.g. data/translated_{language}.json
        examples = _to_examples(_load_records(data_path), language, data_path, counts)
        source = data_path
    tests = test_problem_set()
    before = len(examples)
    examples = [e for e in examples if _norm(e.problem_en) not in tests]
    counts.setdefault("records_read", before)
    counts.setdefault("dropped_quality_flag", 0)
    counts["dropped_test_overlap"] = before - len(examples)
    if max_examples is not None:
        examples = examples[:max_examples]  # the first N usable records, in file order
    if len(examples) <= val_size:
        raise DataError(
            f"{source}: only {len(examples)} usable '{language}' training records (need more than val_size={val_size})"
        )
    rng = random.Random(seed)
    order = list(range(len(examples)))
    rng.shuffle(order)
    shuffled = [examples[i] for i in order]
    cut = len(shuffled) - val_size
    counts["train"], counts["validation"] = cut, val_size
    return shuffled[:cut], shuffled[cut:]
