"""The `copsd` command line (Typer). `python cli.py ...` is the same program.

Every user error (bad spec, unknown language, missing data, unreachable Hub, ...) is printed as
one line `error: ...` on stderr with exit code 2; an interrupted sweep exits 130; a sweep with
failed jobs exits 1.
"""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from copsd.errors import CopsdError

EMBEDDED_SPECS = ("demo",)

app = typer.Typer(
    name="copsd",
    help=(
        "Crosslingual On-Policy Self-Distillation experiments.\n\n"
        "A sweep spec (YAML) expands into jobs (language x model x method x seed x settings); each job "
        "trains (copsd, grpo, sft) or not (base) and evaluates; results go to a SQLite database "
        "(--db / COPSD_DB, default experiments.db) and MLflow (mlflow.db beside it).\n\n"
        "Start here:  copsd sweep plan demo  |  copsd sweep run demo  |  copsd report table --by language"
    ),
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    add_completion=False,
)
sweep_app = typer.Typer(help="Plan, run and inspect sweeps (YAML specs -> jobs -> results).", no_args_is_help=True)
data_app = typer.Typer(help="Benchmarks and languages: what exists and what is available here.", no_args_is_help=True)
report_app = typer.Typer(help="Comparison tables from the results database.", no_args_is_help=True)
app.add_typer(sweep_app, name="sweep")
app.add_typer(data_app, name="data")
app.add_typer(report_app, name="report")
testbed_app = typer.Typer(help="The CPU testbed: a synthetic world and a tiny model pretrained on it.", no_args_is_help=True)
app.add_typer(testbed_app, name="testbed")
bench_app = typer.Typer(
    help="Speed benchmarks on random-weight Qwen3 shapes (no download); each measures transformers' "
         "generate / the naive loss in the same run as the baseline. Results: docs/benchmarks.md.",
    no_args_is_help=True)
app.add_typer(bench_app, name="bench")

console = Console()
err_console = Console(stderr=True)

DB_OPT = typer.Option(None, "--db", help="SQLAlchemy URL or SQLite path; default $COPSD_DB or sqlite:///experiments.db")


def resolve_spec_path(spec: str) -> Path:
    """A spec file path, or the name of an embedded spec (`demo`)."""
    p = Path(spec)
    if p.is_file():
        return p
    if spec in EMBEDDED_SPECS:
        return Path(str(resources.files("copsd").joinpath("resources", "sweeps", f"{spec}.yaml")))
    raise CopsdError(f"{spec}: spec file not found (give a path like sweeps/main.yaml, or an embedded spec: {', '.join(EMBEDDED_SPECS)})")


def _load(spec: str, only: list[str] | None):
    from copsd.spec import filter_jobs, load_jobs

    path = resolve_spec_path(spec)
    s, jobs = load_jobs(path)
    return path, s, jobs, filter_jobs(jobs, only or [])


def _statuses(db: Optional[str], ids: list[str]) -> dict[str, tuple[str, int, str | None]]:
    """Job statuses from the DB without creating it (a plan is a dry run)."""
    from copsd.db.store import db_url, sqlite_path

    url = db_url(db)
    p = sqlite_path(url)
    if p is not None and not p.exists():
        return {}
    from copsd.db.store import ResultsDB

    rdb = ResultsDB(url)
    try:
        return {j.id: (j.status, j.attempts, j.last_error) for j in rdb.jobs(ids=ids)}
    finally:
        rdb.close()


@sweep_app.command("plan")
def sweep_plan(
    spec: str = typer.Argument(..., help="spec file (e.g. sweeps/main.yaml) or embedded spec name (demo)"),
    fmt: str = typer.Option("table", "--format", help="table or json"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="filter: key=value[,value] (e.g. method=base)"),
    db: Optional[str] = DB_OPT,
):
    """Dry run: list every job of a spec with its id and its status in the database. Runs nothing."""
    path, s, all_jobs, jobs = _load(spec, only)
    st = _statuses(db, [j.job_id for j in jobs])
    if fmt == "json":
        out = [{"id": j.job_id, "method": j.method, "model": j.model, "language": j.language, "seed": j.seed,
                "status": st.get(j.job_id, ("NEW", 0, None))[0], "config": j.model_dump(mode="json")} for j in jobs]
        sys.stdout.write(json.dumps({"sweep": s.name, "spec": str(path), "n_jobs": len(out), "jobs": out}, indent=1) + "\n")
        return
    if fmt != "table":
        raise CopsdError(f"--format must be table or json, not '{fmt}'")
    from rich.table import Table

    t = Table(title=f"sweep '{s.name}' ({path}): {len(jobs)} job(s)")
    for c in ("id", "method", "model", "language", "seed", "checkpoints", "status"):
        t.add_column(c)
    for j in jobs:
        status, attempts, _ = st.get(j.job_id, ("NEW", 0, None))
        t.add_row(j.job_id, j.method, j.model, j.language, str(j.seed), ",".join(map(str, j.eval_steps())),
                  f"{status}" + (f" ({attempts}x)" if attempts > 1 else ""))
    console.print(t)


