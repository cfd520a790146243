"""Paper-style comparison tables from the results database.

`build_table` turns result rows into a grid of cells (mean over seeds, std when there are
several, delta vs the base model, best per row); `render` writes it as markdown, LaTeX, CSV or
HTML. Rates are shown in percent; `mean_length` in tokens.

Every average over languages (the Avg row; the by-model and by-method views) is over one set of
languages, the same for every column, named in the title: `languages=` when given, else the
languages every column has results for, without English (the paper averages the low-resource
languages; English is the reference and gets its own row below the Avg).
"""

from __future__ import annotations

import csv
import io
import math
import re
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from copsd.config import short_model_name
from copsd.errors import CopsdError
from copsd.results.schema import REPORT_METRICS

METHOD_ORDER = ("base", "sft", "grpo", "copsd")
REFERENCE_LANGUAGES = ("eng",)  # shown apart from, and not counted in, the default average
LOWER_IS_BETTER = {
    "truncation_rate",
    "mean_length",
    "repetition_2",
    "repetition_3",
    "repetition_4",
    "repetition_5",
    "repetition_6",
    "repetition_rate",
}
NOT_PERCENT = {"mean_length"}


@dataclass
class Cell:
    mean: float
    std: float | None = None  # over seeds, when there are >= 2
    delta: float | None = None  # vs base in the same row/model
    n_seeds: int = 1
    best: bool = False


@dataclass
class Table:
    title: str
    row_name: str
    rows: list[str]
    columns: list[tuple[str, ...]]  # (model, method) or (method,) or (model,)
    cells: dict[tuple[str, tuple[str, ...]], Cell] = field(default_factory=dict)
    groups: list[list[int]] = field(default_factory=list)  # column indices compared for "best"


def _method_key(m: str) -> tuple:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def check_selection(df: pd.DataFrame, metric: str, benchmark: str | None) -> pd.DataFrame:
    """Validate the metric and narrow the results to one benchmark (shared by tables and plots)."""
    if metric not in REPORT_METRICS:
        raise CopsdError(f"unknown metric '{metric}'; choose from: {', '.join(REPORT_METRICS)}")
    if df.empty:
        raise CopsdError("no results in the database for this selection; run a sweep first (copsd sweep run SPEC)")
    if benchmark:
        return df[df.benchmark == benchmark]
    if df.benchmark.nunique() > 1:
        raise CopsdError(
            f"results span several benchmarks ({', '.join(sorted(df.benchmark.unique()))}); pick one with --benchmark"
        )
    return df


def at_full_budget(df: pd.DataFrame) -> pd.DataFrame:
    """Each job's rows at its largest decoding budget (the smaller ones serve test-time scaling)."""
    return df[df.max_new_tokens == df.groupby("job_id").max_new_tokens.transform("max")]


def select_rows(
    df: pd.DataFrame, metric: str, step: str = "final", benchmark: str | None = None, budget: int | None = None
) -> pd.DataFrame:
    """One result per job: the final (largest) checkpoint, the best one, or a given step."""
    df = check_selection(df, metric, benchmark)
    if budget:
        df = df[df.max_new_tokens == budget]
    else:
        df = at_full_budget(df)
    if df.empty:
        raise CopsdError("no results match --benchmark/--budget")
    if step == "final":
        df = df[df.step == df.groupby("job_id").step.transform("max")]
    elif step == "best":
        idx = (
            df.groupby("job_id")[metric].idxmin()
            if metric in LOWER_IS_BETTER
            else df.groupby("job_id")[metric].idxmax()
        )
        df = df.loc[idx]
    else:
        try:
            s = int(step)
        except ValueError:
            raise CopsdError(f"--step must be 'final', 'best' or a checkpoint number, not '{step}'") from None
        # base jobs have only step 0: they stand at every step
        df = df[(df.step == s) | (df.method == "base")]
    df = df.copy()
    df["model"] = df.model.map(short_model_name)
    return df


