"""Run a real pretrained model through copsd's evaluation and print what it produced.

    python scripts/real_model_check.py [--model builtin:smollm2-135m-instruct] [--limit 16]
        [--max-new-tokens 256] [--languages eng,swa] [--out docs/real_models_samples.jsonl]

For each language: MGSM problems, greedy, the evaluation prompt; prints the metrics, the seconds
(hf and fast engines, same greedy tokens), and a few responses with the grader's verdict. The
numbers in docs/real_models.md come from this script.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from copsd.config import EvalConfig
from copsd.data.benchmarks import load_problems
from copsd.evaluation.evaluate import evaluate
from copsd.models import load_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:smollm2-135m-instruct")
    ap.add_argument("--limit", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--languages", default="eng,swa")
    ap.add_argument("--out", type=Path, default=None, help="write every response with its verdict (JSONL)")
    args = ap.parse_args()
    t0 = time.perf_counter()
    lm = load_model(args.model, dtype="float32", device="cpu")
    print(f"{args.model}: loaded in {time.perf_counter() - t0:.1f}s on {platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    records = []
    for lang in args.languages.split(","):
        probs = load_problems("mgsm", lang, limit=args.limit)
        row = {}
        for engine in ("hf", "fast"):
            cfg = EvalConfig(
                benchmark="mgsm", batch_size=args.limit, rollout_engine=engine,
                decoding={"n_samples": 1, "temperature": 0.0, "max_new_tokens": args.max_new_tokens},
            )  # fmt: skip
            t = time.perf_counter()
            out = evaluate(lm.model, lm.tokenizer, probs, lang, cfg, seed=0)
            row[engine] = (time.perf_counter() - t, out)
        (t_hf, hf), (t_fast, fast) = row["hf"], row["fast"]
        same = [r["response"] for r in hf.records] == [r["response"] for r in fast.records]
        m = hf.metrics
        print(f"\n[{lang}] {len(probs)} problems, greedy, {args.max_new_tokens} tokens: accuracy {m['accuracy']:.3f}, "
              f"format rate {m['format_rate']:.3f}, mean length {m['mean_length']:.1f}, truncation "
              f"{m['truncation_rate']:.3f}, repetition {m['repetition_rate']:.3f}; hf {t_hf:.1f}s, fast {t_fast:.1f}s, "
              f"identical responses: {same}")  # fmt: skip
        for r in hf.records[:3]:
            print(
                f"  gold {r['gold']!r} extracted {r['extracted']!r} correct {r['correct']} truncated {r['truncated']}"
            )
            print("   ..." + r["response"][-240:].replace("\n", " | "))
        records += [{"language": lang, **r} for r in hf.records]
    if args.out:
        args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
        print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
