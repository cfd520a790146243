"""`copsd tune SPEC`: an Optuna study over the spec's `search:` block (copsd/run/tune.py)."""

from __future__ import annotations

import typer
from rich.markup import escape

from copsd.cli.common import DB_OPT, ONLY_HELP, console, err_console


def tune_cmd(
    spec: str = typer.Argument(..., help="spec file with a `search:` block, e.g. sweeps/tune-demo.yaml"),
    n_trials: int | None = typer.Option(
        None,
        "--n-trials",
        help="trials wanted in the study, complete, pruned or failed (spec: search.n_trials)",
    ),
    db: str | None = DB_OPT,
    only: list[str] | None = typer.Option(None, "--only", help="restrict each trial's jobs: " + ONLY_HELP),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ...; default: cuda if available"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="do not log to MLflow"),
    worker: int | None = typer.Option(
        None,
        "--worker",
        help="this process's index when several share the study (its sampler seed differs); "
        "default: the SLURM array index, else 0",
    ),
):
    """Hyperparameter search: each trial runs the spec's jobs with values drawn from `search.params`;
    the study lives in the results DB (resumable; run it in several processes to share one study).
    Stops after search.max_failures failed trials in a row (exit 1). Then: copsd report tune STUDY."""
    from copsd.paths import db_url
    from copsd.redact import display_url
    from copsd.run.sweep import RunOptions
    from copsd.run.tune import run_tune
    from copsd.spec import load_spec, resolve_spec_path

    path = resolve_spec_path(spec)
    s = load_spec(path)
    opts = RunOptions.from_spec(s, db_url(db), device=device, mlflow=not no_mlflow, progress=False)
    summary = run_tune(
        s,
        opts,
        where=str(path),
        worker=worker,
        only=only,
        n_trials=n_trials,
        say=lambda m: console.print(m, markup=False, highlight=False, soft_wrap=True),
    )
    best = (
        f"best {summary.best_value:.4f} with " + ", ".join(f"{k}={v}" for k, v in summary.best_params.items())
        if summary.best_value is not None
        else "no finished trial yet"
    )
    failed = f" ({summary.failed} failed)" if summary.failed else ""
    console.print(f"study '{summary.study}': {summary.finished} finished trial(s){failed}; {best}; "
                  f"results in {display_url(opts.db_url)}", markup=False, highlight=False, soft_wrap=True)  # fmt: skip
    if summary.error:
        err_console.print(f"[red]error:[/red] {escape(summary.error)}", highlight=False, soft_wrap=True)
        raise typer.Exit(1)
