"""Turn a local copy of the released COPSD `language_config.py` into a copsd language file.

The released prompt strings cannot ship with copsd (that repository has no licence), so a user
who has the file passes it here. It is read with `ast` and never executed: the two dict literals
(`LANGUAGE_CONFIG`, `AFRICAN_LANGUAGE_CONFIG`) are evaluated with `ast.literal_eval`, and the
file's three closing statements are re-applied by hand, since they change the values the
released code runs with:
  1. every African entry's teacher final instruction becomes its student instruction;
  2. the African entries are merged into LANGUAGE_CONFIG;
  3. `SW` is made an alias of `SWA`.
The result is a YAML file for `COPSD_LANGUAGES` (keyed by our ISO 639-3 codes) whose entries
override our strings: instruction, thinking prefix and the teacher's labels, markers, transition
and final instruction. Jobs record the strings' fingerprint in their id, so results made with
these prompts never merge with results made with ours.
"""

from __future__ import annotations

import ast
import os
from pathlib import Path

import yaml

from copsd.data.languages import canonical_code
from copsd.errors import CopsdError

# The released file is ~20 kB; anything past this is not it (and would be read whole into memory).
MAX_BYTES = 1024 * 1024
# The released file's keys that are not our codes or ISO 639-1 aliases of them.
_CODE_FIXES = {"SW": "swa"}
_REQUIRED = ("student_instruction", "think_prefix", "transition_prompt", "teacher_final_instruction", "labels")
_LABELS = {
    "problem_target": "problem",
    "problem_english": "problem_en",
    "solution_english": "solution_en",
    "ref_begin": "ref_begin",
    "ref_end": "ref_end",
}


def _dict_literal(tree: ast.Module, name: str, path: Path) -> dict | None:
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            try:
                value = ast.literal_eval(node.value)
            except (ValueError, TypeError, SyntaxError, RecursionError, MemoryError) as exc:
                raise CopsdError(
                    f"{path}:{node.lineno}: {name} is not a plain literal ({exc}); expected the released layout"
                ) from None
            if not isinstance(value, dict):
                raise CopsdError(f"{path}:{node.lineno}: {name} is not a dict")
            return value
    return None


def read_released_config(path: Path) -> dict[str, dict]:
    """{released code: entry} as the released code sees it at run time (see the module docstring)."""
    try:
        size = path.stat().st_size
        if size > MAX_BYTES:
            raise CopsdError(
                f"{path}: {size:,} bytes; the released language_config.py is about 20 kB (at most {MAX_BYTES:,} "
                "accepted): is this the right file?"
            )
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CopsdError(
            f"{path}: cannot read ({type(exc).__name__}); pass a local copy of language_config.py"
        ) from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise CopsdError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
    except (RecursionError, MemoryError, ValueError) as exc:  # nesting past the parser's limits, NUL bytes
        raise CopsdError(f"{path}: cannot parse ({type(exc).__name__}); expected the released layout") from None
    main = _dict_literal(tree, "LANGUAGE_CONFIG", path)
    if main is None:
        raise CopsdError(f"{path}: no LANGUAGE_CONFIG = {{...}} found; is this the released language_config.py?")
    african = _dict_literal(tree, "AFRICAN_LANGUAGE_CONFIG", path) or {}
    for entry in african.values():  # statement 1
        if isinstance(entry, dict) and "student_instruction" in entry:
            entry["teacher_final_instruction"] = entry["student_instruction"]
    merged = {**main, **african}  # statement 2
    if "SWA" in merged:  # statement 3
        merged["SW"] = merged["SWA"]
    return merged


def _check_entry(code: object, entry: object, path: Path) -> None:
    """One released entry: a dict of the required strings, `labels` a dict of strings."""
    shown = repr(code)[:60]
    if not isinstance(code, str):
        raise CopsdError(f"{path}: language key {shown} is not a string; expected codes like 'SWA'")
    if not isinstance(entry, dict):
        raise CopsdError(f"{path}: entry {shown} is of type {type(entry).__name__}, not a dict of prompt strings")
    missing = [k for k in _REQUIRED if k not in entry]
    if missing:
        raise CopsdError(f"{path}: entry {shown} lacks {', '.join(missing)}")
    for k in _REQUIRED:
        if k != "labels" and not isinstance(entry[k], str):
            raise CopsdError(f"{path}: entry {shown} field '{k}' is of type {type(entry[k]).__name__}, not text")
    labels = entry["labels"]
    if not isinstance(labels, dict):
        raise CopsdError(f"{path}: entry {shown} field 'labels' is of type {type(labels).__name__}, not a dict")
    for k in _LABELS:
        if k in labels and not isinstance(labels[k], str):
            raise CopsdError(
                f"{path}: entry {shown} field 'labels.{k}' is of type {type(labels[k]).__name__}, not text"
            )


def to_registry(released: dict[str, dict], path: Path) -> dict[str, dict]:
    """Released entries -> our language-file entries (only the prompt strings; names etc. stay ours)."""
    out: dict[str, dict] = {}
    skipped: list[str] = []
    for code, entry in released.items():
        _check_entry(code, entry, path)
        try:
            ours = _CODE_FIXES.get(code) or canonical_code(code.lower())
        except CopsdError:
            skipped.append(code)
            continue
        if ours in out and code in _CODE_FIXES:
            continue  # the SW alias: the SWA entry already gave swa its strings
        labels = entry["labels"]
        teacher = {ours_key: labels[k] for k, ours_key in _LABELS.items() if k in labels}
        teacher["transition"] = entry["transition_prompt"]
        teacher["final_instruction"] = entry["teacher_final_instruction"]
        out[ours] = {
            "instruction": entry["student_instruction"],
            "thinking": entry["think_prefix"].strip(),  # the released collator strips it
            "review": False,
            "missing": False,
            "teacher": teacher,
            "prompt_source": f"released language_config.py ({code})",
        }
    if skipped:
        raise CopsdError(
            f"{path}: language codes {', '.join(skipped)} are not in copsd's registry; add them to a "
            "COPSD_LANGUAGES file first"
        )
    return out


def import_prompts(path: Path, out: Path) -> dict[str, dict]:
    """Parse `path` (never executing it) and write the registry file `out`; returns its entries."""
    path, out = Path(path), Path(out)
    check_out(path, out)
    registry = to_registry(read_released_config(path), path)
    header = (
        f"# Prompt strings imported from {path.name} by `copsd data import-prompts` (parsed, not run).\n"
        "# Use with: COPSD_LANGUAGES=<this file> copsd sweep run ... ; do not redistribute (no licence).\n"
    )
    text = header + yaml.safe_dump(registry, sort_keys=True, allow_unicode=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:  # written whole or not at all
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CopsdError(
            f"--out {out}: cannot write ({exc.strerror or type(exc).__name__}); choose another path"
        ) from None
    return registry


def check_out(src: Path, out: Path) -> None:
    """--out must be a new or regular file in an existing folder, and not the input itself."""
    if out.exists() and src.exists() and out.resolve() == src.resolve():
        raise CopsdError(
            f"--out {out} is the input file; write the language file elsewhere (e.g. -o languages_released.yaml)"
        )
    if out.is_dir():
        raise CopsdError(f"--out {out} is a directory; give a file name, e.g. {out / 'languages_released.yaml'}")
    if out.exists() and not out.is_file():
        raise CopsdError(f"--out {out} is not a regular file; give a path to a .yaml file")
    if not out.parent.is_dir():
        raise CopsdError(f"--out {out}: folder {out.parent} does not exist; create it or choose another path")