def averaged_languages(df: pd.DataFrame, languages: list[str] | None = None) -> list[str]:
    """The languages every average is taken over (see the module docstring)."""
    present = set(df.language.unique())
    if languages:
        missing = [lang for lang in languages if lang not in present]
        if missing:
            raise CopsdError(f"--languages: no results for {', '.join(missing)}; present: {', '.join(sorted(present))}")
        return list(dict.fromkeys(languages))
    per_column = [set(g) for _, g in df.groupby(["model", "method"]).language]
    common = set.intersection(*per_column) if per_column else set()
    chosen = sorted(common - set(REFERENCE_LANGUAGES)) or sorted(common)
    if not chosen:
        raise CopsdError("no language has results in every column; choose the averaged ones with --languages")
    return chosen


def _mean_over(df: pd.DataFrame, keys: list[str], languages: list[str]) -> pd.Series:
    """Per (keys..., seed): the mean over `languages`, only where all of them have a value."""
    sub = df[df.language.isin(languages)]
    per_lang = sub.groupby([*keys, "seed", "language"]).value.mean()
    grouped = per_lang.groupby(level=[*keys, "seed"])
    complete = grouped.count() == len(languages)
    return grouped.mean()[complete]


def _scale(metric: str) -> float:
    return 1.0 if metric in NOT_PERCENT else 100.0


def build_table(
    df: pd.DataFrame,
    by: str = "language",
    metric: str = "accuracy",
    step: str = "final",
    benchmark: str | None = None,
    budget: int | None = None,
    languages: list[str] | None = None,
) -> Table:
    df = select_rows(df, metric, step, benchmark, budget)
    df["value"] = df[metric] * _scale(metric)
    averaged = averaged_languages(df, languages)
    models = sorted(df.model.unique())
    methods = sorted(df.method.unique(), key=_method_key)
    if by == "language":
        shown = sorted(df.language.unique())
        rows = [x for x in shown if x not in REFERENCE_LANGUAGES]
        columns = [(m, me) for m in models for me in methods if ((df.model == m) & (df.method == me)).any()]
        per_seed = df.groupby(["language", "model", "method", "seed"]).value.mean()
        # Avg row: mean over the averaged languages within each seed, then over seeds
        avg = _mean_over(df, ["model", "method"], averaged)
        title_rows = rows + ["Avg"] + [x for x in shown if x in REFERENCE_LANGUAGES]

        def seeds_of(r, c):
            if r == "Avg":
                return avg.loc[c] if c in avg.index.droplevel("seed") else None
            key = (r, *c)
            return per_seed.loc[key] if key in per_seed.index.droplevel("seed") else None

        groups = [[i for i, c in enumerate(columns) if c[0] == m] for m in models]
        row_name = "language"
    elif by in ("model", "method"):
        per_seed = _mean_over(df, ["model", "method"], averaged)  # mean over the averaged languages
        if by == "model":
            title_rows, columns = models, [(me,) for me in methods]

            def seeds_of(r, c):
                key = (r, c[0])
                return per_seed.loc[key] if key in per_seed.index.droplevel("seed") else None
        else:
            title_rows, columns = list(methods), [(m,) for m in models]

            def seeds_of(r, c):
                key = (c[0], r)
                return per_seed.loc[key] if key in per_seed.index.droplevel("seed") else None

        groups = [list(range(len(columns)))]
        row_name = by
    else:
        raise CopsdError(f"--by must be language, model or method, not '{by}'")

    label = f"{metric}{'' if metric in NOT_PERCENT else ' (%)'}"
    t = Table(
        title=f"{label} by {by}, {step} checkpoint ({steps_shown(df)}); averages over {', '.join(averaged)}",
        row_name=row_name,
        rows=title_rows,
        columns=columns,
        groups=groups if by != "method" else [],
    )
    for r in title_rows:
        for c in columns:
            vals = seeds_of(r, c)
            if vals is None or len(vals) == 0:
                continue
            v = np.asarray(vals, dtype=float)
            v = v[~np.isnan(v)]  # a seed with nothing measured (e.g. no identifiable language) is left out
            if len(v) == 0:
                continue
            t.cells[(r, c)] = Cell(float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else None, None, len(v))
    # delta vs base (the Avg row's columns average the same languages, so its delta is paired)
    for (r, c), cell in t.cells.items():
        if by == "language" and c[1] != "base" and (r, (c[0], "base")) in t.cells:
            cell.delta = cell.mean - t.cells[(r, (c[0], "base"))].mean
        elif by == "model" and c[0] != "base" and (r, ("base",)) in t.cells:
            cell.delta = cell.mean - t.cells[(r, ("base",))].mean
        elif by == "method" and r != "base" and ("base", c) in t.cells:
            cell.delta = cell.mean - t.cells[("base", c)].mean
    # best per row (within each model group); for by=method, best per column
    lower = metric in LOWER_IS_BETTER
    pick = min if lower else max
    if by == "method":
        for c in columns:
            present = [t.cells[(r, c)] for r in title_rows if (r, c) in t.cells]
            if len(present) > 1:
                b = pick(x.mean for x in present)
                for x in present:
                    x.best = math.isclose(x.mean, b)
    else:
        for r in title_rows:
            for g in t.groups:
                present = [t.cells[(r, columns[i])] for i in g if (r, columns[i]) in t.cells]
                if len(present) > 1:
                    b = pick(x.mean for x in present)
                    for x in present:
                        x.best = math.isclose(x.mean, b)
    return t


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


