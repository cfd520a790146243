"""`copsd report table|curves|figures|html`: paper-style tables, figures and a one-page report."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path

import typer

from copsd.cli.common import DB_OPT, console, err_console
from copsd.errors import CopsdError
from copsd.redact import shorten


class By(str, Enum):
    """What a table's rows are (`--by`)."""

    language = "language"
    model = "model"
    method = "method"


class TableFormat(str, Enum):
    """The file a table is written as (`--format`)."""

    markdown = "markdown"
    latex = "latex"
    csv = "csv"
    html = "html"


app = typer.Typer(
    help="Comparison tables and figures from the results database (reports/ beside it).", no_args_is_help=True
)


def _read_selection(db: str | None, sweep: str | None):
    """The results frame (of one sweep, if named), where reports go by default, and the jobs."""
    from copsd.cli.common import existing_db_url
    from copsd.paths import Workspace
    from copsd.results.db import ResultsDB

    rdb = ResultsDB(existing_db_url(db), readonly=True)
    try:
        if sweep and rdb.get_sweep(sweep) is None:
            known = ", ".join(s.name for s in rdb.sweeps()) or "none"
            raise CopsdError(f"no sweep named '{sweep}' in {rdb.shown}; known: {known}")
        return rdb.results_frame(sweep), Workspace(rdb.url).reports_dir, rdb.jobs(sweep=sweep)
    finally:
        rdb.close()


def _failed(jobs: list) -> list:
    return [j for j in jobs if j.status == "FAILED"]


def _job_line(j) -> str:
    return f"{j.id} ({j.method} {j.model} {j.language} seed {j.seed}): {j.last_error or 'no error recorded'}"


def _no_results_but_failures(df, jobs: list) -> str | None:
    """When the selection has no result and some jobs FAILED: one line that says so (instead of
    'run a sweep first', which is wrong advice after a sweep whose every job failed)."""
    failed = _failed(jobs)
    if not df.empty or not failed:
        return None
    return (
        f"no results for this selection: {len(failed)} of {len(jobs)} job(s) FAILED "
        f"(first: {_job_line(failed[0])}); copsd report table lists them all, copsd report html makes a page"
    )


def _refuse_if_only_failures(df, jobs: list) -> None:
    line = _no_results_but_failures(df, jobs)
    if line:
        raise CopsdError(shorten(line, 500))


