"""`copsd report table|curves|figures|html`: paper-style tables, figures and a one-page report."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from copsd.cli.common import DB_OPT, console, err_console
from copsd.errors import CopsdError

app = typer.Typer(
    help="Comparison tables and figures from the results database (reports/ beside it).", no_args_is_help=True
)
FORMATS = {"markdown": "md", "latex": "tex", "csv": "csv", "html": "html"}


def _results(db: str | None, sweep: str | None):
    """The results frame (of one sweep, if named) and where reports go by default."""
    from copsd.cli.common import existing_db_url
    from copsd.paths import Workspace
    from copsd.results.db import ResultsDB

    rdb = ResultsDB(existing_db_url(db))
    try:
        if sweep and rdb.get_sweep(sweep) is None:
            known = ", ".join(s.name for s in rdb.sweeps()) or "none"
            raise CopsdError(f"no sweep named '{sweep}' in {rdb.url}; known: {known}")
        return rdb.results_frame(sweep), Workspace(rdb.url).reports_dir
    finally:
        rdb.close()


@app.command("table")
def table(
    by: str = typer.Option("language", "--by", help="language (rows) x model/method (columns); or model; or method"),
    metric: str = typer.Option(
        "accuracy",
        "--metric",
        help="accuracy (Avg@k), pass_at_k (Pass@k, the paper's headline), maj_at_k, format_rate, ...; "
        "comma-separated for side by side, e.g. pass_at_k,accuracy",
    ),
    grader: str | None = typer.Option(
        None, "--grader", help="paper or lenient: read accuracy/pass/maj from that grader (default: each job's own)"
    ),
    fmt: str = typer.Option("markdown", "--format", help="markdown, latex, csv or html (the file written)"),
    sweep: str | None = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    step: str = typer.Option("final", "--step", help="checkpoint per job: final, best, or a step number"),
    benchmark: str | None = typer.Option(None, "--benchmark", help="when results span several benchmarks"),
    budget: int | None = typer.Option(None, "--budget", help="decoding budget (max_new_tokens); default: largest"),
    languages: str | None = typer.Option(
        None,
        "--languages",
        help="comma-separated languages every average is over; default: those all columns "
        "have, without English (named in the title)",
    ),
    out: Path | None = typer.Option(
        None, "--out", help="output file; default reports/<sweep>_by_<by>_<metric>.<ext> beside the DB"
    ),
    db: str | None = DB_OPT,
):
    """Paper-style comparison table (mean ± std over seeds, (Δ vs base), best per row in bold)."""
    from copsd.reports.tables import render, side_by_side, to_rich, with_grader

    if fmt not in FORMATS:
        raise CopsdError(f"--format must be markdown, latex, csv or html, not '{fmt}'")
    df, reports_dir = _results(db, sweep)
    df = with_grader(df, grader)
    chosen = [x.strip() for x in languages.split(",") if x.strip()] if languages else None
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    t = side_by_side(df, metrics, by=by, step=step, benchmark=benchmark, budget=budget, languages=chosen)
    text = render(t, fmt)
    name = "_".join(metrics) + (f"_{grader}" if grader else "")
    out = out or reports_dir / f"{sweep or 'all'}_by_{by}_{name}.{FORMATS[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    if fmt == "csv" and not sys.stdout.isatty():
        sys.stdout.write(text)
    else:
        console.print(to_rich(t))
    err_console.print(f"written to {out}")


@app.command("curves")
def curves(
    metric: str = typer.Option("accuracy", "--metric", help="accuracy, pass_at_k, format_rate, ..."),
    sweep: str | None = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    benchmark: str | None = typer.Option(None, "--benchmark", help="when results span several benchmarks"),
    out: Path | None = typer.Option(
        None, "--out", help="PNG path; default reports/<sweep>_curves_<metric>.png beside the DB"
    ),
    db: str | None = DB_OPT,
):
    """Training dynamics: the metric at each evaluated checkpoint, per language and method (PNG)."""
    from copsd.reports.plots import plot_curves

    df, reports_dir = _results(db, sweep)
    path = plot_curves(df, out or reports_dir / f"{sweep or 'all'}_curves_{metric}.png", metric, benchmark)
    console.print(f"written to {path}")


@app.command("figures")
def figures(
    sweep: str | None = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    benchmark: str | None = typer.Option(None, "--benchmark", help="when results span several benchmarks"),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="default: reports/ beside the DB"),
    db: str | None = DB_OPT,
):
    """The paper's analysis figures (PNG + PDF): training curves from the base, gain per language,
    format rate vs accuracy with Pearson r, repetition by method, test-time scaling."""
    from copsd.reports.figures import write_figures

    df, reports_dir = _results(db, sweep)
    for name, where in write_figures(df, out_dir or reports_dir, sweep or "all", benchmark).items():
        console.print(f"{name}: {where}", highlight=False, soft_wrap=True)


@app.command("html")
def html_report(
    sweep: str | None = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    out: Path | None = typer.Option(None, "--out", help="default: reports/<sweep>_report.html beside the DB"),
    db: str | None = DB_OPT,
):
    """One static page with the sweep's tables, figures, jobs and provenance (self-contained:
    figures embedded, opens offline in any browser)."""
    from copsd.cli.common import existing_db_url
    from copsd.reports.html_report import write_html_report
    from copsd.results.db import ResultsDB

    df, reports_dir = _results(db, sweep)
    rdb = ResultsDB(existing_db_url(db))
    try:
        jobs = rdb.jobs(sweep=sweep)
        row = rdb.get_sweep(sweep) if sweep else None
        source = rdb.url
    finally:
        rdb.close()
    title = f"copsd sweep '{sweep}'" if sweep else "copsd results"
    out = out or reports_dir / f"{sweep or 'all'}_report.html"
    path = write_html_report(df, jobs, out, title=title, description=row.description if row else "", source=source)
    console.print(f"written to {path} (open it in a browser)", highlight=False, soft_wrap=True)


@app.command("tune")
def tune_report(
    study: str = typer.Argument(..., help="the study's name (the tuning spec's `name`)"),
    top: int = typer.Option(10, "--top", help="best trials shown"),
    out_dir: Path | None = typer.Option(None, "--out-dir", help="figures' folder; default: reports/ beside the DB"),
    db: str | None = DB_OPT,
):
    """Best trials of a `copsd tune` study, and its optimisation-history and parameter-importance plots."""
    from rich.table import Table

    from copsd.cli.common import existing_db_url
    from copsd.paths import Workspace
    from copsd.run.tune import trials_frame, tune_figures

    url = existing_db_url(db)
    df = trials_frame(url, study)
    if df.empty:
        raise CopsdError(f"study '{study}' has no trials yet; run copsd tune SPEC")
    t = Table(title=f"study '{study}': {len(df)} trial(s), best first")
    for c in df.columns:
        t.add_column(c.removeprefix("param:"))
    for _, row in df.head(top).iterrows():
        t.add_row(*[_cell(v) for v in row.tolist()])
    console.print(t)
    for name, where in tune_figures(url, study, out_dir or Workspace(url).reports_dir).items():
        console.print(f"{name}: {where}", highlight=False, soft_wrap=True)


def _cell(v) -> str:
    if v is None or (isinstance(v, float) and v != v):  # a null choice, or no value (pruned, failed)
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
