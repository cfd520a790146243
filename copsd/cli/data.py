"""`copsd data list`: benchmarks x languages x splits, and where each comes from."""

from __future__ import annotations

import typer

from copsd.cli.common import console
from copsd.errors import CopsdError

app = typer.Typer(help="Benchmarks and languages: what exists and what is available here.", no_args_is_help=True)


@app.command("list")
def data_list(benchmark: str | None = typer.Option(None, "--benchmark", "-b", help="only this benchmark")):
    """Benchmarks x languages x splits, and where each comes from (bundled, local, Hub cache, Hub, generated)."""
    from rich.table import Table

    from copsd.data.benchmarks import availability, benchmarks
    from copsd.data.languages import get_language

    table = benchmarks()
    if benchmark and benchmark not in table:
        raise CopsdError(f"--benchmark: unknown benchmark '{benchmark}'; known: {', '.join(table)}")
    t = Table(title="benchmarks (AfriMGSM: set COPSD_AFRIMGSM_DIR or eval.data_dir for a local copy)")
    for c in ("benchmark", "language", "name", "splits", "available"):
        t.add_column(c)
    for name, b in table.items():
        if benchmark and name != benchmark:
            continue
        for lang in b.languages:
            L = get_language(lang)
            avail = sorted({availability(name, lang, s) for s in b.splits})
            note = " (prompts: English, no translation)" if L.missing else (" (prompts unreviewed)" if L.review else "")
            t.add_row(name, lang, L.name + note, ",".join(b.splits), ",".join(avail))
    console.print(t)


@app.command("import-prompts")
def import_prompts_cmd(
    path: str = typer.Argument(..., help="a local copy of the released COPSD language_config.py (parsed, never run)"),
    out: str = typer.Option(
        "languages_released.yaml", "--out", "-o", help="the language file to write (for COPSD_LANGUAGES)"
    ),
):
    """Use the released prompt strings without redistributing them.

    Reads the released `language_config.py` with Python's `ast` (the file is never executed),
    re-applies its closing statements (African teacher instruction = student instruction, SW =
    SWA) and writes a language file in copsd's format. Select it with
    `COPSD_LANGUAGES=languages_released.yaml copsd sweep run ...`; jobs then get new ids (the
    prompt strings are part of a job's identity).
    """
    from pathlib import Path

    from copsd.data.import_prompts import import_prompts

    src = Path(path).expanduser()
    if not src.is_file():
        raise CopsdError(f"{src}: file not found; pass a local copy of the released language_config.py")
    entries = import_prompts(src, Path(out).expanduser())
    console.print(
        f"wrote {out}: prompt strings for {len(entries)} languages ({', '.join(sorted(entries))})", soft_wrap=True
    )
    console.print(f"use them with: COPSD_LANGUAGES={out} copsd sweep run SPEC", soft_wrap=True)
