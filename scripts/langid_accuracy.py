"""How well copsd's language identification names the language of known text: each benchmark
question, through the same pipeline the evaluation uses (math stripped, segments identified, the
dominant language), should come out as its own language (English for GSM8K).

    python scripts/langid_accuracy.py                      # bundled MGSM, PolyMath (low), GSM8K
    python scripts/langid_accuracy.py --benchmark afrimgsm # with COPSD_AFRIMGSM_DIR or the Hub cache
    python scripts/langid_accuracy.py --json out.json
    python scripts/langid_accuracy.py --cost               # 12 x 250 responses of ~1,024 tokens
    python scripts/langid_accuracy.py --eval-share         # its share of a real CPU evaluation, same run

Prints one row per (benchmark, language): questions, the share whose dominant language is the
right one, the mean share of letters identified as it, and the time per question. The numbers in
docs/method.md ("Language identification") come from this script.
"""

from __future__ import annotations

import argparse
import json
import time

SETS = [("mgsm", "test"), ("polymath", "low"), ("gsm8k", "test")]


def measure(benchmark: str, language: str, split: str) -> dict:
    from copsd.data.benchmarks import load_problems
    from copsd.evaluation.language_id import identifier_for, identify_parts

    questions = [p.question for p in load_problems(benchmark, language, split)]
    lid = identifier_for(language)
    t0 = time.perf_counter()
    shares = identify_parts(questions, lid)
    secs = time.perf_counter() - t0
    which = "english" if language == "eng" else "target"
    hits = [s.dominant(lid.supported) == which for s in shares]
    rates = [s.rate(which, lid.supported) for s in shares]
    known = [r for r in rates if r is not None]
    return {
        "benchmark": benchmark,
        "language": language,
        "split": split,
        "identifier": lid.name,
        "supported": lid.supported,
        "questions": len(questions),
        "dominant_correct": sum(hits) / len(hits) if lid.supported else None,
        "mean_share": sum(known) / len(known) if known and lid.supported else None,
        "ms_per_question": 1000 * secs / max(1, len(questions)),
    }


def cost(samples: int = 12 * 250, tokens: int = 1024) -> dict:
    """Seconds to identify `samples` responses of about `tokens` Qwen tokens each: Swahili MGSM
    sentences mixed with English GSM8K solutions, with LaTeX and a think block, as a real
    response would be (token counts from the real Qwen vocabulary when the tokenizer is there)."""
    import random

    from copsd.data.benchmarks import load_problems
    from copsd.evaluation.language_id import language_metrics

    sw = [p.question for p in load_problems("mgsm", "swa")]
    en = [p.question for p in load_problems("gsm8k", "eng")]
    rng = random.Random(0)
    chars = 4 * tokens  # ~4 characters per token for Latin-script text
    texts = []
    for _ in range(samples):
        parts, n = [], 0
        while n < chars:
            q = (
                rng.choice(sw if rng.random() < 0.6 else en)
                + f" $\\frac{{{rng.randint(1, 99)}}}{{4}} = {rng.random():.2f}$."
            )
            parts.append(q)
            n += len(q)
        cut = len(parts) * 3 // 4
        texts.append(" ".join(parts[:cut]) + "</think>" + " ".join(parts[cut:]) + " \\boxed{18}")
    t0 = time.perf_counter()
    language_metrics(texts, [True] * len(texts), "swa", thinking=True)
    secs = time.perf_counter() - t0
    return {"samples": samples, "chars_per_sample": sum(map(len, texts)) // len(texts), "seconds": secs}


def eval_share(problems: int = 16, samples: int = 2, tokens: int = 256) -> dict:
    """The identification's share of one real evaluation, both timed in the same run: SmolLM2-135M
    (real weights, CPU, fp32) on MGSM Swahili, sampled; then the same responses identified again
    alone (the evaluation already identified them once, inside its own time)."""
    from copsd.config import EvalConfig
    from copsd.data.benchmarks import load_problems
    from copsd.evaluation.evaluate import evaluate
    from copsd.evaluation.language_id import language_metrics
    from copsd.models import load_model

    lm = load_model("builtin:smollm2-135m-instruct", dtype="float32", device="cpu")
    probs = load_problems("mgsm", "swa")[:problems]
    cfg = EvalConfig(
        benchmark="mgsm",
        decoding={"n_samples": samples, "temperature": 0.6, "top_p": 0.95, "max_new_tokens": tokens},
        batch_size=problems * samples,
    )
    t0 = time.perf_counter()
    out = evaluate(lm.model, lm.tokenizer, probs, "swa", cfg, seed=0)
    eval_s = time.perf_counter() - t0
    texts = [r["response"] for r in out.records]
    t0 = time.perf_counter()
    language_metrics(texts, [r["correct"] for r in out.records], "swa", thinking=False)
    lid_s = time.perf_counter() - t0
    return {
        "responses": len(texts),
        "mean_chars": sum(map(len, texts)) // len(texts),
        "evaluation_s": eval_s,
        "identification_s": lid_s,
        "share": lid_s / eval_s,
        "target_language_rate": out.metrics["target_language_rate"],
        "english_rate": out.metrics["english_rate"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--benchmark", action="append", help="benchmark[:split]; default: the bundled sets")
    ap.add_argument("--json", help="also write the rows to this JSON file")
    ap.add_argument("--cost", action="store_true", help="time 12 x 250 responses of ~1,024 tokens instead")
    ap.add_argument("--eval-share", action="store_true", help="its share of a real CPU evaluation instead")
    args = ap.parse_args()
    if args.cost or args.eval_share:
        import platform

        import torch

        out = {
            **(cost() if args.cost else eval_share()),
            "machine": f"{platform.machine()}, {torch.get_num_threads()} threads",
            "date": time.strftime("%Y-%m-%d"),
        }
        print(json.dumps(out))
        if args.json:
            with open(args.json, "w", encoding="utf-8") as fh:
                json.dump(out, fh, indent=1)
        return
    from copsd.data.benchmarks import benchmarks

    sets = [(b.partition(":")[0], b.partition(":")[2] or "test") for b in args.benchmark] if args.benchmark else SETS
    rows = []
    for name, split in sets:
        for lang in benchmarks()[name].languages:
            try:
                rows.append(measure(name, lang, split))
            except Exception as exc:  # noqa: BLE001 - a language without local data: say so, go on
                rows.append({"benchmark": name, "language": lang, "split": split, "error": str(exc)[:120]})
    print("| benchmark | language | identifier | questions | dominant = its language | mean share | ms/question |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['benchmark']} | {r['language']} | – | – | not measured: {r['error']} | | |")
            continue
        dom = "unsupported" if r["dominant_correct"] is None else f"{100 * r['dominant_correct']:.1f}%"
        share = "–" if r["mean_share"] is None else f"{100 * r['mean_share']:.1f}%"
        print(
            f"| {r['benchmark']} | {r['language']} | {r['identifier']} | {r['questions']} | {dom} | {share} "
            f"| {r['ms_per_question']:.2f} |"
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(rows, fh, indent=1)


if __name__ == "__main__":
    main()
