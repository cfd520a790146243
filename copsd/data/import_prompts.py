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
from pathlib import Path

import yaml

from copsd.data.languages import canonical_code
from copsd.errors import CopsdError

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
            except ValueError as exc:
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
        source = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise CopsdError(
            f"{path}: cannot read ({type(exc).__name__}); pass a local copy of language_config.py"
        ) from None
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        raise CopsdError(f"{path}:{exc.lineno}: not valid Python ({exc.msg})") from None
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


def to_registry(released: dict[str, dict], path: Path) -> dict[str, dict]:
    """Released entries -> our language-file entries (only the prompt strings; names etc. stay ours)."""
    out: dict[str, dict] = {}
    skipped: list[str] = []
    for code, entry in released.items():
        missing = [k for k in _REQUIRED if k not in entry]
        if missing:
            raise CopsdError(f"{path}: entry '{code}' lacks {', '.join(missing)}")
        try:
            ours = _CODE_FIXES.get(code) or canonical_code(code.lower())
        except CopsdError:
            skipped.append(code)
            continue
        if ours in out and code in _CODE_FIXES:
            continue  # the SW alias: the SWA entry already gave swa its strings
        labels = entry["labels"]
        teacher = {ours_key: str(labels[k]) for k, ours_key in _LABELS.items() if k in labels}
        teacher["transition"] = str(entry["transition_prompt"])
        teacher["final_instruction"] = str(entry["teacher_final_instruction"])
        out[ours] = {
            "instruction": str(entry["student_instruction"]),
            "thinking": str(entry["think_prefix"]).strip(),  # the released collator strips it
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
    registry = to_registry(read_released_config(Path(path)), Path(path))
    header = (
        f"# Prompt strings imported from {Path(path).name} by `copsd data import-prompts` (parsed, not run).\n"
        "# Use with: COPSD_LANGUAGES=<this file> copsd sweep run ... ; do not redistribute (no licence).\n"
    )
    out.write_text(header + yaml.safe_dump(registry, sort_keys=True, allow_unicode=True), encoding="utf-8")
    return registry
