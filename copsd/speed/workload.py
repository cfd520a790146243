"""`copsd speed workload`: the evaluation as it really runs, where rows stop at different lengths.

The workload (stated, seeded, the same for every engine):
* prompts: the token lengths of the real evaluation prompts (MGSM/AfriMGSM Swahili, chat template
  with thinking, Qwen3 tokenizer: median 159, 97-336; `resources/workloads/`), random token ids
  (the weights are random too);
* `samples` sequences per prompt, adjacent (as `rollout.generate` orders them);
* each sequence's length drawn from a lognormal (median `median`, log-sd `sigma`), cut at the
  budget: the defaults (400, 0.9, 1,024) truncate ~15% of the sequences, the rest end between a
  few and 1,024 tokens. A row ends at exactly its length (the fast engine's per-sequence budget,
  no stop tokens; `hf` is made to emit the stop token there and only there), so every engine
  decodes the same number of tokens.
* the evaluation's sampling (T 1.0, top-p 0.95, no top-k).

Modes, timed in the same run on the same model:
* `fast`: continuous batching + one prefill per prompt (the engine's default);
* `static`: the same engine without refills or shared prefill (the engine before continuous
  batching: every slot waits for the slowest row of its wave, every row prefills its prompt);
* `hf`: transformers `generate` on static batches of `slots`, on the first `hf_problems` problems
  only (it is 10-20x slower), extrapolated to the whole workload by its useful tokens/s.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from importlib import resources

import torch

from copsd.rollout import SamplingParams, fast, hf
from copsd.speed.shapes import device_name, failed_row, peak_gib, random_model, reset_peak, sync, with_lora

MODES = ("fast", "static", "hf")  # and fast+<lever>... (rollout.fast.EngineOptions)


@dataclass
class Workload:
    prompts: list[list[int]]  # token ids per problem
    seqs: list[int]  # the problem of each sequence (samples adjacent)
    lengths: list[int]  # each sequence's length in new tokens (its stop), <= max_new

    def head(self, problems: int) -> Workload:
        """The sequences of the first `problems` problems (the `hf` subset)."""
        n = sum(1 for p in self.seqs if p < problems)
        return Workload(self.prompts, self.seqs[:n], self.lengths[:n])


def prompt_lengths() -> list[int]:
    text = resources.files("copsd").joinpath("resources/workloads/mgsm_swa_prompt_lengths.json").read_text()
    return json.loads(text)["lengths"]


def make_workload(
    problems: int, samples: int, median: float, sigma: float, max_new: int, vocab: int, seed: int = 0
) -> Workload:
    rng = random.Random(seed)
    real = prompt_lengths()
    prompts = [[rng.randrange(1000, vocab - 1000) for _ in range(real[i % len(real)])] for i in range(problems)]
    seqs = [p for p in range(problems) for _ in range(samples)]
    lengths = [max(1, min(max_new, round(rng.lognormvariate(math.log(median), sigma)))) for _ in seqs]
    return Workload(prompts, seqs, lengths)


def _run(model, mode: str, w: Workload, params: SamplingParams, stop: int, pad: int, slots: int) -> dict:
    dev = next(model.parameters()).device
    if mode == "hf":
        sync(dev)
        t0 = time.perf_counter()
        useful = 0
        for b, start in enumerate(range(0, len(w.seqs), slots)):
            seqs, lengths = w.seqs[start : start + slots], w.lengths[start : start + slots]
            rows = hf.generate_ids(model, [w.prompts[p] for p in seqs], params, [stop], pad, seed=b, limits=lengths)
            useful += sum(r.index(stop) + 1 if stop in r else len(r) for r in rows)
        sync(dev)
        return {"wall_s": time.perf_counter() - t0, "useful_tokens": useful}
    cont = mode.startswith("fast")  # fast[+levers]: continuous batching; static: the engine before issue 15
    eng = fast.engine_for(model, fast.EngineOptions.parse(mode) if cont else fast.EngineOptions())
    # warm-up: captures every bucket's graph from the shortest prompt up to the capacity the longest sets
    by_len = sorted(range(len(w.prompts)), key=lambda p: len(w.prompts[p]))
    warm = [by_len[0], by_len[-1]]
    eng.run(w.prompts, warm, params, [], pad, seed=0, slots=slots, limits=[2, 2], refill=cont, share=cont)
    sync(dev)
    t0 = time.perf_counter()
    out = eng.run(w.prompts, w.seqs, params, [], pad, seed=1, slots=slots, limits=w.lengths, refill=cont, share=cont)
    sync(dev)
    tm = eng.last_timing
    return {
        "wall_s": time.perf_counter() - t0,
        "useful_tokens": sum(map(len, out)),
        "capture_s": tm["capture_s"],
        "prefill_s": tm["prefill_s"],
        "decode_steps": tm["decode_steps"],
        "ms_per_step": 1e3 * tm["decode_s"] / max(1, tm["decode_steps"]),
        "slot_utilization": tm["useful_tokens"] / max(1, tm["slot_steps"]),
        "prefilled_prompts": tm["prefilled_prompts"],
    }


def bench_workload(
    shape: str,
    *,
    device: str,
    dtype: str = "bfloat16",
    problems: int = 250,
    samples: int = 12,
    slots: int = 128,
    median: float = 400.0,
    sigma: float = 0.9,
    max_new: int = 1024,
    modes: list[str],
    hf_problems: int = 8,
    lora: bool = True,
    temperature: float = 1.0,
    top_p: float = 0.95,
    top_k: int = 0,
    seed: int = 0,
    log=print,
) -> dict:
    dev = torch.device(device)
    model = random_model(shape, dev, getattr(torch, dtype))
    if lora:
        model = with_lora(model)
    cfg = model.config
    w = make_workload(problems, samples, median, sigma, max_new, cfg.vocab_size, seed)
    params = SamplingParams(temperature=temperature, top_p=top_p, top_k=top_k, max_new_tokens=max_new)
    total_useful = sum(w.lengths)
    rows = []
    for mode in modes:
        part = w.head(hf_problems) if mode == "hf" else w
        reset_peak(dev)
        row: dict = {"mode": mode, "problems": len(set(part.seqs)), "sequences": len(part.seqs), "slots": slots}
        try:
            row.update(_run(model, mode, part, params, cfg.eos_token_id, cfg.pad_token_id, slots))
        except Exception as e:
            rows.append(failed_row(row, mode, e))
            log(row)
            continue
        finally:
            fast.engine_for(model).release()
        row["useful_tokens_per_s"] = row["useful_tokens"] / row["wall_s"]
        row["workload_s"] = total_useful / row["useful_tokens_per_s"]  # hf: extrapolated from its subset
        row["extrapolated"] = mode == "hf" and len(part.seqs) < len(w.seqs)
        row["peak_memory_gib"] = peak_gib(dev)
        rows.append(row)
        log(row)
    by = {r["mode"]: r for r in rows if "error" not in r}
    for r in rows:
        levers = r["mode"].startswith("fast+")  # a lever set is also compared with plain fast
        for base in ("static", "hf", "fast") if levers else ("static", "hf"):
            if base in by and "error" not in r and r["mode"] != base:
                r[f"speedup_vs_{base}"] = r["useful_tokens_per_s"] / by[base]["useful_tokens_per_s"]
    return {
        "device": device_name(dev),
        "torch": torch.__version__,
        "shape": shape,
        "dtype": dtype,
        "lora": lora,
        "sampling": {"temperature": temperature, "top_p": top_p, "top_k": top_k, "max_new_tokens": max_new},
        "workload": {
            "problems": problems,
            "samples": samples,
            "prompt_tokens": {"min": min(map(len, w.prompts)), "max": max(map(len, w.prompts))},
            "length_distribution": f"lognormal(median {median:g}, sigma {sigma:g}) cut at {max_new}",
            "mean_length": total_useful / len(w.seqs),
            "truncated_share": sum(x == max_new for x in w.lengths) / len(w.seqs),
            "useful_tokens": total_useful,
            "seed": seed,
        },
        "rows": rows,
    }
