"""The language registry: codes, names, scripts and the prompt strings in each language.

The registry is a data file (`copsd/resources/languages.yaml`) so that translations can be
reviewed and overridden without touching code (`COPSD_LANGUAGES=/path/to/extra.yaml`); plugins
add languages derived from it with `add_language_source` (the testbed's synthetic languages).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from copsd.errors import CopsdError
from copsd.plugins import load_plugins
from copsd.yaml_input import load_yaml, read_text_capped

# A source maps the raw registry (code -> YAML entry) to more entries; existing codes win.
LanguageSource = Callable[[dict], dict[str, dict]]
_SOURCES: list[LanguageSource] = []


def add_language_source(source: LanguageSource) -> None:
    """Add languages computed from the registry's raw entries (called from a plugin's `register`)."""
    _SOURCES.append(source)
    _registry.cache_clear()


# The teacher's labels in English (the released COPSD code's wording). A language's `teacher:`
# block overrides any of them; `{language}` is replaced by the language's English name.
TEACHER_DEFAULTS = {
    "problem": "Problem",
    "problem_en": "English translation of the problem",
    "solution_en": "Correct English reference solution",
    "ref_begin": "=== Reference Solution Begin ===",
    "ref_end": "=== Reference Solution End ===",
    "transition": (
        "After reading the English reference solution above, make sure you truly understand the logic behind "
        "each step\u2014do not copy it or merely paraphrase it. Now, using your own words and independent "
        "reasoning, solve the original problem in {language}. Think step by step, try different approaches, and "
        "do not hesitate to backtrack or reconsider if something does not work:"
    ),
}


@dataclass(frozen=True)
class TeacherStrings:
    problem: str
    problem_en: str
    solution_en: str
    ref_begin: str
    ref_end: str
    transition: str
    final_instruction: str
    translated: bool  # False = the English defaults were used for labels/transition


@dataclass(frozen=True)
class Language:
    code: str
    name: str
    script: str
    instruction: str
    thinking: str
    aliases: tuple[str, ...] = ()
    review: bool = False
    missing: bool = False
    synthetic: bool = False
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def teacher(self) -> TeacherStrings:
        """Labels of the teacher's prompt. As in the released code, the final instruction of the
        teacher equals the student instruction."""
        block = dict(self.extra.get("teacher") or {})
        vals = {k: str(block.get(k, v)).replace("{language}", self.name) for k, v in TEACHER_DEFAULTS.items()}
        final = str(block.get("final_instruction", self.instruction))  # an imported released file may set it
        return TeacherStrings(**vals, final_instruction=final, translated=self.code == "eng" or "transition" in block)

    @property
    def fingerprint(self) -> str:
        """Digest of every prompt string of this language: part of a job's identity, so results made
        with different prompt sets (e.g. an imported copy of the released strings) never merge."""
        import hashlib
        import json

        strings = {"name": self.name, "instruction": self.instruction, "thinking": self.thinking}
        strings.update({f"teacher.{k}": v for k, v in vars(self.teacher).items() if isinstance(v, str)})
        strings["eval_template"] = str(self.extra.get("eval_template", ""))
        blob = json.dumps(strings, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(blob).hexdigest()[:12]


def _load_yaml(path: Path | str, what: str = "language file") -> dict:
    try:
        data = load_yaml(read_text_capped(Path(str(path)), f"{what} {path}"), f"{what} {path}") or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise CopsdError(f"{what} {path}: not valid YAML{at}: {getattr(exc, 'problem', exc)}") from None
    except UnicodeDecodeError:
        raise CopsdError(f"{what} {path}: not UTF-8 text; save it as UTF-8") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) or v is None for v in data.values()):
        raise CopsdError(f"{what} {path}: must map language codes to entries (name, instruction, thinking, ...)")
    return data


@lru_cache(maxsize=8)
def _registry(override: str | None) -> dict[str, Language]:
    raw = _load_yaml(resources.files("copsd") / "resources" / "languages.yaml")
    if override:
        if not Path(override).is_file():
            raise CopsdError(f"COPSD_LANGUAGES={override}: file not found")
        for code, entry in _load_yaml(override, "COPSD_LANGUAGES file").items():
            raw[code] = {**raw.get(code, {}), **(entry or {})}
    for source in _SOURCES:
        for code, entry in source(dict(raw)).items():
            raw.setdefault(code, entry)
    known = {"name", "script", "instruction", "thinking", "aliases", "review", "missing", "synthetic"}
    langs = {}
    for code, entry in raw.items():
        for key in ("name", "instruction", "thinking"):
            if key not in entry:
                where = f"COPSD_LANGUAGES file {override}" if override else "language registry"
                raise CopsdError(
                    f"{where}: entry '{code}' lacks '{key}' (new languages need name, instruction, thinking)"
                )
        langs[code] = Language(
            code=code,
            name=entry["name"],
            script=entry.get("script", "Latin"),
            instruction=entry["instruction"],
            thinking=entry["thinking"],
            aliases=tuple(entry.get("aliases") or ()),
            review=bool(entry.get("review", False)),
            missing=bool(entry.get("missing", False)),
            synthetic=bool(entry.get("synthetic", False)),
            extra={k: v for k, v in entry.items() if k not in known},
        )
    return langs


def registry() -> dict[str, Language]:
    load_plugins()
    return _registry(os.environ.get("COPSD_LANGUAGES") or None)


def canonical_code(code: str) -> str:
    """Map a code or alias (`sw`, `SWA`) to the registry key (`swa`); unknown codes raise."""
    langs = registry()
    c = str(code).strip().lower()
    if c in langs:
        return c
    for lang in langs.values():
        if c in lang.aliases:
            return lang.code
    raise CopsdError(
        f"unknown language '{code}'; known: {', '.join(sorted(langs))} "
        "(or their ISO 639-1 aliases; add new ones with COPSD_LANGUAGES=file.yaml)"
    )


def get_language(code: str) -> Language:
    return registry()[canonical_code(code)]
