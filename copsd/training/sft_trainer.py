"""SFT baseline: target-language problem prompt -> English reference solution, cross-entropy on
the completion tokens only (the prompt is context, not a target)."""

from __future__ import annotations

import torch

from copsd.config import SftSettings
from copsd.losses import chunked_token_logprobs
from copsd.prompts import training_student_prompt
from copsd.training.forward import completion_hidden, decoder_and_head
from copsd.training.trainer import StepStats, Trainer


class SftTrainer(Trainer):
    cfg: SftSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder, self.lm_head = decoder_and_head(self.model)
        self.eos = (
            self.tok.convert_tokens_to_ids("<|im_end|>")
            if "<|im_end|>" in self.tok.get_vocab()
            else self.tok.eos_token_id
        )

    def pair(self, ex) -> tuple[list[int], list[int]]:
        prompt = training_student_prompt(self.tok, ex.problem, self.job.language, thinking=self.cfg.student_thinking)
        p = self.tok(prompt, add_special_tokens=False)["input_ids"]
        sep = "\n" if self.cfg.student_thinking else ""
        c = self.tok(sep + ex.solution_en, add_special_tokens=False)["input_ids"] + [self.eos]
        return p, c[: max(1, self.cfg.max_length - len(p))]

    def micro_batch_loss(self, examples, step: int, index: int, stats: StepStats) -> torch.Tensor:
        pairs = [self.pair(ex) for ex in examples]
        prompts, comps = [p for p, _ in pairs], [c for _, c in pairs]
        h = completion_hidden(self.decoder, prompts, comps, self.tok.pad_token_id, self.device)
        targets = torch.tensor([t for c in comps for t in c], device=self.device)
        logp = chunked_token_logprobs(h, self.lm_head, targets, chunk_size=self.cfg.loss_chunk_size or 10**9)
        stats.add("tokens", len(targets))
        return -logp.mean()

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        return {"tokens": stats.sum("tokens")}
