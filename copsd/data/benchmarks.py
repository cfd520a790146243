"""Evaluation benchmarks, driven by one table (`copsd/resources/benchmarks.yaml`).

The table says, per benchmark, where its files come from, which languages and splits it has and
which fields hold the question, the answer and the id; this module turns that into `Problem`s.
Sources: `bundled` (files under `copsd/resources/benchmarks/`, see ATTRIBUTION.md there), `hub`
(a Hub dataset loaded with `datasets.load_dataset`, or a local copy: `eval.data_dir` / the
benchmark's `local_dir_env`), and any
source a plugin adds with `register_source` (the testbed generates its problems). Every loader
returns problems in file order; `limit` takes the first N.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator

from copsd.errors import CopsdError, DataError
from copsd.plugins import load_plugins


@dataclass(frozen=True)
class Problem:
    id: str
    question: str
    answer: str


class Benchmark(BaseModel):
    """One row of the benchmark table (see the field notes at the top of benchmarks.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    label: str = ""
    title: str = ""
    source: str = "bundled"
    format: Literal["tsv", "tsv_noheader", "jsonl"] | None = None
    path: str = ""
    hub_id: str | None = None
    hub_config: str = "{file_code}"
    hub_splits: dict[str, str] = Field(default_factory=dict)  # our split name -> the Hub dataset's
    local_dir_env: str | None = None
    languages: dict[str, str]
    splits: tuple[str, ...] = Field(min_length=1)
    question: str = "question"
    answer: tuple[str, ...] = ("answer",)
    after: str | None = None
    id: str = "{name}-{language}-{index}"
    clean_answer: bool = True
    prompt: Literal["boxed"] = "boxed"

    @field_validator("languages", mode="before")
    @classmethod
    def _list_means_same_codes(cls, v):
        return {c: c for c in v} if isinstance(v, (list, tuple)) else v

    @property
    def display(self) -> str:
        return self.label or self.name

    def problem_id(self, record: dict, language: str, split: str, index: int) -> str:
        if "{" not in self.id:
            return str(record[self.id])
        return self.id.format(name=self.name, language=language, split=split, index=index)


@dataclass(frozen=True)
class Source:
    """How a benchmark's problems are obtained; `availability` is shown by `copsd data list`."""

    load: Callable[[Benchmark, str, str, str | None], list[Problem]]  # (benchmark, language, split, data_dir)
    availability: Callable[[Benchmark, str, str], str]


_SOURCES: dict[str, Source] = {}
_EXTRA: dict[str, Benchmark] = {}


def register_source(name: str, source: Source) -> None:
    _SOURCES[name] = source


def register_benchmark(benchmark: Benchmark | dict) -> None:
    """Add a benchmark from a plugin (a dict is a table row with its `name`)."""
    b = benchmark if isinstance(benchmark, Benchmark) else Benchmark.model_validate(benchmark)
    _EXTRA[b.name] = b


@lru_cache(maxsize=1)
def _table() -> dict[str, Benchmark]:
    raw = yaml.safe_load((resources.files("copsd") / "resources" / "benchmarks.yaml").read_text(encoding="utf-8"))
    return {name: Benchmark.model_validate({"name": name, **row}) for name, row in raw.items()}


def benchmarks() -> dict[str, Benchmark]:
    """Every known benchmark: the table, then those plugins registered."""
    load_plugins()
    return {**_table(), **_EXTRA}


def get_benchmark(name: str) -> Benchmark:
    table = benchmarks()
    if name not in table:
        raise CopsdError(f"unknown benchmark '{name}'; known: {', '.join(table)}")
    return table[name]


def all_splits() -> list[str]:
    out: list[str] = []
    for b in benchmarks().values():
        out += [s for s in b.splits if s not in out]
    return out


def check_language(benchmark: str, language: str, split: str) -> None:
    """Raise ValueError (so pydantic reports it at the field) if the pair is not offered."""
    table = benchmarks()
    if benchmark not in table:
        raise ValueError(f"unknown benchmark '{benchmark}'; known: {', '.join(table)}")
    b = table[benchmark]
    if language not in b.languages:
        raise ValueError(f"benchmark '{benchmark}' has no language '{language}'; it has: {', '.join(b.languages)}")
    if split not in b.splits:
        raise ValueError(f"benchmark '{benchmark}' has no split '{split}'; it has: {', '.join(b.splits)}")


def load_problems(
    benchmark: str, language: str, split: str = "test", limit: int | None = None, data_dir: str | None = None
) -> list[Problem]:
    """Problems of one benchmark/language/split, in file order (the first `limit` if given)."""
    try:
        check_language(benchmark, language, split)
    except ValueError as exc:
        raise CopsdError(str(exc)) from None
    b = benchmarks()[benchmark]
    if b.source not in _SOURCES:
        raise CopsdError(f"benchmark '{benchmark}': unknown source '{b.source}'; known: {', '.join(_SOURCES)}")
    probs = _SOURCES[b.source].load(b, language, split, data_dir)
    if not probs:
        raise DataError(f"benchmark '{benchmark}' language '{language}' split '{split}' has no problems")
    return probs[:limit] if limit else probs


def availability(benchmark: str, language: str, split: str) -> str:
    """'bundled', 'local', 'hub-cache', 'hub' (needs network), or a plugin source's word."""
    b = get_benchmark(benchmark)
    return _SOURCES[b.source].availability(b, language, split)


# ---- reading files -------------------------------------------------------------------------------
def quiet_datasets() -> None:
    """No per-call progress bars from `datasets` in sweep logs."""
    import datasets

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()


def read_tsv(path: Path, has_header: bool) -> list[dict]:
    """A tab-separated file through the `datasets` csv builder, as the released evaluation reads
    AfriMGSM: no quoting (quotes are text), "NA" is text, every field a string as written. Without a
    header row the file has two columns, question and answer."""
    from datasets import Features, Value, load_dataset

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    with open(path, encoding="utf-8") as fh:
        first = fh.readline().rstrip("\r\n").split("\t")
    if first == [""]:
        raise DataError(f"{path}: empty file")
    columns = first if has_header else ["question", "answer"]
    if not has_header and len(first) != 2:
        raise DataError(f"{path}:1: expected 2 tab-separated columns (question, answer), found {len(first)}")
    quiet_datasets()
    try:
        ds = load_dataset(
            "csv",
            data_files=str(path),
            split="train",
            delimiter="\t",
            quoting=csv.QUOTE_NONE,
            header=0 if has_header else None,
            column_names=None if has_header else columns,
            keep_default_na=False,
            features=Features({c: Value("string") for c in columns}),  # answers stay as written
        )
    except Exception as exc:  # noqa: BLE001 - pandas/arrow raise many types for a malformed file
        raise DataError(f"{path}: cannot read as a tab-separated file ({type(exc).__name__}: {exc})") from None
    return list(ds)


def read_jsonl(path: Path) -> list[dict]:
    """JSON Lines, blank lines skipped; a bad line is a one-line error naming it."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    out = []
    with open(path, encoding="utf-8") as fh:
        for i, line in enumerate(fh, 1):
            if line.strip():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}:{i}: invalid JSON ({exc.msg}); fix or delete that line") from None
    return out


def _clean_answer(a: str) -> str:
    a = str(a).strip()
    return a[:-2] if a.endswith(".0") and a[:-2].lstrip("-").isdigit() else a


def read_problems(b: Benchmark, path: Path, language: str, split: str) -> list[Problem]:
    """One benchmark file -> problems, per the table's format and field names."""
    if b.format == "jsonl":
        records = read_jsonl(path)
        for r in records:
            ans = next((r[a] for a in b.answer if a in r), None)
            if b.question not in r or ans is None:
                raise DataError(f"{path}: records need '{b.question}' and {' or '.join(b.answer)}")
            r["answer"], r["question"] = ans, r[b.question]
    else:
        records = _with_fields(b, read_tsv(path, b.format == "tsv"), str(path))
    return problems_from_records(b, records, language, split)


def problems_from_records(b: Benchmark, records: list[dict], language: str, split: str) -> list[Problem]:
    """Records with `question` and `answer` -> problems (answer cleaning and ids per the table)."""
    out = []
    for i, r in enumerate(records):
        answer = str(r["answer"])
        if b.after:
            answer = answer.split(b.after)[-1].replace(",", "")
        answer = _clean_answer(answer) if b.clean_answer else answer.strip()
        out.append(Problem(b.problem_id(r, language, split, i), str(r["question"]), answer))
    return out


# ---- bundled files -----------------------------------------------------------------------------
def bundled_file(*parts: str) -> Path:
    return Path(str(resources.files("copsd").joinpath("resources", "benchmarks", *parts)))


def _bundled_path(b: Benchmark, language: str, split: str) -> Path:
    return bundled_file(*b.path.format(file_code=b.languages[language], split=split).split("/"))


register_source(
    "bundled",
    Source(
        load=lambda b, language, split, _dir: read_problems(b, _bundled_path(b, language, split), language, split),
        availability=lambda b, language, split: "bundled",
    ),
)


# ---- Hub datasets with a local-copy alternative ------------------------------------------------
# Both go through the `datasets` library, as the released evaluation loads AfriMGSM:
# `load_dataset(hub_id, <language config>, split=...)` for the Hub (nothing here assumes a file
# layout inside the Hub repository) and `read_tsv` (its `csv` builder) for a local copy
# (<lang>/<split>.tsv).
def _local_dir(b: Benchmark, data_dir: str | None) -> str | None:
    return data_dir or (os.environ.get(b.local_dir_env) if b.local_dir_env else None) or None


def _local_file(b: Benchmark, language: str, split: str, local: str) -> Path:
    code = b.languages[language]
    env = f" / {b.local_dir_env}" if b.local_dir_env else ""
    root = Path(local).expanduser()
    if not root.is_dir():
        raise DataError(
            f"{b.display} directory '{root}' does not exist; set eval.data_dir / --data-dir{env} "
            f"to a folder with <lang>/{split}.tsv"
        )
    rel = b.path.format(file_code=code, split=split)
    leaf = Path(rel).name
    for cand in (root / code / leaf, root / rel):
        if cand.is_file():
            return cand
    raise DataError(f"{b.display} file {root / code / leaf} not found (layout: <lang>/{leaf})")


def _with_fields(b: Benchmark, records: list[dict], where: str) -> list[dict]:
    """Map the table's question/answer field names onto `question`/`answer`."""
    if not records:
        return []
    cols = list(records[0])
    answer_col = next((a for a in b.answer if a in cols), None)
    if b.question not in cols or answer_col is None:
        wanted = " or ".join(repr(a) for a in b.answer)
        raise DataError(f"{where}: needs columns '{b.question}' and {wanted}; found {cols}")
    return [{**r, "question": r[b.question], "answer": r[answer_col]} for r in records]


def _hub_records(b: Benchmark, language: str, split: str) -> list[dict]:
    from datasets import load_dataset

    quiet_datasets()
    config = b.hub_config.format(file_code=b.languages[language], language=language)
    env = f" / {b.local_dir_env}" if b.local_dir_env else ""
    try:
        ds = load_dataset(b.hub_id, config, split=b.hub_splits.get(split, split))
    except Exception as exc:  # offline, no cache, gated, unknown config, ...
        raise DataError(
            f"{b.display} '{language}/{split}' could not be loaded from the Hub ({b.hub_id}, config '{config}': "
            f"{type(exc).__name__}); load it once where the Hub is reachable (it is cached) or point "
            f"eval.data_dir{env} at a local copy laid out as <lang>/{split}.tsv"
        ) from None
    return _with_fields(b, list(ds), f"{b.hub_id} ({config}/{split})")


def _hub_load(b: Benchmark, language: str, split: str, data_dir: str | None) -> list[Problem]:
    local = _local_dir(b, data_dir)
    if local:
        path = _local_file(b, language, split, local)
        records = _with_fields(b, read_tsv(path, b.format != "tsv_noheader"), str(path))
    else:
        records = _hub_records(b, language, split)
    return problems_from_records(b, records, language, split)


def _hub_availability(b: Benchmark, language: str, split: str) -> str:
    code = b.languages[language]
    local = _local_dir(b, None)
    if local and (Path(local) / code / Path(b.path.format(file_code=code, split=split)).name).is_file():
        return "local"
    try:
        from huggingface_hub import scan_cache_dir

        if any(r.repo_id == b.hub_id for r in scan_cache_dir().repos):
            return "hub-cache"
    except Exception:
        pass
    return "hub"


register_source("hub", Source(load=_hub_load, availability=_hub_availability))
