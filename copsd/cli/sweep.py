"""`copsd sweep plan|run|status|reset`: specs -> jobs -> the results DB (status and reset: sweep_state.py)."""

from __future__ import annotations

import json
import sys
from enum import Enum

import typer
from rich.markup import escape

from copsd.cli import submit as submit_cmd
from copsd.cli import sweep_state
from copsd.cli.common import DB_OPT, ONLY_HELP, console
from copsd.errors import CopsdError
from copsd.redact import display_url


class PlanFormat(str, Enum):
    table = "table"
    json = "json"


class DeviceType(str, Enum):
    cuda = "cuda"
    cpu = "cpu"


app = typer.Typer(help="Plan, run and inspect sweeps (YAML specs -> jobs -> results).", no_args_is_help=True)
app.command("submit")(submit_cmd.submit)  # copsd/cli/submit.py: worker tasks on SLURM through submitit


@app.command("plan")
def plan(
    spec: str = typer.Argument(..., help="spec file (e.g. sweeps/main.yaml) or embedded spec name (demo)"),
    format_: PlanFormat = typer.Option(PlanFormat.table, "--format", help="a table, or JSON for scripts"),
    only: list[str] | None = typer.Option(None, "--only", help=ONLY_HELP),
    db: str | None = DB_OPT,
    estimate: bool = typer.Option(
        False,
        "--estimate",
        help="add each job's estimated peak memory (GiB) and the phase that sets it, from the shapes alone "
        "(no weights loaded; docs/benchmarks.md gives its error)",
    ),
    device_: DeviceType = typer.Option(
        DeviceType.cuda, "--device", help="with --estimate: the device type to estimate for"
    ),
    gpu: str = typer.Option(
        "h100",
        "--gpu",
        help="with --estimate on cuda: whose recorded throughput prices the jobs (resources/throughput.yaml)",
    ),
    gpus: int = typer.Option(8, "--gpus", min=1, help="with --estimate: GPUs the total's wall time is spread over"),
):
    """Dry run: list every job of a spec with its id and its status in the database. Runs nothing.

    --estimate adds each job's peak memory and, on cuda, its generated tokens and GPU-hours from
    recorded throughput (copsd/training/cost.py states the assumptions):
    copsd sweep plan sweeps/main.yaml --estimate --gpu h100 --gpus 8
    """
    from rich.table import Table

    from copsd.results.db import existing_statuses
    from copsd.spec import select

    fmt, device = format_.value, device_.value
    from copsd.training.cost import estimate_cost
    from copsd.training.cost import gpus as known_gpus

    if estimate and device == "cuda" and gpu not in known_gpus():
        raise CopsdError(
            f"--gpu: no recorded throughput for '{gpu}' (known: {', '.join(known_gpus())}); measure it with "
            "`copsd speed rollout` and `copsd speed step` and add it to copsd/resources/throughput.yaml"
        )
    sel = select(spec, only)
    jobs = sel.jobs
    st = existing_statuses(db, [j.job_id for j in jobs])
    estimates = _estimates(jobs, device) if estimate else {}
    costs = {j.job_id: estimate_cost(j, gpu) for j in jobs} if estimate and device == "cuda" else {}
    if fmt == "json":
        out = [
            {
                "id": j.job_id,
                "method": j.method,
                "model": j.model,
                "language": j.language,
                "seed": j.seed,
                "status": st.get(j.job_id, ("NEW", 0, None))[0],
                **({"estimate": estimates[j.job_id]} if estimate else {}),
                **({"cost": c.as_dict() if (c := costs[j.job_id]) else None} if costs else {}),
                "config": j.model_dump(mode="json"),
            }
            for j in jobs
        ]
        doc = {"sweep": sel.spec.name, "spec": str(sel.path), "n_jobs": len(out), "jobs": out}
        sys.stdout.write(json.dumps(doc, indent=1) + "\n")
        return
    t = Table(title=f"sweep '{sel.spec.name}' ({sel.path}): {len(jobs)} job(s)")
    extra: tuple[str, ...] = (f"peak GiB ({device})", "peak phase") if estimate else ()
    extra += ("tokens (M)", f"GPU-h ({gpu})") if costs else ()
    for col in ("id", "method", "model", "language", "seed", "checkpoints", "status", *extra):
        t.add_column(col, justify="right" if col.startswith(("peak GiB", "tokens", "GPU-h")) else "left")
    for j in jobs:
        status, attempts, _ = st.get(j.job_id, ("NEW", 0, None))
        cells: list[str] = []
        if estimate:
            e = estimates[j.job_id]
            cells = [f"{e['peak_gib']:.1f}", e["phase"]] if e else ["?", "shape unknown before loading"]
        if costs:
            cost = costs[j.job_id]
            cells += [f"{sum(cost.tokens.values()) / 1e6:.1f}", f"{cost.total_hours:.2f}"] if cost else ["?", "?"]
        t.add_row(
            j.job_id,
            j.method,
            j.model,
            j.language,
            str(j.seed),
            ",".join(map(str, j.eval_steps())),
            f"{status}" + (f" ({attempts}x)" if attempts > 1 else ""),
            *cells,
        )
    console.print(t)
    if costs:
        _cost_summary(costs, gpu, gpus)


