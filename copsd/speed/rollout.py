"""`copsd speed rollout`: decode throughput of the `fast` engine against transformers `generate`.

Per (shape, batch): tokens/s, ms per decode step, achieved memory bandwidth (weights + the
KV cache of the real context, read once per step) as a share of the device's measured copy
bandwidth, and peak memory. Stop tokens are off, so every row decodes the full budget. `hf` is
timed on fewer new tokens (it is 10-20x slower): its ms/step is the whole call (prefill
included) over the tokens decoded, and since its cost grows with the context, extrapolating
it to the full budget flatters it. The fast engine's ms/step is the decode loop alone.
"""

from __future__ import annotations

import time

import torch

from copsd.rollout import SamplingParams, fast, hf
from copsd.speed.shapes import (
    decode_weight_bytes,
    device_name,
    failed_row,
    kv_bytes_per_token,
    measured_peak_bandwidth,
    peak_gib,
    random_model,
    random_prompts,
    reset_peak,
    sync,
    with_lora,
)


def _bandwidth(model, config, dtype, batch, mean_context, step_s, peak_bw) -> dict:
    bytes_per_step = decode_weight_bytes(model, dtype) + batch * mean_context * kv_bytes_per_token(config, dtype)
    achieved = bytes_per_step / step_s
    return {
        "bytes_per_step_gb": bytes_per_step / 1e9,
        "achieved_gb_s": achieved / 1e9,
        "bandwidth_share": achieved / peak_bw if peak_bw else None,
    }


def bench_rollout(
    shape: str,
    *,
    device: str,
    dtype: str = "bfloat16",
    batches: list[int],
    new_tokens: int = 1024,
    hf_new_tokens: int = 128,
    prompt_len: int = 256,
    lora: bool = True,
    engines: list[str],
    temperature: float = 1.1,
    top_p: float = 0.95,
    top_k: int = 20,
    log=print,
) -> dict:
    dev = torch.device(device)
    dt = getattr(torch, dtype)
    peak_bw = measured_peak_bandwidth(dev)
    model = random_model(shape, dev, dt)
    if lora:
        model = with_lora(model)
    config = model.config
    rows: list[dict] = []
    for batch in batches:
        prompts = random_prompts(batch, prompt_len, config.vocab_size, seed=batch)
        mean_prompt = sum(map(len, prompts)) / batch
        for engine in engines:
            n_new = new_tokens if engine != "hf" else min(hf_new_tokens, new_tokens)
            params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=n_new)
            reset_peak(dev)
            row = {"shape": shape, "engine": engine, "batch": batch, "new_tokens": n_new, "lora": lora}
            try:
                if engine != "hf":  # fast, or fast with levers (fast+fuse, ...)
                    eng = fast.engine_for(model, fast.EngineOptions.parse(engine))
                    try:
                        eng.generate_ids(prompts, params, [], config.pad_token_id, seed=0)  # captures the graphs
                        row["capture_s"] = eng.last_timing["capture_s"]
                        eng.generate_ids(prompts, params, [], config.pad_token_id, seed=1)
                    finally:
                        eng.release()
                    tm = eng.last_timing
                    step_s = tm["decode_s"] / tm["decode_steps"]
                    total_s = tm["prefill_s"] + tm["decode_s"]
                    row["prefill_s"] = tm["prefill_s"]
                else:
                    warm = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=4)
                    hf.generate_ids(model, prompts, warm, [], config.pad_token_id, seed=0)
                    sync(dev)
                    t0 = time.perf_counter()
                    hf.generate_ids(model, prompts, params, [], config.pad_token_id, seed=1)
                    sync(dev)
                    total_s = time.perf_counter() - t0
                    step_s = total_s / n_new
            except Exception as e:
                rows.append(failed_row(row, engine, e))
                log(row)
                continue
            row.update(
                ms_per_step=1e3 * step_s,
                tokens_per_s=batch * n_new / total_s,
                decode_tokens_per_s=batch / step_s,
                peak_memory_gib=peak_gib(dev),
                **_bandwidth(model, config, dt, batch, mean_prompt + n_new / 2, step_s, peak_bw),
            )
            rows.append(row)
            log(row)
        by: dict[str, dict] = {r["engine"]: r for r in rows if r["batch"] == batch and "error" not in r}
        for name, r in by.items():
            if name != "hf" and "hf" in by:
                r["speedup_vs_hf"] = by["hf"]["ms_per_step"] / r["ms_per_step"]
            if name.startswith("fast+") and "fast" in by:
                r["speedup_vs_fast"] = by["fast"]["ms_per_step"] / r["ms_per_step"]
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "dtype": dtype,
        "peak_bandwidth_gb_s": peak_bw / 1e9 if peak_bw else None,
        "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k},
        "prompt_len_max": prompt_len,
        "rows": rows,
    }