@sweep_app.command("run")
def sweep_run(
    spec: str = typer.Argument("demo", help="spec file or embedded spec name; default: the CPU-sized demo"),
    workers: int = typer.Option(1, "--workers", "-w", min=1, help="parallel worker processes (one GPU each when GPUs exist)"),
    db: Optional[str] = DB_OPT,
    only: Optional[list[str]] = typer.Option(None, "--only", help="run only matching jobs: key=value[,value]"),
    device: Optional[str] = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ...; default: cuda if available"),
    max_attempts: Optional[int] = typer.Option(None, "--max-attempts", help="retry FAILED jobs until they failed this often (spec: runner.max_attempts)"),
    no_retry: bool = typer.Option(False, "--no-retry", help="leave FAILED jobs alone"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="do not log to MLflow"),
    dry_run: bool = typer.Option(False, "--dry-run", help="same as `copsd sweep plan`"),
):
    """Run a sweep; resumable: DONE jobs are skipped, crashed ones reclaimed, FAILED ones retried."""
    if dry_run:
        return sweep_plan(spec=spec, fmt="table", only=only, db=db)
    from copsd.db.store import db_url
    from copsd.runner import RunOptions, run_sweep

    path, s, all_jobs, jobs = _load(spec, only)
    opts = RunOptions(
        db_url=db_url(db), device=device, workers=workers,
        max_attempts=max_attempts or s.runner.max_attempts, stale_after_s=s.runner.stale_after_s,
        heartbeat_s=s.runner.heartbeat_s, retry_failed=not no_retry, mlflow=not no_mlflow,
        experiment=s.mlflow.experiment, log_generations=s.mlflow.log_generations,
    )
    summary = run_sweep(s.name, jobs, opts, all_jobs=all_jobs, description=s.description, spec_path=str(path),
                        spec_yaml=path.read_text(encoding="utf-8"))
    console.print(f"sweep '{s.name}': {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
                  f"(already done or not retried); results in {opts.db_url}")
    for jid, e in summary.errors.items():
        console.print(f"  [red]FAILED[/red] {jid}: {escape(e)}", soft_wrap=True)
    if summary.failed:
        raise typer.Exit(1)


@sweep_app.command("status")
def sweep_status(
    spec: Optional[str] = typer.Argument(None, help="spec file or name; default: every sweep in the database"),
    db: Optional[str] = DB_OPT,
    errors: bool = typer.Option(True, "--errors/--no-errors", help="list failed jobs with their last error"),
):
    """Counts of PENDING/RUNNING/DONE/FAILED jobs per sweep, and why jobs failed."""
    from rich.table import Table

    from copsd.db.store import ResultsDB

    rdb = ResultsDB(db)
    names = [_load(spec, None)[1].name] if spec else [s.name for s in rdb.sweeps()]
    if not names:
        console.print("no sweeps in the database yet; run one with `copsd sweep run SPEC`")
        return
    t = Table(title=f"sweeps in {rdb.url}")
    for c in ("sweep", "jobs", "PENDING", "RUNNING", "DONE", "FAILED"):
        t.add_column(c)
    failed = []
    for n in names:
        jobs = rdb.jobs(sweep=n)
        counts = {k: sum(1 for j in jobs if j.status == k) for k in ("PENDING", "RUNNING", "DONE", "FAILED")}
        t.add_row(n, str(len(jobs)), *(str(counts[k]) for k in ("PENDING", "RUNNING", "DONE", "FAILED")))
        failed += [(n, j) for j in jobs if j.status == "FAILED"]
    console.print(t)
    if errors:
        for n, j in failed:
            console.print(f"[red]FAILED[/red] {n} {j.id} {j.method}/{j.language}/seed{j.seed} "
                          f"(attempts {j.attempts}): {escape(j.last_error or '')}", soft_wrap=True)
    rdb.close()