def _cost_summary(costs: dict, gpu: str, gpus: int) -> None:
    """The grid's total, by part, and what static evaluation batches would make of it."""
    known = [c for c in costs.values() if c is not None]
    if not known:
        console.print(f"GPU time: no recorded {gpu} throughput for these models (resources/throughput.yaml)")
        return
    parts: dict[str, float] = {}
    for c in known:
        for k, v in c.hours.items():
            parts[k] = parts.get(k, 0.0) + v
    total = sum(parts.values())
    static = sum(c.static_total_hours for c in known)
    by = ", ".join(f"{k} {v:,.1f}" for k, v in parts.items())
    missing = len(costs) - len(known)
    console.print(
        f"GPU time ({gpu}, {len(known)} job(s)"
        + (f"; {missing} with no recorded throughput left out" if missing else "")
        + f"): {total:,.1f} GPU-hours ({by}) = {total / gpus:,.1f} h on {gpus} GPUs; "
        f"on the engine before continuous batching (static evaluation waves, rollouts per micro-batch): "
        f"{static:,.1f} GPU-hours ({static / gpus:,.1f} h). Assumptions: copsd/training/cost.py; recorded "
        "throughput: docs/benchmarks.md"
    )


def _estimates(jobs: list, device: str) -> dict[str, dict | None]:
    """{job id: {peak_gib, phase, parts (GiB) of that phase}}; None where the model's shape is not
    known without loading it (copsd.training.memory.model_shape)."""
    from copsd.training.memory import estimate_job

    out: dict[str, dict | None] = {}
    for j in jobs:
        e = estimate_job(j, device)
        parts = {k: round(v, 3) for k, v in e.breakdown().items()} if e else {}
        out[j.job_id] = {"peak_gib": round(e.peak_gib, 2), "phase": e.phase, "parts_gib": parts} if e else None
    return out


@app.command("run")
def run(
    spec: str = typer.Argument("demo", help="spec file or embedded spec name; default: the CPU-sized demo"),
    workers: int = typer.Option(
        1, "--workers", "-w", min=1, help="parallel worker processes (one GPU each when GPUs exist)"
    ),
    db: str | None = DB_OPT,
    only: list[str] | None = typer.Option(None, "--only", help="run only matching jobs: " + ONLY_HELP),
    device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1, ...; default: cuda if available"),
    max_attempts: int | None = typer.Option(
        None, "--max-attempts", help="retry FAILED jobs until they failed this often (spec: runner.max_attempts)"
    ),
    no_retry: bool = typer.Option(False, "--no-retry", help="leave FAILED jobs alone"),
    no_mlflow: bool = typer.Option(False, "--no-mlflow", help="do not log to MLflow"),
    dry_run: bool = typer.Option(False, "--dry-run", help="same as `copsd sweep plan`"),
    isolate: bool | None = typer.Option(
        None,
        "--isolate/--no-isolate",
        help="each job in its own child process, so a job killed for memory or crashing fails alone "
        "(default; spec: runner.isolate)",
    ),
    preflight: bool = typer.Option(
        True,
        "--preflight/--no-preflight",
        help="before loading a job's weights, refuse it (FAILED, one line) if its estimated peak memory cannot "
        "fit the device (default; `copsd sweep plan --estimate` shows the estimates)",
    ),
):
    """Run a sweep; resumable: DONE jobs are skipped, crashed ones reclaimed, FAILED ones retried."""
    if dry_run:
        return plan(spec=spec, format_=PlanFormat.table, only=only, db=db, estimate=False, device_=DeviceType.cuda)
    from copsd.paths import db_url
    from copsd.run.sweep import RunOptions, run_sweep
    from copsd.spec import select

    sel = select(spec, only)
    opts = RunOptions.from_spec(
        sel.spec,
        db_url(db),
        device=device,
        workers=workers,
        max_attempts=max_attempts,
        retry_failed=not no_retry,
        mlflow=not no_mlflow,
        isolate=isolate,
        preflight=preflight,
    )
    summary = run_sweep(
        sel.spec.name,
        sel.jobs,
        opts,
        all_jobs=sel.all_jobs,
        description=sel.spec.description,
        spec_path=str(sel.path),
        spec_yaml=sel.path.read_text(encoding="utf-8"),
    )
    console.print(
        f"sweep '{sel.spec.name}': {summary.done} done, {summary.failed} failed, {summary.skipped} skipped "
        f"(already done or not retried); results in {display_url(opts.db_url)}"
    )
    for jid, e in summary.errors.items():
        console.print(f"  [red]FAILED[/red] {jid}: {escape(e)}", soft_wrap=True)
    # exit 0 only if every selected job is DONE (skipped FAILED or still-RUNNING jobs are not)
    from copsd.results.db import existing_statuses

    states = existing_statuses(opts.db_url, [j.job_id for j in sel.jobs])
    left = {jid: st for jid, (st, _, _) in states.items() if st != "DONE"}
    for jid, st in left.items():
        if jid not in summary.errors:
            console.print(f"  {st} {jid}: not done (see `copsd sweep status`)", soft_wrap=True, highlight=False)
    if summary.failed or left:
        raise typer.Exit(1)


# copsd/cli/sweep_state.py: the jobs' states, shown and reset (registered after plan and run, as before)
app.command("status")(sweep_state.status)
app.command("reset")(sweep_state.reset)