def one_line(text) -> str:
    """A name on one line: line breaks, tabs and other control characters become spaces (a
    newline would end a Markdown or CSV row, a blank line a LaTeX cell)."""
    return re.sub(r"[\x00-\x1f\x7f\u2028\u2029]", " ", str(text))


def latex_escape(text: str) -> str:
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


def steps_shown(df: pd.DataFrame) -> str:
    """Which checkpoint steps the table's trained cells come from, e.g. 'step 50; base: step 0'."""
    trained = sorted(int(x) for x in df[df.method != "base"].step.unique())
    if not trained:
        return "step 0"
    shown = f"step {trained[0]}" if len(trained) == 1 else "steps " + ", ".join(map(str, trained))
    return shown + ("; base: step 0" if (df.method == "base").any() else "")


def metric_label(metric: str, k: int | None) -> str:
    """The paper's names: accuracy = Avg@k, pass_at_k = Pass@k, maj_at_k = Maj@k."""
    names = {"accuracy": "Avg@{k}", "pass_at_k": "Pass@{k}", "maj_at_k": "Maj@{k}"}
    return names[metric].format(k=k or "k") if metric in names else metric


def with_grader(df: pd.DataFrame, grader: str | None) -> pd.DataFrame:
    """Read accuracy / pass_at_k / maj_at_k from one grader's columns (`--grader`)."""
    if grader is None:
        return df
    if grader not in ("paper", "lenient"):
        raise CopsdError(f"--grader must be paper or lenient, not '{grader}'")
    df = df.copy()
    for m in ("accuracy", "pass_at_k", "maj_at_k"):
        col = f"{m}_{grader}"
        if col not in df or df[col].isna().any():
            raise CopsdError(
                f"--grader {grader}: some results predate per-grader columns (copsd < 0.2); re-evaluate them or drop --grader"
            )
        df[m] = df[col]
    return df


def side_by_side(df: pd.DataFrame, metrics: list[str], **kwargs) -> Table:
    """One table per metric, merged so each column shows every metric next to each other
    (e.g. Pass@12 and Avg@12 under each model/method)."""
    if len(metrics) == 1:
        return build_table(df, metric=metrics[0], **kwargs)
    k = int(df.n_samples.max()) if "n_samples" in df and len(df) else None
    parts = [(metric_label(m, k), build_table(df, metric=m, **kwargs)) for m in metrics]
    first = parts[0][1]
    columns = [(*c, name) for c in first.columns for name, _ in parts]
    merged = Table(
        title=" / ".join(name for name, _ in parts) + " (%)" + first.title[first.title.index(" by ") :],
        row_name=first.row_name,
        rows=first.rows,
        columns=columns,
    )
    for name, t in parts:
        for (r, c), cell in t.cells.items():
            merged.cells[(r, (*c, name))] = cell
    width = len(parts)
    merged.groups = [[i * width + j for i in g] for g in first.groups for j in range(width)]
    return merged


