"""bfloat16 vs float32 on this CPU for a real model: decode speed and accuracy on the same problems.

    python scripts/bf16_cpu_check.py [--model builtin:qwen2.5-coder-0.5b-instruct]
        [--dtypes float32,bfloat16] [--accuracy-dtypes float32,bfloat16] [--rows 16] [--speed-tokens 128]
        [--limit 20] [--max-new-tokens 384] [--languages eng,swa] [--out result.json]

For each dtype (one process, one after the other, so both share the machine's state): load the model
through copsd (`load_model(..., dtype=...)`, which honours bfloat16 on a CPU with native bf16), then
- speed (with the 1-minute load average after it: on a shared machine, compare dtypes only from a
  quiet run): `--rows` MGSM-English student prompts decoded together for up to `--speed-tokens` greedy
  tokens through copsd's rollout engine (`--engine`, hf by default as on CPU); tokens/s counts the
  tokens actually generated (rows that stop early stop counting);
- accuracy (the dtypes in `--accuracy-dtypes`): `copsd.evaluation.evaluate` on MGSM's first `--limit`
  problems per language, greedy, `--max-new-tokens`, the paper grader: accuracy, format rate, mean
  length, truncation, and how many responses are token-identical to the first dtype's.
The numbers of docs/benchmarks.md ("bfloat16 vs float32 on CPU") come from this script.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

from copsd.config import EvalConfig
from copsd.data.benchmarks import load_problems
from copsd.evaluation.evaluate import evaluate
from copsd.models import load_model
from copsd.prompts import student_prompt
from copsd.rollout import SamplingParams, generate


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--accuracy-dtypes", default=None, help="dtypes to grade (default: all of --dtypes; '' = none)")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--speed-tokens", type=int, default=128)
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--limit", type=int, default=20)
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--languages", default="eng,swa")
    ap.add_argument("--out", type=Path, default=None, help="write the summary and every response (JSON)")
    args = ap.parse_args()
    dtypes = args.dtypes.split(",")
    graded = dtypes if args.accuracy_dtypes is None else [d for d in args.accuracy_dtypes.split(",") if d]
    env = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": cpu_model(),
        "cores": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": args.model,
        "engine": args.engine,
    }
    print(json.dumps(env))
    result: dict = {"env": env, "args": vars(args) | {"out": str(args.out)}, "runs": {}}
    first_responses: dict[str, list[str]] = {}
    for dtype in dtypes:
        t0 = time.perf_counter()
        lm = load_model(args.model, dtype=dtype, device="cpu")
        run: dict = {"computes_in": str(lm.model.dtype), "load_s": round(time.perf_counter() - t0, 1)}
        tok, model = lm.tokenizer, lm.model
        # speed: rows x speed-tokens greedy decode (a short warm-up first)
        qs = [p.question for p in load_problems("mgsm", "eng", limit=args.rows)]
        prompts = [student_prompt(tok, q, "eng") for q in qs]
        generate(
            model, tok, prompts[:2], SamplingParams(temperature=0, max_new_tokens=4), batch_size=2, engine=args.engine
        )
        t = time.perf_counter()
        out = generate(
            model, tok, prompts, SamplingParams(temperature=0, max_new_tokens=args.speed_tokens),
            batch_size=args.rows, engine=args.engine,
        )  # fmt: skip
        secs = time.perf_counter() - t
        n_tok = sum(len(g[0].token_ids) for g in out)
        run["speed"] = {
            "load_average_after": [round(x, 2) for x in os.getloadavg()],  # other processes sharing the CPU
            "rows": args.rows,
            "tokens": n_tok,
            "seconds": round(secs, 1),
            "tok_per_s": round(n_tok / secs, 1),
        }
        print(f"[{dtype} -> {run['computes_in']}] loaded in {run['load_s']}s; {args.rows} rows x {args.speed_tokens} "
              f"tokens: {n_tok} tokens in {secs:.1f}s = {n_tok / secs:.1f} tok/s", flush=True)  # fmt: skip
        if dtype in graded:
            run["accuracy"] = {}
            for lang in args.languages.split(","):
                probs = load_problems("mgsm", lang, limit=args.limit)
                cfg = EvalConfig(
                    benchmark="mgsm", batch_size=args.limit, rollout_engine=args.engine,
                    decoding={"n_samples": 1, "temperature": 0.0, "max_new_tokens": args.max_new_tokens},
                )  # fmt: skip
                t = time.perf_counter()
                ev = evaluate(model, tok, probs, lang, cfg, seed=0)
                secs = time.perf_counter() - t
                m = ev.metrics
                responses = [r["response"] for r in ev.records]
                key = lang
                same = None
                if key in first_responses:
                    same = sum(a == b for a, b in zip(first_responses[key], responses))
                else:
                    first_responses[key] = responses
                row = {
                    "n": len(probs),
                    "accuracy": m["accuracy"],
                    "format_rate": m["format_rate"],
                    "mean_length": m["mean_length"],
                    "truncation_rate": m["truncation_rate"],
                    "repetition_rate": m["repetition_rate"],
                    "seconds": round(secs, 1),
                    "generated_tokens": sum(r["n_tokens"] for r in ev.records),
                    "same_responses_as_first_dtype": same,
                    "records": [
                        {
                            k: r[k]
                            for k in ("problem_id", "gold", "extracted", "correct", "truncated", "n_tokens", "response")
                        }
                        for r in ev.records
                    ],
                }
                run["accuracy"][lang] = row
                print(f"  [{lang}] {len(probs)} problems: accuracy {m['accuracy']:.3f}, format {m['format_rate']:.3f}, "
                      f"mean length {m['mean_length']:.1f}, truncated {m['truncation_rate']:.2f}, {secs:.1f}s "
                      f"({row['generated_tokens'] / secs:.1f} tok/s); identical to first dtype: {same}", flush=True)  # fmt: skip
        result["runs"][dtype] = run
        del lm, model
        if args.out:  # after each dtype, so an interrupted run keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(result, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    if args.out:
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