def profile_decode(
    shape: str,
    *,
    device: str,
    dtype: str = "bfloat16",
    batch: int = 128,
    steps: int = 32,
    prompt_len: int = 256,
    lora: bool = True,
    temperature: float = 1.1,
    top_p: float = 0.95,
    top_k: int = 20,
    top: int = 20,
) -> dict:
    """Where a decode step's GPU time goes: kernels of eager steps grouped by kind, next to the
    wall time of the same step replayed as a CUDA graph (the rest is idle time between kernels)."""
    from torch.profiler import ProfilerActivity, profile

    dev = torch.device(device)
    model = random_model(shape, dev, getattr(torch, dtype))
    if lora:
        model = with_lora(model)
    prompts = random_prompts(batch, prompt_len, model.config.vocab_size, seed=0)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=steps + 1)
    eng = fast.engine_for(model)
    pad = model.config.pad_token_id
    eng.generate_ids(prompts, params, [], pad, seed=0)
    eng.generate_ids(prompts, params, [], pad, seed=0)
    graph_ms = 1e3 * eng.last_timing["decode_s"] / eng.last_timing["decode_steps"]
    eng.generate_ids(prompts, params, [], pad, seed=0, use_graph=False)  # eager warm-up
    eager_ms = 1e3 * eng.last_timing["decode_s"] / eng.last_timing["decode_steps"]
    s = eng.state  # rewind the eager state and profile bare decode steps (no prefill)
    assert s is not None
    width = fast.layout.prompt_width(map(len, prompts))
    s.pos.fill_(width)
    s.step.fill_(1)
    s.finished.fill_(False)
    kv_len = fast.layout.kv_len(width + steps - 1, s.capacity)
    stops = torch.tensor([-1], device=dev)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            eng.decoder.decode_one_token(s, kv_len, params, stops, pad)
        sync(dev)
    kernels = []
    for e in prof.key_averages():
        t = getattr(e, "self_device_time_total", 0) or 0
        if (
            t > 0
            and not e.key.startswith("aten::")
            and getattr(e, "device_type", None) is not None
            and str(e.device_type).endswith("CUDA")
        ):
            kernels.append((e.key, t / 1e3 / steps, e.count / steps))
    kernels.sort(key=lambda k: -k[1])

    def kind(name: str) -> str:
        low = name.lower()
        for k, words in (
            ("attention", ("fmha", "flash", "attention", "sdpa", "softmax_warp")),
            ("matmul", ("gemm", "sm90", "cutlass", "matmul", "splitk", "nvjet")),
            ("sampling", ("topk", "sort", "radix", "exponential", "argmax", "gather", "scan", "cumsum")),
            ("norm/rope/elementwise", ("elementwise", "vectorized", "reduce", "norm", "cat", "index")),
        ):
            if any(w in low for w in words):
                return k
        return "other"

    groups: dict[str, float] = {}
    for name, ms, _ in kernels:
        groups[kind(name)] = groups.get(kind(name), 0.0) + ms
    busy = sum(groups.values())
    return {
        "shape": shape,
        "batch": batch,
        "graph_ms_per_step": graph_ms,
        "eager_ms_per_step": eager_ms,
        "kernel_ms_per_step": busy,
        "kernels_per_step": sum(c for _, _, c in kernels),
        "by_kind_ms": dict(sorted(groups.items(), key=lambda kv: -kv[1])),
        "top_kernels": [{"name": k[:120], "ms_per_step": ms, "calls_per_step": c} for k, ms, c in kernels[:top]],
    }
