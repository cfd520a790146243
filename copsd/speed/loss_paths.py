"""`copsd speed step` (without --method): one COPSD training step -- rollouts, teacher + student forward, loss,
backward, optimizer -- with the lean loss path against the naive one, on random-weight shapes.

* lean  (the default): only rollout positions reach the LM head, the loss is computed per
  `chunk`-token block under checkpointing, the teacher runs under `no_grad` with adapters off;
* naive: the model's full logits (every prompt and rollout position, upcast to fp32) for
  student and teacher, then the same divergence on the rollout positions.
Both run under gradient checkpointing (as jobs do on a GPU) with LoRA r=64 on every projection.
"""

from __future__ import annotations

import random
import tempfile
import time
from typing import Any

import torch

from copsd.losses import token_divergence
from copsd.rollout import SamplingParams, fast, hf
from copsd.speed.shapes import device_name, peak_gib, random_model, random_prompts, reset_peak, sync, with_lora


def _trainer(model, chunk: int):
    from copsd.config import JobConfig
    from copsd.training.copsd_trainer import CopsdTrainer

    job = JobConfig.model_validate(
        {"method": "copsd", "model": "bench", "language": "swa", "train": {"method": "copsd", "loss_chunk_size": chunk}}
    )
    return CopsdTrainer(job, model, None, [], tempfile.mkdtemp(prefix="copsd-bench-"))


def _naive_loss(trainer, student, teacher, completions, pad_id) -> torch.Tensor:
    """Full logits for every position (what a plain `model(...).logits` training step does)."""
    from copsd.training.forward import pad_right

    cfg, model, dev = trainer.cfg, trainer.model, trainer.device

    def completion_logits(prompts):
        ids, mask = pad_right([p + c for p, c in zip(prompts, completions)], pad_id, dev)
        logits = model(input_ids=ids, attention_mask=mask).logits.float()
        rows = [i for i, c in enumerate(completions) for _ in c]
        cols = [j for p, c in zip(prompts, completions) for j in range(len(p) - 1, len(p) + len(c) - 1)]
        return logits[torch.tensor(rows, device=dev), torch.tensor(cols, device=dev)]

    with torch.no_grad(), trainer.teacher_weights():
        lt = completion_logits(teacher)
    ls = completion_logits(student)
    return token_divergence(
        ls, lt, kind=cfg.divergence, beta=cfg.beta, temperature=cfg.temperature, clip=cfg.clip, clip_mode=cfg.clip_mode
    ).mean()


def bench_loss_paths(
    shape: str,
    *,
    device: str,
    dtype: str = "bfloat16",
    rollouts: int = 4,
    completion: int = 1024,
    student_prompt: int = 256,
    teacher_prompt: int = 768,
    chunks: tuple[int, ...] = (256,),
    reps: int = 3,
    hf_tokens: int = 64,
    log=print,
) -> dict:
    dev = torch.device(device)
    model = with_lora(random_model(shape, dev, getattr(torch, dtype)))
    if dev.type == "cuda":
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    pad = model.config.pad_token_id
    vocab = model.config.vocab_size
    student = random_prompts(rollouts, student_prompt, vocab, seed=1)
    rng = random.Random(0)
    teacher = [[rng.randrange(1000, vocab - 1000) for _ in range(teacher_prompt)] for _ in range(rollouts)]
    params = SamplingParams(temperature=1.1, top_p=0.95, top_k=20, max_new_tokens=completion)
    out: dict[str, Any] = {
        "device": device_name(dev),
        "torch": torch.__version__,
        "shape": shape,
        "dtype": dtype,
        "rollouts": rollouts,
        "completion": completion,
        "student_prompt_max": student_prompt,
        "teacher_prompt": teacher_prompt,
        "rows": [],
    }

    # rollouts: fast at the full budget; hf on `hf_tokens` per-step cost (it is the slow part)
    eng = fast.engine_for(model)
    eng.generate_ids(student, params, [], pad, seed=0)
    completions = eng.generate_ids(student, params, [], pad, seed=1)
    fast_s = eng.last_timing["prefill_s"] + eng.last_timing["decode_s"]
    short = SamplingParams(temperature=1.1, top_p=0.95, top_k=20, max_new_tokens=hf_tokens)
    hf.generate_ids(model, student, SamplingParams(max_new_tokens=2), [], pad, seed=0)
    sync(dev)
    t0 = time.perf_counter()
    hf.generate_ids(model, student, short, [], pad, seed=0)
    sync(dev)
    hf_step_ms = 1e3 * (time.perf_counter() - t0) / hf_tokens
    out["rollout"] = {
        "fast_s": fast_s,
        "fast_ms_per_step": 1e3 * eng.last_timing["decode_s"] / (completion - 1),
        "hf_ms_per_step": hf_step_ms,
        "hf_s_extrapolated": hf_step_ms * completion / 1e3,
    }
    log(out["rollout"])

    for path, chunk in [("lean", c) for c in chunks] + [("naive", 0)]:
        trainer = _trainer(model, chunk)
        model.train()
        times = []
        row: dict[str, Any]
        reset_peak(dev)
        try:
            for _ in range(reps + 1):  # the first is a warm-up
                sync(dev)
                t0 = time.perf_counter()
                trainer.optimizer.zero_grad(set_to_none=True)
                if path == "lean":
                    loss, _ = trainer.token_loss(student, teacher, completions, pad)
                else:
                    loss = _naive_loss(trainer, student, teacher, completions, pad)
                loss.backward()
                trainer.optimizer.step()
                sync(dev)
                times.append(time.perf_counter() - t0)
            row = {
                "path": path if path == "naive" else f"lean (chunk {chunk})",
                "loss_step_s": min(times[1:]),
                "peak_memory_gib": peak_gib(dev),
                "loss": float(loss.detach()),
            }
        except torch.cuda.OutOfMemoryError:
            row = {"path": path, "chunk": chunk, "error": "out of memory"}
        model.eval()
        del trainer
        row["step_s_with_fast_rollouts"] = row.get("loss_step_s", float("nan")) + fast_s
        row["step_s_with_hf_rollouts"] = row.get("loss_step_s", float("nan")) + out["rollout"]["hf_s_extrapolated"]
        out["rows"].append(row)
        log(row)
    eng.release()
    return out