@sweep_app.command("reset")
def sweep_reset(
    spec: str = typer.Argument(..., help="spec file or embedded spec name"),
    only: Optional[list[str]] = typer.Option(None, "--only", help="filter: key=value[,value]"),
    status: str = typer.Option("FAILED", "--status", help="reset jobs in this status (FAILED, DONE or PENDING)"),
    db: Optional[str] = DB_OPT,
):
    """Make jobs PENDING again with a fresh attempt count (results already stored are kept)."""
    from copsd.db.store import ResultsDB

    _, s, _, jobs = _load(spec, only)
    rdb = ResultsDB(db)
    ids = [j.id for j in rdb.jobs(ids=[j.job_id for j in jobs]) if j.status == status.upper()]
    n = rdb.reset(ids)
    console.print(f"reset {n} {status.upper()} job(s) of sweep '{s.name}' to PENDING")
    rdb.close()


@app.command("eval")
def eval_cmd(
    model: str = typer.Option(..., "--model", "-m", help="Hub id, local directory, or builtin:tiny-qwen3"),
    language: str = typer.Option(..., "--language", "-l", help="language code, e.g. swa (or sw)"),
    benchmark: str = typer.Option("afrimgsm", "--benchmark", "-b", help="afrimgsm, mgsm, polymath or gsm8k"),
    split: str = typer.Option("test", "--split", help="test/dev (afrimgsm), low/medium/high/top (polymath)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="first N problems only"),
    samples: int = typer.Option(12, "--samples", "-k", help="samples per problem"),
    temperature: float = typer.Option(1.0, "--temperature"),
    top_p: float = typer.Option(0.95, "--top-p"),
    top_k: int = typer.Option(0, "--top-k", help="0 = off"),
    max_new_tokens: int = typer.Option(1024, "--max-new-tokens"),
    batch_size: int = typer.Option(64, "--batch-size"),
    thinking: bool = typer.Option(True, "--thinking/--no-thinking"),
    seed: int = typer.Option(0, "--seed"),
    dtype: str = typer.Option("auto", "--dtype"),
    data_dir: Optional[str] = typer.Option(None, "--data-dir", help="local AfriMGSM copy (<lang>/test.tsv)"),
    device: Optional[str] = typer.Option(None, "--device"),
    engine: str = typer.Option("auto", "--engine", help="rollout engine: auto (fast on a GPU, else hf) | fast | hf"),
    db: Optional[str] = DB_OPT,
    no_mlflow: bool = typer.Option(False, "--no-mlflow"),
):
    """Evaluate one model on one benchmark language (no spec). Recorded as a job of sweep 'eval'."""
    from pydantic import ValidationError

    from copsd.config import JobConfig
    from copsd.db.store import db_url
    from copsd.runner import RunOptions, run_sweep
    from copsd.spec import format_validation_error

    raw = {"method": "base", "model": model, "language": language, "seed": seed, "dtype": dtype,
           "eval": {"benchmark": benchmark, "split": split, "limit": limit, "thinking": thinking,
                    "batch_size": batch_size, "data_dir": data_dir, "rollout_engine": engine,
                    "decoding": {"n_samples": samples, "temperature": temperature, "top_p": top_p, "top_k": top_k,
                                 "max_new_tokens": max_new_tokens}}}
    try:
        job = JobConfig.model_validate(raw)
    except ValidationError as err:
        raise CopsdError(format_validation_error(err, "copsd eval", JobConfig)) from None
    opts = RunOptions(db_url=db_url(db), device=device, mlflow=not no_mlflow, retry_failed=True, max_attempts=10**6)
    from copsd.db.store import ResultsDB

    summary = run_sweep("eval", [job], opts)
    if summary.failed:
        raise CopsdError(next(iter(summary.errors.values())))
    rdb = ResultsDB(opts.db_url)
    df = rdb.results_frame()
    row = df[df.job_id == job.job_id].iloc[-1]
    rdb.close()
    from rich.table import Table

    t = Table(title=f"{job.label} on {benchmark}/{split} ({int(row.n_problems)} problems x {samples} samples), job {job.job_id}")
    t.add_column("metric")
    t.add_column("value", justify="right")
    from copsd.db.schema import METRIC_COLUMNS

    for c in METRIC_COLUMNS:
        t.add_row(c, f"{row[c]:.4f}")
    console.print(t)


@data_app.command("list")
def data_list(benchmark: Optional[str] = typer.Option(None, "--benchmark", "-b", help="only this benchmark")):
    """Benchmarks x languages x splits, and where each comes from (bundled, local, Hub cache, Hub)."""
    from rich.table import Table

    from copsd.benchmarks import BENCHMARK_LANGUAGES, BENCHMARK_SPLITS, availability
    from copsd.languages import get_language

    t = Table(title="benchmarks (AfriMGSM: set COPSD_AFRIMGSM_DIR or eval.data_dir for a local copy)")
    for c in ("benchmark", "language", "name", "splits", "available"):
        t.add_column(c)
    for b, langs in BENCHMARK_LANGUAGES.items():
        if benchmark and b != benchmark:
            continue
        for lang in langs:
            L = get_language(lang)
            avail = sorted({availability(b, lang, s) for s in BENCHMARK_SPLITS[b]})
            note = " (prompts: English, no translation)" if L.missing else (" (prompts unreviewed)" if L.review else "")
            t.add_row(b, lang, L.name + note, ",".join(BENCHMARK_SPLITS[b]), ",".join(avail))
    console.print(t)


@report_app.command("table")
def report_table(
    by: str = typer.Option("language", "--by", help="language (rows) x model/method (columns); or model; or method"),
    metric: str = typer.Option("accuracy", "--metric", help="accuracy, pass_at_1, pass_at_k, maj_at_k, format_rate, ..."),
    fmt: str = typer.Option("markdown", "--format", help="markdown, latex, csv or html (the file written)"),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    step: str = typer.Option("final", "--step", help="checkpoint per job: final, best, or a step number"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="when results span several benchmarks"),
    budget: Optional[int] = typer.Option(None, "--budget", help="decoding budget (max_new_tokens); default: largest"),
    out: Optional[Path] = typer.Option(None, "--out", help="output file; default reports/<sweep>_by_<by>_<metric>.<ext>"),
    db: Optional[str] = DB_OPT,
):
    """Paper-style comparison table (mean ± std over seeds, (Δ vs base), best per row in bold)."""
    from copsd.db.store import ResultsDB
    from copsd.reports.tables import build_table, render, to_rich

    if fmt not in ("markdown", "latex", "csv", "html"):
        raise CopsdError(f"--format must be markdown, latex, csv or html, not '{fmt}'")
    rdb = ResultsDB(db)
    if sweep and rdb.get_sweep(sweep) is None:
        raise CopsdError(f"no sweep named '{sweep}' in {rdb.url}; known: {', '.join(s.name for s in rdb.sweeps()) or 'none'}")
    df = rdb.results_frame(sweep)
    rdb.close()
    t = build_table(df, by=by, metric=metric, step=step, benchmark=benchmark, budget=budget)
    text = render(t, fmt)
    ext = {"markdown": "md", "latex": "tex", "csv": "csv", "html": "html"}[fmt]
    out = out or Path("reports") / f"{sweep or 'all'}_by_{by}_{metric}.{ext}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    if fmt == "csv" and not sys.stdout.isatty():
        sys.stdout.write(text)
    else:
        console.print(to_rich(t))
    err_console.print(f"written to {out}")


@report_app.command("curves")
def report_curves(
    metric: str = typer.Option("accuracy", "--metric", help="accuracy, pass_at_k, format_rate, ..."),
    sweep: Optional[str] = typer.Option(None, "--sweep", help="only this sweep's jobs (default: every result)"),
    benchmark: Optional[str] = typer.Option(None, "--benchmark", help="when results span several benchmarks"),
    out: Optional[Path] = typer.Option(None, "--out", help="PNG path; default reports/<sweep>_curves_<metric>.png"),
    db: Optional[str] = DB_OPT,
):
    """Training dynamics: the metric at each evaluated checkpoint, per language and method (PNG)."""
    from copsd.db.store import ResultsDB
    from copsd.reports.plots import plot_curves

    rdb = ResultsDB(db)
    if sweep and rdb.get_sweep(sweep) is None:
        raise CopsdError(f"no sweep named '{sweep}' in {rdb.url}; known: {', '.join(s.name for s in rdb.sweeps()) or 'none'}")
    df = rdb.results_frame(sweep)
    rdb.close()
    path = plot_curves(df, out or Path("reports") / f"{sweep or 'all'}_curves_{metric}.png", metric, benchmark)
    console.print(f"written to {path}")


@testbed_app.command("build")
def testbed_build():
    """Pretrain builtin:testbed now (~5 minutes on 2 cores; once per machine, then cached)."""
    from copsd.builtin_models import build_testbed_cached

    path = build_testbed_cached(log=lambda m: err_console.print(m, highlight=False))
    console.print(f"builtin:testbed is at {path}")


@testbed_app.command("info")
def testbed_info():
    """Where builtin:testbed is cached, whether it is built, and a sample problem per language."""
    from copsd.builtin_models import testbed_path
    from copsd.testbed.world import problems

    p = testbed_path()
    console.print(f"builtin:testbed: {p} ({'built' if (p / 'config.json').is_file() else 'not built yet'})")
    for lang in ("eng", "synlo", "synvlo"):
        q, prob = problems(lang, "test", 1)[0]
        console.print(f"  {lang}: {q}  ->  {prob.answer}", highlight=False)


BENCH_DTYPES = ("bfloat16", "float16", "float32")


def _bench_device(device: Optional[str], shape: str, dtype: str) -> str:
    """Checks the options every benchmark shares; returns the device to run on."""
    import torch

    from copsd.bench.shapes import SHAPES

    if shape not in SHAPES:
        raise CopsdError(f"--shape: unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    if dtype not in BENCH_DTYPES:
        raise CopsdError(f"--dtype: unknown dtype {dtype!r}; choose one of {', '.join(BENCH_DTYPES)}")

    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise CopsdError("--device cuda: no CUDA device is visible; use --device cpu (with --shape tiny)")
    return dev


def _bench_write(result: dict, out: Optional[Path]) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        err_console.print(f"wrote {out}")


def _ints(csv: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in csv.split(",") if x.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise CopsdError(f"{option} takes comma-separated positive integers, got {csv!r}")
    return values


@bench_app.command("rollout")
def bench_rollout_cmd(
    shape: str = typer.Option("qwen3-1.7b", "--shape", help="qwen3-1.7b | qwen3-4b | qwen3-8b | tiny (CPU)"),
    batch: str = typer.Option("32,128", "--batch", help="comma-separated batch sizes"),
    new_tokens: int = typer.Option(1024, "--new-tokens", min=1, help="tokens decoded per row by the fast engine"),
    hf_new_tokens: int = typer.Option(128, "--hf-new-tokens", min=1, help="tokens per row for the (slow) hf baseline"),
    prompt_len: int = typer.Option(256, "--prompt-len", min=1, help="longest prompt; lengths spread over [len/2, len]"),
    engines: str = typer.Option("fast,hf", "--engines", help="comma-separated: fast, hf"),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="LoRA r=64 on every projection (as in training)"),
    top_k: int = typer.Option(20, "--top-k"), top_p: float = typer.Option(0.95, "--top-p"),
    temperature: float = typer.Option(1.1, "--temperature"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda (default when present) or cpu"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32"),
    profile: bool = typer.Option(False, "--profile", help="also break one decode step down by kernel kind"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the results as JSON here"),
):
    """Decode throughput: tokens/s, ms per step, bandwidth share, peak memory; fast vs hf.

    GPU: copsd bench rollout --shape qwen3-1.7b --batch 32,128 --profile --out rollout.json
    CPU: copsd bench rollout --shape tiny --device cpu --dtype float32 --batch 4 --new-tokens 64
    """
    from copsd.bench.rollout import bench_rollout, profile_decode

    dev = _bench_device(device, shape, dtype)
    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    if bad := [e for e in engine_list if e not in ("fast", "hf")]:
        raise CopsdError(f"--engines: unknown engine(s) {', '.join(bad)}; choose from fast, hf")
    show = lambda r: err_console.print(r, highlight=False)  # noqa: E731
    result = bench_rollout(shape, device=dev, dtype=dtype, batches=_ints(batch, "--batch"), new_tokens=new_tokens,
                           hf_new_tokens=hf_new_tokens, prompt_len=prompt_len, lora=lora, engines=engine_list,
                           temperature=temperature, top_p=top_p, top_k=top_k, log=show)
    if profile:
        result["profile"] = profile_decode(shape, device=dev, dtype=dtype, batch=max(_ints(batch, "--batch")),
                                           prompt_len=prompt_len, lora=lora, temperature=temperature, top_p=top_p,
                                           top_k=top_k)
        show(result["profile"])
    _bench_write(result, out)
    console.print(_bench_table(result["rows"], ["shape", "engine", "batch", "new_tokens", "tokens_per_s",
                                                 "ms_per_step", "bandwidth_share", "peak_memory_gib",
                                                 "speedup_vs_hf"]))


@bench_app.command("step")
def bench_step_cmd(
    shape: str = typer.Option("qwen3-1.7b", "--shape", help="qwen3-1.7b | qwen3-4b | qwen3-8b | tiny (CPU)"),
    rollouts: int = typer.Option(4, "--rollouts", min=1, help="rollouts per micro-batch"),
    completion: int = typer.Option(1024, "--completion", min=1, help="tokens per rollout"),
    teacher_prompt: int = typer.Option(768, "--teacher-prompt", min=1, help="teacher prompt tokens"),
    student_prompt: int = typer.Option(256, "--student-prompt", min=1, help="longest student prompt"),
    chunk: str = typer.Option("256", "--chunk", help="loss chunk(s) of the lean path (train.loss_chunk_size), comma-separated"),
    reps: int = typer.Option(3, "--reps", min=1, help="timed repetitions after one warm-up (best is reported)"),
    device: Optional[str] = typer.Option(None, "--device", help="cuda (default when present) or cpu"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32"),
    out: Optional[Path] = typer.Option(None, "--out", help="write the results as JSON here"),
):
    """One COPSD step: rollouts (fast vs hf) + loss/backward/optimizer (lean vs naive): time, peak memory.

    GPU: copsd bench step --shape qwen3-1.7b --chunk 256,1024 --out step.json
    """
    from copsd.bench.step import bench_step

    dev = _bench_device(device, shape, dtype)
    show = lambda r: err_console.print(r, highlight=False)  # noqa: E731
    result = bench_step(shape, device=dev, dtype=dtype, rollouts=rollouts, completion=completion,
                        student_prompt=student_prompt, teacher_prompt=teacher_prompt, chunks=tuple(_ints(chunk, "--chunk")), reps=reps,
                        log=show)
    _bench_write(result, out)
    console.print(_bench_table(result["rows"], ["path", "loss_step_s", "peak_memory_gib",
                                                 "step_s_with_fast_rollouts", "step_s_with_hf_rollouts"]))


_BENCH_HEADERS = {"new_tokens": "new tok", "tokens_per_s": "tok/s", "ms_per_step": "ms/step",
                  "bandwidth_share": "bw share", "peak_memory_gib": "peak GiB", "speedup_vs_hf": "x hf",
                  "loss_step_s": "loss step s", "step_s_with_fast_rollouts": "step s (fast)",
                  "step_s_with_hf_rollouts": "step s (hf)"}


def _bench_table(rows: list[dict], cols: list[str]):
    from rich.table import Table

    table = Table(*[_BENCH_HEADERS.get(c, c) for c in cols])
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, r.get("error", "") if c == cols[-1] else "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v))
        table.add_row(*cells)
    return table


def main() -> None:
    """Console-script entry point: user errors as one line, never a traceback."""
    try:
        rc = app(standalone_mode=False)  # returns the code of typer.Exit instead of raising it
        if isinstance(rc, int) and rc:
            sys.exit(rc)
    except CopsdError as exc:
        err_console.print(f"[red]error:[/red] {escape(str(exc))}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # click's own usage errors and our sweep interruption
        from copsd.runner import SweepInterrupted

        if isinstance(exc, SweepInterrupted):
            err_console.print(str(exc))
            sys.exit(130)
        for errors in _click_exception_modules():
            if isinstance(exc, errors.ClickException):
                exc.show()
                sys.exit(exc.exit_code)
            if isinstance(exc, errors.Exit):
                sys.exit(exc.exit_code)
            if isinstance(exc, errors.Abort):
                sys.exit(130)
        raise


def _click_exception_modules() -> list:
    """click's exceptions, and those of the click copy newer typer versions ship (typer._click)."""
    import importlib

    mods = []
    for name in ("click.exceptions", "typer._click.exceptions"):
        try:
            mods.append(importlib.import_module(name))
        except ImportError:
            pass
    return mods
