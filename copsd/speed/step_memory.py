"""`copsd speed step --method copsd|grpo|sft`: the memory and time of one optimizer step through
the method's own trainer (`Trainer.compute_step`: micro-batches, `loss_parts` sub-batches,
backward, AdamW), with synthetic sequences of fixed lengths in place of rollouts and data.

Every rollout runs to the budget (the worst case, and what a real model's GRPO rollouts do), so
the numbers bound a real step's loss part; rollout time is not included (`copsd speed rollout`).
Each setting (gradient checkpointing on/off x micro-batch x token cap) is measured:
* CUDA: in this process, peak = `torch.cuda.max_memory_allocated` (reset per setting);
* CPU: in a fresh child process each (a process's peak RSS cannot be reset, and freed memory is
  not always returned to the OS), peak = the child's `resource.getrusage(RUSAGE_SELF).ru_maxrss`
  (whole process: Python, torch, weights and the step); `base_gib` is its RSS before the first step
  (`/proc/self/statm`), so `peak - base` is what the step itself added. The child runs with
  `MALLOC_MMAP_THRESHOLD_=131072` so that freed tensors go back to the OS (glibc would otherwise
  keep them in its heap and RSS would count memory the step no longer uses).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import resource
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from copsd.rollout import base_model


@dataclass(frozen=True)
class StepSetting:
    method: str
    shape: str  # a random-weight shape of copsd.speed.shapes, unless `model` is set
    model: str | None
    device: str
    dtype: str
    prompts: int  # prompts per optimizer step
    generations: int  # GRPO completions per prompt
    prompt_len: int
    completion: int  # tokens per rollout / SFT target
    teacher_prompt: int
    micro_batch: int  # train.micro_batch_size (GRPO: completions per forward)
    max_tokens: int  # train.max_tokens_per_forward
    checkpointing: bool
    chunk: int
    reps: int


def _rss_gib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**30


def _model(s: StepSetting):
    from copsd.speed.shapes import random_model, with_lora

    dev = torch.device(s.device)
    if s.model:
        from copsd.config import LoraSettings
        from copsd.models import load_model
        from copsd.training.adapters import wrap_lora

        lm = load_model(s.model, dtype=s.dtype, device=s.device)
        model = wrap_lora(lm.model, LoraSettings(), 0)
        with torch.no_grad():  # B non-zero, so the adapters do real work (as after a few steps)
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0, 1e-3)
        return model
    return with_lora(random_model(s.shape, dev, getattr(torch, s.dtype)))


def _job(s: StepSetting):
    """The job whose trainer the step runs: the setting's memory options over the method's defaults."""
    from copsd.config import JobConfig

    train = {
        "method": s.method,
        "micro_batch_size": s.micro_batch,
        "max_tokens_per_forward": s.max_tokens,
        "gradient_checkpointing": s.checkpointing,
        "loss_chunk_size": s.chunk,
        "batch_size": s.prompts * (s.generations if s.method == "grpo" else 1),
        "rollout_batch": "micro",  # rollouts are replaced below: nothing may sample for real
        "rollout_engine": "hf",  # (and so the memory estimate counts no rollout cache kept by the fast engine)
    }
    if s.method == "grpo":
        train["num_generations"] = s.generations
    if s.method == "sft":  # a pair is cut to max_length: the whole synthetic pair fits
        train["max_length"] = s.prompt_len + s.completion
    else:  # only the memory estimate reads it (the synthetic rollouts have exactly this length)
        train["max_completion_length"] = s.completion
    return JobConfig.model_validate({"method": s.method, "model": "bench", "language": "swa", "train": train})


def estimate_gib(s: StepSetting, config) -> float:
    """`copsd.training.memory`'s estimate for this setting (the preflight's), as tensor bytes on a GPU:
    the larger of its loss step and teacher forward, with the setting's prompt lengths and no
    rollout cache (the synthetic rollouts need none)."""
    from copsd.models.shapes import shape_from_config
    from copsd.training.memory import GiB, estimate

    job = _job(s).model_copy(update={"dtype": s.dtype})
    est = estimate(
        job, shape_from_config(config), "cuda", prompt_tokens=s.prompt_len, teacher_prompt_tokens=s.teacher_prompt
    )
    return max(est.total(p) for p in ("loss step", "teacher forward") if p in est.phases) / GiB


def _trainer(s: StepSetting, model):
    """The method's trainer with synthetic inputs in place of rollouts and data."""
    from copsd.training import TRAINERS

    cfg = base_model(model).config
    vocab = cfg.vocab_size
    rng = random.Random(0)

    def ids(n: int) -> list[int]:
        return [rng.randrange(min(1000, vocab // 4), vocab - min(1000, vocab // 4)) for _ in range(n)]

    job = _job(s)
    pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0

    class _Tok:  # all the trainers ask of a tokenizer once their inputs are token ids
        pad_token_id = eos_token_id = pad

        def get_vocab(self) -> dict:
            return {}

    # Any: the synthetic inputs replace methods of the concrete trainer class
    trainer: Any = TRAINERS[s.method](job, model, _Tok(), [], Path(tempfile.mkdtemp(prefix="copsd-bench-")))
    prompts = [ids(s.prompt_len) for _ in range(s.prompts)]
    completions = [ids(s.completion) for _ in range(s.prompts * max(1, s.generations))]
    if s.method == "grpo":
        g = s.generations

        def prepare(micro, step, stats):
            groups = []
            for batch in micro:
                p_ids, comps, adv = [], [], []
                for k in batch:
                    comps += completions[k * g : (k + 1) * g]
                    p_ids += [prompts[k]] * g
                    adv += [rng.gauss(0.0, 1.0) for _ in range(g)]
                groups.append((batch, p_ids, comps, adv))
            trainer.use_groups(groups)

        trainer.prepare_step = prepare
    elif s.method == "sft":
        trainer.pair = lambda k: (prompts[k], completions[k])
    else:
        teacher = [ids(s.teacher_prompt) for _ in range(s.prompts)]
        trainer.student_ids = lambda k: prompts[k]
        trainer.teacher_ids = lambda k: teacher[k]
        trainer.rollouts = lambda batch, step, micro, stats=None: [completions[k] for k in batch]
    return trainer


def measure(s: StepSetting) -> dict:
    """Time (best of `reps` after one warm-up) and peak memory of one optimizer step."""
    from copsd.speed.shapes import peak_gib, reset_peak, sync

    torch.manual_seed(0)
    dev = torch.device(s.device)
    model = _model(s)
    trainer = _trainer(s, model)
    examples = list(range(s.prompts))
    base = _rss_gib() if dev.type == "cpu" else torch.cuda.memory_allocated(dev) / 2**30
    load_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20 if dev.type == "cpu" else None
    reset_peak(dev)
    times = []
    metrics: dict = {}
    for _ in range(s.reps + 1 if s.reps else 1):  # a warm-up, then `reps` timed
        model.train()
        sync(dev)
        t0 = time.perf_counter()
        trainer.optimizer.zero_grad(set_to_none=True)
        metrics = trainer.compute_step(examples, 1)
        trainer.optimizer.step()
        sync(dev)
        times.append(time.perf_counter() - t0)
    if dev.type == "cpu":
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB
    else:
        peak = peak_gib(dev) or 0.0
    return {
        "step_s": min(times[1:]) if len(times) > 1 else times[0],  # reps 0: the one (cold) step
        "peak_gib": peak,
        "base_gib": base,
        "step_gib": peak - base,
        "load_peak_gib": load_peak,  # CPU: the peak before the first step (if equal to peak_gib, the step stayed below it)
        "forwards_per_step": forwards_per_step(s, trainer),
        "estimate_gib": estimate_gib(s, model.get_base_model().config),
        "loss": float(metrics.get("loss", float("nan"))),
    }


def forwards_per_step(s: StepSetting, trainer) -> int:
    """Forwards (with their backwards) one optimizer step makes: micro-batches split by the token cap."""
    from copsd.training.trainer import micro_batches

    per = s.generations if s.method == "grpo" else 1
    sizes = [len(b) * per for b in micro_batches(list(range(s.prompts)), trainer.prompts_per_micro_batch())]
    return sum(len(trainer.forward_batches([s.prompt_len + s.completion] * n)) for n in sizes)


def _child(s: StepSetting, q) -> None:
    try:
        q.put(measure(s))
    except BaseException as exc:  # noqa: BLE001 - reported as the row's error
        q.put({"error": f"{type(exc).__name__}: {exc}"[:300]})


def measure_isolated(s: StepSetting) -> dict:
    """`measure` in a fresh process (CPU: its peak RSS is this setting's alone)."""
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(s, q))
    # glibc keeps freed blocks below its (growing) mmap threshold in its heap, so RSS would count
    # memory the step no longer uses; a fixed 128 KiB threshold returns freed tensors to the OS
    saved = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", str(128 * 1024))
    try:
        p.start()
    finally:
        if saved is None:
            os.environ.pop("MALLOC_MMAP_THRESHOLD_", None)
    p.join()
    if not q.empty():
        return q.get()
    return {
        "error": f"the measuring process died (exit code {p.exitcode}; a negative code is a signal: -9 is "
        "usually out of memory)"
    }


def bench_step_memory(
    settings: list[StepSetting],
    *,
    log=print,
    traced_by=None,
) -> dict:
    """Each setting measured (CUDA in this process, CPU each in a fresh one), or, with `traced_by`
    (`copsd.speed.trace_memory.trace`, passed in so the two modules import one way), counted on
    fake tensors."""
    from copsd.speed.shapes import device_name

    first = settings[0]
    traced = traced_by is not None
    out: dict[str, Any] = {
        "device": "none: traced on fake tensors (copsd.speed.trace_memory)"
        if traced
        else device_name(torch.device(first.device)),
        "torch": torch.__version__,
        "method": first.method,
        "model": first.model or f"random {first.shape}",
        "dtype": first.dtype,
        "prompts": first.prompts,
        "generations": first.generations if first.method == "grpo" else 1,
        "prompt_len": first.prompt_len,
        "completion": first.completion,
        "memory": "live tensor bytes of the traced step (copsd.speed.trace_memory.LiveBytes)"
        if traced
        else "torch.cuda.max_memory_allocated"
        if first.device.startswith("cuda")
        else "peak RSS (getrusage ru_maxrss) of a fresh process per setting, MALLOC_MMAP_THRESHOLD_=131072",
        "rows": [],
    }
    for s in settings:
        if traced_by is not None:
            r = traced_by(s)
        elif s.device.startswith("cuda"):
            try:
                r = measure(s)
            except torch.cuda.OutOfMemoryError:
                r = {"error": "out of memory"}
        else:
            r = measure_isolated(s)
        row = {
            "checkpointing": "on" if s.checkpointing else "off",
            "micro_batch": s.micro_batch,
            "max_tokens": s.max_tokens or None,
            **r,
        }
        if s.device.startswith("cuda"):
            torch.cuda.empty_cache()
        out["rows"].append(row)
        log(row)
    out["settings"] = [asdict(s) for s in settings]
    return out
