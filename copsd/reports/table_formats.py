"""A comparison table (`copsd.reports.tables.Table`) as text: CSV (`DataFrame.to_csv`), LaTeX and
HTML (pandas' `Styler`), Markdown (a few lines: pandas' `to_markdown` needs `tabulate`), and a
rich terminal table. Every name is the user's (model directories, languages, sweeps): each format
shows it as written, never as markup, on one line."""

from __future__ import annotations

import html
import re
from collections.abc import Callable

import pandas as pd

from copsd.errors import CopsdError
from copsd.reports.tables import Cell, Table

FORMATS = {"markdown": "md", "latex": "tex", "csv": "csv", "html": "html"}  # --format: file suffix


def one_line(text) -> str:
    """A name on one line: line breaks, tabs and other control characters become spaces (a
    newline would end a Markdown or CSV row, a blank line a LaTeX cell)."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", str(text))


_LATEX = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text) -> str:
    """Names and titles as LaTeX text (model names carry `_`, titles `%`, users anything)."""
    return "".join(_LATEX.get(ch, ch) for ch in one_line(text)).replace("±", r"$\pm$")


_MD_HTML = {"&": "&amp;", "<": "&lt;", ">": "&gt;"}
_MD_PUNCT = set("\\|*`~[]$")  # cell ends, emphasis, code, strike-through, links and images, math


def md_escape(text) -> str:
    """A name as Markdown text that renders as written: HTML (`<img onerror=...>`) as entities, the
    characters Markdown (and GitHub's math) give meaning to backslash-escaped, `|` so it cannot
    end a cell, one line. `_` is escaped where it could open or close emphasis (not inside a word:
    `Qwen3_1.7B` stays readable)."""
    s = one_line(text)
    out = []
    for i, ch in enumerate(s):
        if ch in _MD_HTML:
            out.append(_MD_HTML[ch])
        elif ch in _MD_PUNCT:
            out.append("\\" + ch)
        elif ch == "_" and not (0 < i < len(s) - 1 and s[i - 1].isalnum() and s[i + 1].isalnum()):
            out.append("\\_")
        else:
            out.append(ch)
    return "".join(out)


def csv_cell(text) -> str:
    """A name as a CSV cell a spreadsheet shows as text: one line, and a leading `=`, `+`, `-` or
    `@` (which Excel and LibreOffice would run as a formula) quoted with `'`."""
    s = one_line(text)
    return "'" + s if s[:1] in ("=", "+", "-", "@") else s


def cell_text(cell: Cell | None, digits: int = 2) -> str:
    """`mean ± std (+delta)`, each part only where it exists; `–` for no result."""
    if cell is None:
        return "–"
    s = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        s += f" ± {cell.std:.{digits}f}"
    if cell.delta is not None:
        s += f" ({cell.delta:+.{digits}f})"
    return s


def column_name(c: tuple[str, ...]) -> str:
    return " ".join(c)


def _frame(t: Table, escape: Callable[[str], str], bold: Callable[[str], str]) -> pd.DataFrame:
    """The table as text cells: names escaped, the best cell of each comparison in `bold`; the row
    name heads the label column (the name of the columns' index, drawn in the corner)."""

    def text(r: str, c: tuple[str, ...]) -> str:
        cell = t.cells.get((r, c))
        s = escape(cell_text(cell))
        return bold(s) if cell is not None and cell.best else s

    columns = pd.Index([escape(column_name(c)) for c in t.columns], name=escape(t.row_name))
    index = pd.Index([escape(r) for r in t.rows])
    return pd.DataFrame([[text(r, c) for c in t.columns] for r in t.rows], index=index, columns=columns, dtype=object)


def to_csv(t: Table) -> str:
    """One row per table row; per column its mean, `:std` and `:delta` (4 decimals, empty where none)."""
    header, values = [], []
    for c in t.columns:
        name = csv_cell("/".join(c))
        header += [name, f"{name}:std", f"{name}:delta"]
    for r in t.rows:
        line: list[float | None] = []
        for c in t.columns:
            cell = t.cells.get((r, c))
            line += [None, None, None] if cell is None else [cell.mean, cell.std, cell.delta]
        values.append(line)
    frame = pd.DataFrame(values, index=pd.Index([csv_cell(r) for r in t.rows], name=csv_cell(t.row_name)),
                         columns=header, dtype=float)  # fmt: skip
    return frame.to_csv(float_format="%.4f", lineterminator="\n")


def to_markdown(t: Table) -> str:
    frame = _frame(t, md_escape, lambda s: f"**{s}**")
    heads = [md_escape(t.row_name), *(md_escape(column_name(c)) for c in t.columns)]
    out = [f"**{md_escape(t.title)}**", "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    out += ["| " + " | ".join([md_escape(r), *cells]) + " |" for r, cells in zip(t.rows, frame.values.tolist())]
    return "\n".join(out) + "\n"


def to_latex(t: Table) -> str:
    """A `table` float (caption below) around Styler's booktabs tabular, a rule above the Avg row."""
    frame = _frame(t, latex_escape, lambda s: r"\textbf{" + s + "}")
    lines = frame.style.to_latex(hrules=True, column_format="l" + "r" * len(t.columns)).splitlines()
    if "Avg" in t.rows:  # tabular, toprule, header, midrule, then one line per row
        lines.insert(4 + t.rows.index("Avg"), r"\midrule")
    float_env = [r"\begin{table}[t]", r"\centering", *lines, r"\caption{" + latex_escape(t.title) + "}", r"\end{table}"]
    return "\n".join(float_env) + "\n"


def to_html(t: Table) -> str:
    frame = _frame(t, html.escape, lambda s: f"<b>{s}</b>")
    return frame.style.to_html(exclude_styles=True, caption=html.escape(t.title))


RENDERERS = {"markdown": to_markdown, "latex": to_latex, "csv": to_csv, "html": to_html}


def file_suffix(fmt: str) -> str:
    """The suffix of a table file in `fmt` (`--format`), or CopsdError naming the formats."""
    if fmt not in FORMATS:
        raise CopsdError(f"--format must be markdown, latex, csv or html, not '{fmt}'")
    return FORMATS[fmt]


def render(t: Table, fmt: str = "markdown") -> str:
    """The table in one of FORMATS."""
    file_suffix(fmt)
    return RENDERERS[fmt](t)


def to_rich(t: Table):
    """The terminal table: the best cells bold green, a rule above the Avg row when it is last."""
    from rich.markup import escape
    from rich.table import Table as RichTable

    # names are the user's: `[/x]` in a model or language would be rich markup (and an error)
    rt = RichTable(title=escape(one_line(t.title)))
    rt.add_column(escape(one_line(t.row_name)), style="bold")
    for c in t.columns:
        rt.add_column(escape(one_line(column_name(c))), justify="right")
    for r in t.rows:
        cells = []
        for c in t.columns:
            cell = t.cells.get((r, c))
            s = cell_text(cell)
            cells.append(f"[bold green]{s}[/]" if cell is not None and cell.best else s)
        rt.add_row(
            escape(one_line(r)),
            *cells,
            end_section=(r == t.rows[-2] if len(t.rows) > 1 and t.rows[-1] == "Avg" else False),
        )
    return rt
