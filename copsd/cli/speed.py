"""`copsd speed rollout|step` (alias: `copsd bench`): speed measurements on random-weight Qwen3
shapes, each with the reference (transformers `generate`, the naive loss) in the same run."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from copsd.cli.common import console, err_console
from copsd.errors import CopsdError
from copsd.speed.shapes import check_options, positive_ints

app = typer.Typer(
    help="Speed measurements on random-weight Qwen3 shapes (no download); each measures transformers' "
    "generate / the naive loss in the same run as the baseline. Results: docs/benchmarks.md.",
    no_args_is_help=True,
)


def _write(result: dict, out: Path | None) -> None:
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2))
        err_console.print(f"wrote {out}")


@app.command("rollout")
def rollout(
    shape: str = typer.Option("qwen3-1.7b", "--shape", help="qwen3-1.7b | qwen3-4b | qwen3-8b | tiny (CPU)"),
    batch: str = typer.Option("32,128", "--batch", help="comma-separated batch sizes"),
    new_tokens: int = typer.Option(1024, "--new-tokens", min=1, help="tokens decoded per row by the fast engine"),
    hf_new_tokens: int = typer.Option(128, "--hf-new-tokens", min=1, help="tokens per row for the (slow) hf baseline"),
    prompt_len: int = typer.Option(256, "--prompt-len", min=1, help="longest prompt; lengths spread over [len/2, len]"),
    engines: str = typer.Option("fast,hf", "--engines", help="comma-separated: fast, hf"),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="LoRA r=64 on every projection (as in training)"),
    top_k: int = typer.Option(20, "--top-k"),
    top_p: float = typer.Option(0.95, "--top-p"),
    temperature: float = typer.Option(1.1, "--temperature"),
    device: str | None = typer.Option(None, "--device", help="cuda (default when present) or cpu"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32"),
    profile: bool = typer.Option(False, "--profile", help="also break one decode step down by kernel kind"),
    out: Path | None = typer.Option(None, "--out", help="write the results as JSON here"),
):
    """Decode throughput: tokens/s, ms per step, bandwidth share, peak memory; fast vs hf.

    GPU: copsd speed rollout --shape qwen3-1.7b --batch 32,128 --profile --out rollout.json
    CPU: copsd speed rollout --shape tiny --device cpu --dtype float32 --batch 4 --new-tokens 64
    """
    from copsd.speed.rollout import bench_rollout, profile_decode

    dev = check_options(device, shape, dtype)
    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    if bad := [e for e in engine_list if e not in ("fast", "hf")]:
        raise CopsdError(f"--engines: unknown engine(s) {', '.join(bad)}; choose from fast, hf")
    show = lambda r: err_console.print(r, highlight=False)  # noqa: E731
    result = bench_rollout(
        shape,
        device=dev,
        dtype=dtype,
        batches=positive_ints(batch, "--batch"),
        new_tokens=new_tokens,
        hf_new_tokens=hf_new_tokens,
        prompt_len=prompt_len,
        lora=lora,
        engines=engine_list,
        temperature=temperature,
        top_p=top_p,
        top_k=top_k,
        log=show,
    )
    if profile:
        result["profile"] = profile_decode(
            shape,
            device=dev,
            dtype=dtype,
            batch=max(positive_ints(batch, "--batch")),
            prompt_len=prompt_len,
            lora=lora,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
        )
        show(result["profile"])
    _write(result, out)
    console.print(
        _table(
            result["rows"],
            [
                "shape",
                "engine",
                "batch",
                "new_tokens",
                "tokens_per_s",
                "ms_per_step",
                "bandwidth_share",
                "peak_memory_gib",
                "speedup_vs_hf",
            ],
        )
    )


@app.command("step")
def step(
    shape: str = typer.Option("qwen3-1.7b", "--shape", help="qwen3-1.7b | qwen3-4b | qwen3-8b | tiny (CPU)"),
    rollouts: int = typer.Option(4, "--rollouts", min=1, help="rollouts per micro-batch"),
    completion: int = typer.Option(1024, "--completion", min=1, help="tokens per rollout"),
    teacher_prompt: int = typer.Option(768, "--teacher-prompt", min=1, help="teacher prompt tokens"),
    student_prompt: int = typer.Option(256, "--student-prompt", min=1, help="longest student prompt"),
    chunk: str = typer.Option(
        "256", "--chunk", help="loss chunk(s) of the lean path (train.loss_chunk_size), comma-separated"
    ),
    reps: int = typer.Option(3, "--reps", min=1, help="timed repetitions after one warm-up (best is reported)"),
    device: str | None = typer.Option(None, "--device", help="cuda (default when present) or cpu"),
    dtype: str = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32"),
    out: Path | None = typer.Option(None, "--out", help="write the results as JSON here"),
):
    """One COPSD step: rollouts (fast vs hf) + loss/backward/optimizer (lean vs naive): time, peak memory.

    GPU: copsd speed step --shape qwen3-1.7b --chunk 256,1024 --out step.json
    """
    from copsd.speed.step import bench_step

    dev = check_options(device, shape, dtype)
    show = lambda r: err_console.print(r, highlight=False)  # noqa: E731
    result = bench_step(
        shape,
        device=dev,
        dtype=dtype,
        rollouts=rollouts,
        completion=completion,
        student_prompt=student_prompt,
        teacher_prompt=teacher_prompt,
        chunks=tuple(positive_ints(chunk, "--chunk")),
        reps=reps,
        log=show,
    )
    _write(result, out)
    console.print(
        _table(
            result["rows"],
            ["path", "loss_step_s", "peak_memory_gib", "step_s_with_fast_rollouts", "step_s_with_hf_rollouts"],
        )
    )


_HEADERS = {
    "new_tokens": "new tok",
    "tokens_per_s": "tok/s",
    "ms_per_step": "ms/step",
    "bandwidth_share": "bw share",
    "peak_memory_gib": "peak GiB",
    "speedup_vs_hf": "x hf",
    "loss_step_s": "loss step s",
    "step_s_with_fast_rollouts": "step s (fast)",
    "step_s_with_hf_rollouts": "step s (hf)",
}


def _table(rows: list[dict], cols: list[str]):
    from rich.table import Table

    table = Table(*[_HEADERS.get(c, c) for c in cols])
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, r.get("error", "") if c == cols[-1] else "")
            cells.append(f"{v:.3g}" if isinstance(v, float) else "-" if v is None else str(v))
        table.add_row(*cells)
    return table
