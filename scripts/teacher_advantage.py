"""Can the teacher teach? The teacher's privileged prompt against the student's, before any training.

    python scripts/teacher_advantage.py [--model builtin:qwen2.5-coder-0.5b-instruct] [--language swa]
        [--n 32] [--dtype bfloat16] [--max-new-tokens 384] [--data-path FILE] [--out result.json]

On held-out training records (`load_training_data(language)`'s validation split: the last `--n`
records of its seeded shuffle, never trained on when val_size >= n; each has the target-language
problem, the English problem and the English reference solution), with copsd's own prompt builders
(`training_student_prompt` and `teacher_prompt` with the English problem and solution, exactly as
copsd/training/copsd_trainer.py renders them) and the `paper` grader:

(a) greedy accuracy and format rate of the model's own generation from the student prompt vs from
    the teacher prompt (`--max-new-tokens`, copsd's rollout engine);
(b) the mean per-token log-likelihood of the reference solution (the English solution the records
    carry, as the assistant's answer) under the teacher prompt vs under the student prompt, and the
    share of problems where the teacher's is higher. The teacher prompt contains that very solution,
    so part of (b) is copying: read it with (c);
(c) on the student's own greedy rollouts (what COPSD's loss scores): mean per-token log-likelihood
    under the teacher prompt minus under the student prompt, for correct and for wrong rollouts
    (does the teacher prefer the right ones?).

Every mean comes with its standard error (paired where two prompts see the same problems). Prints a
summary; `--out` writes it with every response (JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch

from copsd.data.training import load_training_data
from copsd.grading import GRADERS
from copsd.models import load_model
from copsd.prompts import teacher_prompt, training_student_prompt
from copsd.rollout import SamplingParams, generate


def mean_se(xs: list[float]) -> tuple[float, float]:
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n == 1:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def fmt(xs: list[float], pct: bool = False) -> str:
    m, se = mean_se(xs)
    k = 100 if pct else 1
    return f"{k * m:.1f}% ± {k * se:.1f}" if pct else f"{m:.3f} ± {se:.3f}"


@torch.no_grad()
def continuation_logprobs(model, tok, prompt: str, continuation_ids: list[int]) -> list[float]:
    """log p(continuation token | prompt, previous continuation tokens), one per continuation token."""
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    ids = torch.tensor([p_ids + continuation_ids], device=model.device)
    logits = model(input_ids=ids).logits[0, len(p_ids) - 1 : -1].float()
    lp = torch.log_softmax(logits, dim=-1)
    return lp.gather(1, torch.tensor(continuation_ids, device=lp.device)[:, None])[:, 0].tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="builtin:qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--language", default="swa")
    ap.add_argument("--n", type=int, default=32, help="held-out records (the validation split's size)")
    ap.add_argument("--data-path", default=None, help="a COPSD training file (default: the bundled set)")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--max-new-tokens", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--engine", default="hf")
    ap.add_argument("--grader", default="paper", choices=sorted(GRADERS))
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    t_start = time.perf_counter()
    _, held_out = load_training_data(args.language, args.data_path, val_size=args.n)
    lm = load_model(args.model, dtype=args.dtype, device="cpu")
    tok, model, grader = lm.tokenizer, lm.model, GRADERS[args.grader]
    print(f"{args.model} in {model.dtype}; {len(held_out)} held-out '{args.language}' records; "
          f"greedy, {args.max_new_tokens} tokens; grader {args.grader}", flush=True)  # fmt: skip
    student = [training_student_prompt(tok, ex.problem, args.language) for ex in held_out]
    teacher = [
        teacher_prompt(tok, ex.problem, args.language, problem_en=ex.problem_en, solution_en=ex.solution_en)
        for ex in held_out
    ]
    params = SamplingParams(temperature=0, max_new_tokens=args.max_new_tokens)
    gens = {}
    for role, prompts in (("student", student), ("teacher", teacher)):
        t = time.perf_counter()
        gens[role] = [
            g[0] for g in generate(model, tok, prompts, params, batch_size=args.batch_size, engine=args.engine)
        ]
        n_tok = sum(len(r.token_ids) for r in gens[role])
        print(f"  generated from the {role} prompt: {n_tok} tokens in {time.perf_counter() - t:.0f}s", flush=True)
    rows = []
    for i, ex in enumerate(held_out):
        row: dict = {"id": ex.id, "gold": ex.answer}
        for role in ("student", "teacher"):
            r = gens[role][i]
            pred = grader.extract(r.text)
            row[role] = {
                "extracted": pred,
                "correct": bool(grader.correct(pred, ex.answer)),
                "boxed": pred is not None,
                "truncated": not r.finished,
                "n_tokens": len(r.token_ids),
                "response": r.text,
            }
        ref = tok(ex.solution_en.strip(), add_special_tokens=False)["input_ids"]
        row["ref_logprob"] = {
            "teacher": sum(continuation_logprobs(model, tok, teacher[i], ref)) / len(ref),
            "student": sum(continuation_logprobs(model, tok, student[i], ref)) / len(ref),
            "n_tokens": len(ref),
        }
        roll = gens["student"][i].token_ids
        if roll:
            row["rollout_logprob"] = {
                "teacher": sum(continuation_logprobs(model, tok, teacher[i], roll)) / len(roll),
                "student": sum(continuation_logprobs(model, tok, student[i], roll)) / len(roll),
            }
        rows.append(row)
    n = len(rows)
    acc = {r: [float(x[r]["correct"]) for x in rows] for r in ("student", "teacher")}
    boxed = {r: [float(x[r]["boxed"]) for x in rows] for r in ("student", "teacher")}
    trunc = {r: [float(x[r]["truncated"]) for x in rows] for r in ("student", "teacher")}
    lp_t = [x["ref_logprob"]["teacher"] for x in rows]
    lp_s = [x["ref_logprob"]["student"] for x in rows]
    gap = [a - b for a, b in zip(lp_t, lp_s)]
    with_roll = [x for x in rows if "rollout_logprob" in x]
    roll_gap = {
        ok: [
            x["rollout_logprob"]["teacher"] - x["rollout_logprob"]["student"]
            for x in with_roll
            if x["student"]["correct"] == ok
        ]
        for ok in (True, False)
    }
    summary = {
        "model": args.model,
        "dtype": str(model.dtype),
        "language": args.language,
        "n": n,
        "max_new_tokens": args.max_new_tokens,
        "grader": args.grader,
        "engine": args.engine,
        "threads": torch.get_num_threads(),
        "accuracy": {r: mean_se(acc[r]) for r in acc},
        "accuracy_teacher_minus_student": mean_se([a - b for a, b in zip(acc["teacher"], acc["student"])]),
        "format_rate": {r: mean_se(boxed[r]) for r in boxed},
        "truncation_rate": {r: mean_se(trunc[r]) for r in trunc},
        "ref_logprob_per_token": {"teacher": mean_se(lp_t), "student": mean_se(lp_s)},
        "ref_logprob_gap": mean_se(gap),
        "ref_teacher_higher_share": mean_se([float(g > 0) for g in gap]),
        "rollout_logprob_gap": {("correct" if ok else "wrong"): (len(v), *mean_se(v)) for ok, v in roll_gap.items()},
        "seconds": round(time.perf_counter() - t_start),
    }
    print(f"\n(a) greedy accuracy, N={n}: student {fmt(acc['student'], True)}, teacher {fmt(acc['teacher'], True)} "
          f"(paired difference {fmt([a - b for a, b in zip(acc['teacher'], acc['student'])], True)}); "
          f"format rate student {fmt(boxed['student'], True)}, teacher {fmt(boxed['teacher'], True)}; "
          f"truncated student {fmt(trunc['student'], True)}, teacher {fmt(trunc['teacher'], True)}")  # fmt: skip
    print(f"(b) reference solution, mean log-likelihood per token: teacher {fmt(lp_t)}, student {fmt(lp_s)}; "
          f"teacher - student {fmt(gap)}; teacher higher on {fmt([float(g > 0) for g in gap], True)} of problems")  # fmt: skip
    for ok, v in roll_gap.items():
        print(f"(c) student's own {'correct' if ok else 'wrong'} rollouts (n={len(v)}): teacher - student "
              f"log-likelihood per token {fmt(v) if v else 'n/a'}")  # fmt: skip
    print(f"{summary['seconds']} s")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summary": summary, "rows": rows}, indent=1, ensure_ascii=False) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
