"""SFT baseline: target-language problem prompt -> English reference solution.

`recipe: copsd` (default): the COPSD training prompt (label, thinking prefix), cross-entropy on
the solution tokens only (the prompt is context, not a target). `recipe: opsd`: the OPSD
repository's SFT recipe (TRL SFTTrainer on a chat-formatted text field): the user turn is the
problem + instruction, the assistant turn the solution, no thinking prefix, and the loss covers
every token of the sequence, prompt included."""

from __future__ import annotations

import torch

from copsd.config import SftSettings
from copsd.losses import chunked_token_logprobs
from copsd.prompts import student_prompt, training_student_prompt
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
        """(context tokens, target tokens); the loss is on the targets."""
        if self.cfg.recipe == "opsd":
            prompt = student_prompt(self.tok, ex.problem, self.job.language, thinking=False)
            ids = self.tok(prompt, add_special_tokens=False)["input_ids"]
            ids += self.tok(ex.solution_en, add_special_tokens=False)["input_ids"] + [self.eos]
            ids = ids[: self.cfg.max_length]
            return ids[:1], ids[1:]  # every token after the first is a target, as a plain LM loss
        prompt = training_student_prompt(self.tok, ex.problem, self.job.language, thinking=self.cfg.student_thinking)
        p = self.tok(prompt, add_special_tokens=False)["input_ids"]
        sep = "\n" if self.cfg.student_thinking else ""
        c = self.tok(sep + ex.solution_en, add_special_tokens=False)["input_ids"] + [self.eos]
        return p, c[: max(1, self.cfg.max_length - len(p))]

    def target_logprob_sum(self, prompts: list[list[int]], comps: list[list[int]]) -> torch.Tensor:
        """Sum of log p(target) over every target token of these sequences (one forward)."""
        h = completion_hidden(self.decoder, prompts, comps, self.tok.pad_token_id, self.device)
        targets = torch.tensor([t for c in comps for t in c], device=self.device)
        return chunked_token_logprobs(h, self.lm_head, targets, chunk_size=self.cfg.loss_chunk_size or 10**9).sum()

    def loss_parts(self, examples, step: int, index: int, stats: StepStats):
        """-sum(log p) / the micro-batch's target tokens, one part per forward sub-batch."""
        pairs = [self.pair(ex) for ex in examples]
        prompts, comps = [p for p, _ in pairs], [c for _, c in pairs]
        n_tokens = sum(len(c) for c in comps)
        stats.add("tokens", n_tokens)
        for idx in self.forward_batches([len(p) + len(c) for p, c in pairs]):
            yield -self.target_logprob_sum([prompts[i] for i in idx], [comps[i] for i in idx]) / n_tokens

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        return {"tokens": stats.sum("tokens")}
