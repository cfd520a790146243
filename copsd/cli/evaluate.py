"""`copsd eval`: one model on one benchmark language, no spec (recorded as a job of sweep 'eval')."""

from __future__ import annotations

import typer

from copsd.cli.common import DB_OPT, console
from copsd.data.benchmarks import benchmarks
from copsd.errors import CopsdError


def _help_from_table() -> tuple[str, str]:
    """--benchmark/--split help from the benchmark table (generic if a plugin fails to load: the
    command itself then reports that error as one line)."""
    try:
        table = benchmarks()
    except CopsdError:
        return "a benchmark name (copsd data list)", "a split of that benchmark"
    return ", ".join(table), "; ".join(f"{name}: {'|'.join(b.splits)}" for name, b in table.items())


BENCHMARK_HELP, SPLIT_HELP = _help_from_table()


def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local directory, or builtin:tiny-qwen3"),
    language: str = typer.Option(..., "--language", "-l", help="language code, e.g. swa (or sw)"),
    benchmark: str = typer.Option("afrimgsm", "--benchmark", "-b", help=BENCHMARK_HELP),
    split: str = typer.Option("test", "--split", help=SPLIT_HELP),
    limit: int | None = typer.Option(None, "--limit", help="first N problems only"),
    samples: int = typer.Option(12, "--samples", "-k", help="samples per problem"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", help="0 = off"),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens"),
    batch_size: int = typer.Option(64, "--batch-size"),
    thinking: bool = typer.Option(True, "--thinking/--no-thinking"),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("auto", "--dtype"),
    data_dir: str | None = typer.Option(None, "--data-dir", help="local AfriMGSM copy (<lang>/test.tsv)"),
    device: str | None = typer.Option(None, "--device"),
    engine: str = typer.Option("auto", "--engine", help="rollout engine: auto (fast on a GPU, else hf) | fast | hf"),
    db: str | None = DB_OPT,
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
    preflight: bool = typer.Option(
        True, "--preflight/--no-preflight", help="refuse a job whose estimated peak memory cannot fit (default)"
    ),
):
    """Evaluate one model on one benchmark language (no spec). Recorded as a job of sweep 'eval'."""
    from rich.table import Table

    from copsd.paths import db_url
    from copsd.results.db import ResultsDB
    from copsd.results.schema import METRIC_COLUMNS
    from copsd.run.sweep import RunOptions, run_sweep
    from copsd.spec import eval_job

    job = eval_job(
        model=model,
        language=language,
        benchmark=benchmark,
        split=split,
        limit=limit,
        samples=samples,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        thinking=thinking,
        seed=seed,
        dtype=dtype,
        data_dir=data_dir,
        engine=engine,
    )
    opts = RunOptions(
        db_url=db_url(db),
        device=device,
        mlflow=not no_mlflow,
        retry_failed=True,
        max_attempts=10**6,
        preflight=preflight,
    )
    summary = run_sweep("eval", [job], opts)
    if summary.failed:
        raise CopsdError(next(iter(summary.errors.values())))
    rdb = ResultsDB(opts.db_url)
    try:
        df = rdb.results_frame()
    finally:
        rdb.close()
    row = df[df.job_id == job.job_id].iloc[-1]
    t = Table(
        title=f"{job.label} on {benchmark}/{split} ({int(row.n_problems)} problems x {samples} samples), "
        f"job {job.job_id}"
    )
    t.add_column("metric")
    t.add_column("value", justify="right")
    for c in METRIC_COLUMNS:
        t.add_row(c, f"{row[c]:.4f}")
    for c in ("target_language_rate", "english_rate"):  # which language the responses are in
        t.add_row(c, "–" if row[c] is None or row[c] != row[c] else f"{row[c]:.4f}")
    console.print(t)