@app.command("table")
def table(
    by_: By = typer.Option(By.language, "--by", help="language (rows) x model/method (columns); or model; or method"),
    metric: str = typer.Option(
        "accuracy",
        "--metric",
        help="accuracy (Avg@k), pass_at_k (Pass@k, the paper's headline), maj_at_k, format_rate, ...; "
        "comma-separated for side by side, e.g. pass_at_k,accuracy",
    ),
    grader: str | None = typer.Option(
        None, "--grader", help="paper or lenient: read accuracy/pass/maj from that grader (default: each job's own)"
    ),
    format_: TableFormat = typer.Option(TableFormat.markdown, "--format", help="the file written"),
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
    from copsd.reports.output import check_file_target, file_stem, write_text
    from copsd.reports.table_formats import file_suffix, one_line, render, to_rich
    from copsd.reports.tables import side_by_side, with_grader

    by, fmt = by_.value, format_.value
    suffix = file_suffix(fmt)
    if out is not None:  # before the DB is opened or anything is written
        check_file_target(out, example=f"table.{suffix}")
    df, reports_dir, jobs = _read_selection(db, sweep)
    if _no_results_but_failures(df, jobs):  # a sweep whose jobs all failed: say which and why
        failed = _failed(jobs)
        err_console.print(
            f"no results for this selection: {len(failed)} of {len(jobs)} job(s) FAILED, nothing written:",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )
        for j in failed:
            console.print(one_line(_job_line(j)), highlight=False, markup=False, soft_wrap=True)
        raise typer.Exit(1)
    df = with_grader(df, grader)
    chosen = [x.strip() for x in languages.split(",") if x.strip()] if languages else None
    metrics = [m.strip() for m in metric.split(",") if m.strip()]
    t = side_by_side(df, metrics, by=by, step=step, benchmark=benchmark, budget=budget, languages=chosen)
    text = render(t, fmt)
    name = "_".join(metrics) + (f"_{grader}" if grader else "")
    out = out or check_file_target(reports_dir / f"{file_stem(sweep or 'all')}_by_{by}_{name}.{suffix}", None)
    write_text(out, text)
    if fmt == "csv" and not sys.stdout.isatty():
        sys.stdout.write(text)
    else:
        console.print(to_rich(t))
    err_console.print(f"written to {out}", highlight=False, markup=False, soft_wrap=True)
    if _failed(jobs):
        err_console.print(
            f"{len(_failed(jobs))} job(s) of this selection FAILED and are not in the table "
            "(copsd report html lists them with their errors)",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


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
    from copsd.reports.curves import plot_curves
    from copsd.reports.output import check_file_target, file_stem

    if out is not None:
        if out.suffix.lower() != ".png":
            raise CopsdError(f"--out {out}: give a .png path (the PDF is written beside it)")
        check_file_target(out, beside=[out.with_suffix(".pdf")])
    df, reports_dir, jobs = _read_selection(db, sweep)
    _refuse_if_only_failures(df, jobs)
    if out is None:
        out = reports_dir / f"{file_stem(sweep or 'all')}_curves_{file_stem(metric)}.png"
        check_file_target(out, None, beside=[out.with_suffix(".pdf")])
    path = plot_curves(df, out, metric, benchmark)
    console.print(f"written to {path}", highlight=False, markup=False, soft_wrap=True)


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
    from copsd.reports.output import check_dir_target, file_stem

    if out_dir is not None:
        check_dir_target(out_dir)
    df, reports_dir, jobs = _read_selection(db, sweep)
    _refuse_if_only_failures(df, jobs)
    out_dir = out_dir or check_dir_target(reports_dir, None)
    for name, where in write_figures(df, out_dir, file_stem(sweep or "all"), benchmark).items():
        console.print(f"{name}: {where}", highlight=False, markup=False, soft_wrap=True)


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
    from copsd.reports.output import check_file_target, file_stem
    from copsd.results.db import ResultsDB

    if out is not None:  # before the DB is opened or anything is written (the figures' folder too)
        check_file_target(out, dirs_beside=[out.parent / f"{out.stem}_figures"], example="report.html")
    df, reports_dir, jobs = _read_selection(db, sweep)
    rdb = ResultsDB(existing_db_url(db), readonly=True)
    try:
        row = rdb.get_sweep(sweep) if sweep else None
        source = rdb.shown  # the page is mailed around: never a password in it
    finally:
        rdb.close()
    title = f"copsd sweep '{sweep}'" if sweep else "copsd results"
    out = out or reports_dir / f"{file_stem(sweep or 'all')}_report.html"
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
    from copsd.run.tune_report import trials_frame, tune_figures

    if top < 1:
        raise CopsdError(f"--top must be at least 1, not {top}")
    url = existing_db_url(db)
    df = trials_frame(url, study)  # reads only: a DB without Optuna's tables is left as it was
    if df.empty:
        raise CopsdError(f"study '{study}' has no trials yet; run copsd tune SPEC")
    t = Table(title=f"study '{study}': {len(df)} trial(s), best first")
    for c in df.columns:
        t.add_column(c.removeprefix("param:"))
    for _, row in df.head(top).iterrows():
        t.add_row(*[_trial_value(v) for v in row.tolist()])
    console.print(t)
    for name, where in tune_figures(url, study, out_dir or Workspace(url).reports_dir).items():
        console.print(f"{name}: {where}", highlight=False, soft_wrap=True)


def _trial_value(v) -> str:
    if v is None or (isinstance(v, float) and v != v):  # a null choice, or no value (pruned, failed)
        return "–"
    return f"{v:.4g}" if isinstance(v, float) else str(v)