def _fmt(cell: Cell | None, digits: int = 2) -> str:
    if cell is None:
        return "–"
    s = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        s += f" ± {cell.std:.{digits}f}"
    if cell.delta is not None:
        s += f" ({cell.delta:+.{digits}f})"
    return s


def _col_name(c: tuple[str, ...]) -> str:
    return " ".join(c)


def render(t: Table, fmt: str = "markdown") -> str:
    heads = [t.row_name] + [_col_name(c) for c in t.columns]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        header = [csv_cell(t.row_name)]
        for c in t.columns:
            n = csv_cell("/".join(c))
            header += [n, f"{n}:std", f"{n}:delta"]
        w.writerow(header)
        for r in t.rows:
            line = [csv_cell(r)]
            for c in t.columns:
                cell = t.cells.get((r, c))
                line += [
                    "" if cell is None else f"{cell.mean:.4f}",
                    "" if cell is None or cell.std is None else f"{cell.std:.4f}",
                    "" if cell is None or cell.delta is None else f"{cell.delta:.4f}",
                ]
            w.writerow(line)
        return buf.getvalue()

    def cell_text(r, c, bold):
        cell = t.cells.get((r, c))
        s = _fmt(cell)
        return bold(s) if cell is not None and cell.best else s

    if fmt == "markdown":
        md = md_escape
        out = [f"**{md(t.title)}**", "", "| " + " | ".join(md(h) for h in heads) + " |", "|" + "---|" * len(heads)]
        for r in t.rows:
            out.append("| " + " | ".join([md(r)] + [cell_text(r, c, lambda s: f"**{s}**") for c in t.columns]) + " |")
        return "\n".join(out) + "\n"
    if fmt == "latex":
        esc = latex_escape
        out = [
            r"\begin{table}[t]",
            r"\centering",
            r"\begin{tabular}{l" + "r" * len(t.columns) + "}",
            r"\toprule",
            " & ".join(esc(h) for h in heads) + r" \\",
            r"\midrule",
        ]
        for r in t.rows:
            if r == "Avg":
                out.append(r"\midrule")
            out.append(
                " & ".join([esc(r)] + [cell_text(r, c, lambda x: r"\textbf{" + x + "}") for c in t.columns]).replace(
                    "±", r"$\pm$"
                )
                + r" \\"
            )
        out += [r"\bottomrule", r"\end{tabular}", r"\caption{" + esc(t.title) + "}", r"\end{table}"]
        return "\n".join(out) + "\n"
    if fmt == "html":
        import html as h

        out = [
            f"<table>\n<caption>{h.escape(t.title)}</caption>",
            "<tr>" + "".join(f"<th>{h.escape(x)}</th>" for x in heads) + "</tr>",
        ]
        for r in t.rows:
            tds = "".join(
                f"<td>{cell_text(r, c, lambda s: '<b>' + h.escape(s) + '</b>') if (t.cells.get((r, c)) and t.cells[(r, c)].best) else h.escape(_fmt(t.cells.get((r, c))))}</td>"
                for c in t.columns
            )
            out.append(f"<tr><th>{h.escape(r)}</th>{tds}</tr>")
        out.append("</table>")
        return "\n".join(out) + "\n"
    raise CopsdError(f"--format must be markdown, latex, csv or html, not '{fmt}'")


def to_rich(t: Table):
    from rich.markup import escape
    from rich.table import Table as RichTable

    # names are the user's: `[/x]` in a model or language would be rich markup (and an error)
    rt = RichTable(title=escape(one_line(t.title)))
    rt.add_column(escape(one_line(t.row_name)), style="bold")
    for c in t.columns:
        rt.add_column(escape(one_line(_col_name(c))), justify="right")
    for r in t.rows:
        cells = []
        for c in t.columns:
            cell = t.cells.get((r, c))
            s = _fmt(cell)
            cells.append(f"[bold green]{s}[/]" if cell is not None and cell.best else s)
        rt.add_row(
            escape(one_line(r)),
            *cells,
            end_section=(r == t.rows[-2] if len(t.rows) > 1 and t.rows[-1] == "Avg" else False),
        )
    return rt
