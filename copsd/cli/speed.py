"""`copsd speed rollout|workload|step` (alias: `copsd bench`): speed measurements on random-weight Qwen3
shapes, each with the reference (transformers `generate`, the naive loss) in the same run. `step` is
three measurements under one name: the COPSD loss paths (`_loss_paths`), and with --method one
optimizer step per memory setting, run (`_measured_step`) or with --trace counted (`_traced_step`)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

import typer

from copsd.cli.speed_table import finish, show
from copsd.errors import CopsdError


class TrainedMethod(str, Enum):
    copsd = "copsd"
    grpo = "grpo"
    sft = "sft"


app = typer.Typer(
    help="Speed measurements on random-weight Qwen3 shapes (no download); each measures transformers' "
    "generate / the naive loss in the same run as the baseline. Results: docs/benchmarks.md.",
    no_args_is_help=True,
)


LEVERS = "fast+fuse, fast+compile, fast+flex, fast+search (combinable: fast+fuse+flex+search)"
# the columns each command's table shows (speed_table.HEADERS names them)
ROLLOUT_COLUMNS = (
    "shape engine batch new_tokens tokens_per_s ms_per_step bandwidth_share peak_memory_gib "
    "speedup_vs_hf speedup_vs_fast"
)
WORKLOAD_COLUMNS = (
    "mode sequences useful_tokens_per_s workload_s slot_utilization ms_per_step peak_memory_gib "
    "speedup_vs_static speedup_vs_hf speedup_vs_fast"
)
SETTING_COLUMNS = "checkpointing micro_batch max_tokens forwards_per_step"  # of `speed step --method`
TRACED = "trace"  # the StepSetting.device of a step counted on fake tensors (on no device)
# the options every measurement shares
SHAPE = typer.Option("qwen3-1.7b", "--shape", help="qwen3-1.7b | qwen3-4b | qwen3-8b | tiny (CPU)")
DEVICE = typer.Option(None, "--device", help="cuda (default when present) or cpu")
DTYPE = typer.Option("bfloat16", "--dtype", help="bfloat16 | float32")
OUT = typer.Option(None, "--out", help="write the results as JSON here")


def _is_engine(name: str) -> bool:
    """fast, optionally with step-level levers (copsd.rollout.fast.EngineOptions)."""
    from copsd.rollout.fast import EngineOptions

    return EngineOptions.is_name(name)


@app.command("rollout")
def rollout(
    shape: str = SHAPE,
    batch: str = typer.Option("32,128", "--batch", help="comma-separated batch sizes"),
    new_tokens: int = typer.Option(1024, "--new-tokens", min=1, help="tokens decoded per row by the fast engine"),
    hf_new_tokens: int = typer.Option(128, "--hf-new-tokens", min=1, help="tokens per row for the (slow) hf baseline"),
    prompt_len: int = typer.Option(256, "--prompt-len", min=1, help="longest prompt; lengths spread over [len/2, len]"),
    engines: str = typer.Option(
        "fast,hf",
        "--engines",
        help="comma-separated: hf, fast, or fast with step levers: +fuse (one GEMM for q/k/v and for gate/up), "
        "+compile (torch.compile the step), +flex (FlexAttention: each row reads only its own cache blocks; "
        "compiles), +search (top-p without a vocabulary sort), e.g. fast+fuse+flex+search",
    ),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="LoRA r=64 on every projection (as in training)"),
    top_k: int = typer.Option(20, "--top-k"),
    top_p: float = typer.Option(0.95, "--top-p"),
    temperature: float = typer.Option(1.1, "--temperature"),
    device: str | None = DEVICE,
    dtype: str = DTYPE,
    profile: bool = typer.Option(False, "--profile", help="also break one decode step down by kernel kind"),
    out: Path | None = OUT,
):
    """Decode throughput: tokens/s, ms per step, bandwidth share, peak memory; fast vs hf.

    GPU: copsd speed rollout --shape qwen3-1.7b --batch 32,128 --profile --out rollout.json
    CPU: copsd speed rollout --shape tiny --device cpu --dtype float32 --batch 4 --new-tokens 64
    """
    from copsd.speed.rollout import bench_rollout, profile_decode
    from copsd.speed.shapes import check_options, positive_ints

    dev = check_options(device, shape, dtype)
    engine_list = [e.strip() for e in engines.split(",") if e.strip()]
    if bad := [e for e in engine_list if e != "hf" and not _is_engine(e)]:
        raise CopsdError(f"--engines: unknown engine(s) {', '.join(bad)}; choose from hf, fast, {LEVERS}")
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
    finish(result, out, ROLLOUT_COLUMNS)


@app.command("workload")
def workload(
    shape: str = SHAPE,
    problems: int = typer.Option(250, "--problems", min=1, help="problems (AfriMGSM has 250 per language)"),
    samples: int = typer.Option(12, "--samples", min=1, help="samples per problem (the evaluation's n_samples)"),
    slots: int = typer.Option(128, "--slots", min=1, help="sequences decoded at once (eval.batch_size)"),
    median: float = typer.Option(400.0, "--median", min=1, help="median sequence length, tokens (lognormal)"),
    sigma: float = typer.Option(0.9, "--sigma", min=0, help="log-sd of the length distribution"),
    max_new: int = typer.Option(1024, "--max-new-tokens", min=1, help="the budget; longer draws are truncated"),
    modes: str = typer.Option(
        "fast,static,hf",
        "--modes",
        help="comma-separated: fast (continuous batching), static, hf; fast+fuse, +compile, +flex, +search as in rollout",
    ),
    hf_problems: int = typer.Option(8, "--hf-problems", min=1, help="problems hf decodes (extrapolated)"),
    lora: bool = typer.Option(True, "--lora/--no-lora", help="LoRA r=64 on every projection (a trained checkpoint)"),
    device: str | None = DEVICE,
    dtype: str = DTYPE,
    seed: int = typer.Option(0, "--seed", help="seeds the prompts and the drawn lengths"),
    out: Path | None = OUT,
):
    """The evaluation workload, where rows stop at different lengths: useful tokens/s and the time to
    finish it, for continuous batching (fast), static batches of the same engine, and hf.

    Prompts have the real evaluation prompts' lengths; each of the `samples` per problem stops at a
    length drawn from a lognormal (default median 400, ~15% truncated at 1,024); sampling T 1.0,
    top-p 0.95, no top-k. Useful tokens are those before each row's stop.

    GPU: copsd speed workload --shape qwen3-1.7b --out workload.json
    CPU: copsd speed workload --shape tiny --device cpu --dtype float32 --problems 16 --samples 4 --slots 16
         --median 40 --max-new-tokens 128 --hf-problems 4
    """
    from copsd.speed.shapes import check_options
    from copsd.speed.workload import MODES, bench_workload

    dev = check_options(device, shape, dtype)
    mode_list = [m.strip() for m in modes.split(",") if m.strip()]
    bad = [m for m in mode_list if m not in MODES and not _is_engine(m)] or ([] if mode_list else ["(none)"])
    if bad:
        raise CopsdError(f"--modes: unknown mode(s) {', '.join(bad)}; choose from {', '.join(MODES)}, {LEVERS}")
    result = bench_workload(
        shape,
        device=dev,
        dtype=dtype,
        problems=problems,
        samples=samples,
        slots=slots,
        median=median,
        sigma=sigma,
        max_new=max_new,
        modes=mode_list,
        hf_problems=min(hf_problems, problems),
        lora=lora,
        seed=seed,
        log=show,
    )
    show(result["workload"])
    finish(result, out, WORKLOAD_COLUMNS)


@app.command("step")
def step(
    shape: str = SHAPE,
    rollouts: int = typer.Option(4, "--rollouts", min=1, help="rollouts per micro-batch"),
    completion: int = typer.Option(1024, "--completion", min=1, help="tokens per rollout"),
    teacher_prompt: int = typer.Option(768, "--teacher-prompt", min=1, help="teacher prompt tokens"),
    student_prompt: int = typer.Option(256, "--student-prompt", min=1, help="longest student prompt"),
    chunk: str = typer.Option(
        "256", "--chunk", help="loss chunk(s) of the lean path (train.loss_chunk_size), comma-separated"
    ),
    reps: int = typer.Option(
        3, "--reps", min=0, help="timed repetitions after one warm-up (best is reported); --method: 0 = one cold step"
    ),
    device: str | None = DEVICE,
    dtype: str = DTYPE,
    out: Path | None = OUT,
    method_: TrainedMethod | None = typer.Option(
        None,
        "--method",
        help="one optimizer step through that method's trainer on synthetic full-length "
        "sequences, per memory setting (without it: COPSD rollouts fast vs hf + loss lean vs naive)",
    ),
    model: str | None = typer.Option(
        None, "--model", help="with --method: a real model (e.g. builtin:smollm2-135m-instruct) instead of --shape"
    ),
    prompts: int = typer.Option(1, "--prompts", min=1, help="with --method: prompts per optimizer step"),
    generations: int = typer.Option(8, "--generations", min=1, help="with --method grpo: completions per prompt"),
    micro_batch: str = typer.Option(
        "4", "--micro-batch", help="with --method: train.micro_batch_size value(s), comma-separated"
    ),
    max_tokens: str = typer.Option(
        "0", "--max-tokens", help="with --method: train.max_tokens_per_forward value(s), comma-separated (0 = no cap)"
    ),
    checkpointing: str = typer.Option(
        "on,off", "--checkpointing", help="with --method: train.gradient_checkpointing: on, off or on,off"
    ),
    trace: bool = typer.Option(
        False,
        "--trace",
        help="with --method: count the step's memory on fake tensors instead of running it (any shape, no GPU, "
        "seconds; the live tensor bytes that max_memory_allocated would report)",
    ),
):
    """One training step's time and peak memory.

    GPU: copsd speed step --shape qwen3-1.7b --chunk 256,1024 --out step.json
    Per method (docs/benchmarks.md): copsd speed step --method grpo --shape qwen3-1.7b --completion 2048
    CPU: copsd speed step --method grpo --model builtin:smollm2-135m-instruct --device cpu --dtype float32
         --completion 256 --max-tokens 0,1024
    Any shape, no GPU: copsd speed step --method grpo --shape qwen3-8b --completion 2048 --checkpointing on --trace
    """
    from copsd.speed.shapes import check_options

    method = method_.value if method_ is not None else None
    if trace and method is None:
        raise CopsdError("--trace needs --method copsd|grpo|sft")
    if trace and device is not None:
        raise CopsdError("--trace runs on no device: leave out --device")
    device = check_options("cpu" if trace else device, shape, dtype)  # a trace's fake tensors are CPU tensors
    if method is None:  # the lean and naive loss paths of one COPSD step, with fast and hf rollouts
        if reps < 1:
            raise CopsdError("--reps 0 is for --method only; the COPSD comparison needs at least 1")
        _loss_paths(shape, device, dtype, rollouts, completion, teacher_prompt, student_prompt, chunk, reps, out)
        return
    # one optimizer step through the method's trainer per memory setting: measured, or traced
    settings = _step_settings(
        method,
        shape,
        model,
        TRACED if trace else device,
        dtype,
        prompts=prompts,
        generations=generations,
        prompt_len=student_prompt,
        completion=completion,
        teacher_prompt=teacher_prompt,
        micro_batch=micro_batch,
        max_tokens=max_tokens,
        checkpointing=checkpointing,
        chunk=chunk,
        reps=reps,
    )
    (_traced_step if trace else _measured_step)(settings, out)


def _loss_paths(shape, device, dtype, rollouts, completion, teacher_prompt, student_prompt, chunk, reps, out) -> None:
    """`speed step` without --method: COPSD rollouts fast vs hf, its loss lean vs naive."""
    from copsd.speed.loss_paths import bench_loss_paths
    from copsd.speed.shapes import positive_ints

    result = bench_loss_paths(
        shape,
        device=device,
        dtype=dtype,
        rollouts=rollouts,
        completion=completion,
        student_prompt=student_prompt,
        teacher_prompt=teacher_prompt,
        chunks=tuple(positive_ints(chunk, "--chunk")),
        reps=reps,
        log=show,
    )
    finish(result, out, "path loss_step_s peak_memory_gib step_s_with_fast_rollouts step_s_with_hf_rollouts")


def _step_settings(
    method: str,
    shape: str,
    model: str | None,
    device: str,
    dtype: str,
    *,
    micro_batch: str,
    max_tokens: str,
    checkpointing: str,
    chunk: str,
    **fixed,
) -> list:
    """One `StepSetting` per (checkpointing, micro-batch, token cap) the options list."""
    from copsd.speed.shapes import positive_ints
    from copsd.speed.step_memory import StepSetting

    modes = [m.strip() for m in checkpointing.split(",") if m.strip()]
    if not modes or any(m not in ("on", "off") for m in modes):
        raise CopsdError(f"--checkpointing takes on, off or on,off, got {checkpointing!r}")
    caps = [int(x) for x in max_tokens.split(",") if x.strip()] if max_tokens.strip() else [0]
    if any(c < 0 for c in caps):
        raise CopsdError(f"--max-tokens takes comma-separated integers >= 0, got {max_tokens!r}")
    return [
        StepSetting(
            method=method,
            shape=shape,
            model=model,
            device=device,
            dtype=dtype,
            micro_batch=mb,
            max_tokens=cap,
            checkpointing=mode == "on",
            chunk=positive_ints(chunk, "--chunk")[0],
            **fixed,
        )
        for mode in modes
        for mb in positive_ints(micro_batch, "--micro-batch")
        for cap in caps
    ]


def _measured_step(settings: list, out: Path | None) -> None:
    """`speed step --method M`: each setting's step run, its time and peak memory measured."""
    from copsd.speed.step_memory import bench_step_memory

    result = bench_step_memory(settings, log=show)
    finish(result, out, f"{SETTING_COLUMNS} step_s peak_gib step_gib")


def _traced_step(settings: list, out: Path | None) -> None:
    """`speed step --method M --trace`: each setting's step counted on fake tensors."""
    from copsd.speed.step_memory import bench_step_memory
    from copsd.speed.trace_memory import trace

    result = bench_step_memory(settings, log=show, traced_by=trace)
    finish(result, out, f"{SETTING_COLUMNS} trace_s peak_gib step_gib estimate_gib")
