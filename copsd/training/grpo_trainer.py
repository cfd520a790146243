"""GRPO baseline: G rollouts per prompt, binary math-verify reward, group-normalised advantages,
clipped token-level surrogate, optional KL to the base model (adapters disabled).

`batch_size` counts completions per optimizer step (TRL's convention), so a step covers
batch_size / num_generations prompts. One gradient step per batch of rollouts (fully on-policy):
the importance ratio is 1 at the point where the gradient is taken, so the clip (epsilon) bounds
only the direction, as in TRL with num_iterations = 1.
"""

from __future__ import annotations

import torch

from copsd.config import GrpoSettings
from copsd.grading import extract_boxed, is_equivalent
from copsd.losses import chunked_token_logprobs
from copsd.prompts import training_student_prompt
from copsd.rollout import SamplingParams
from copsd.training.forward import completion_hidden, decoder_and_head
from copsd.training.trainer import StepStats, Trainer


def final_answer_region(text: str) -> str:
    """The part after the last `</think>` (the released reward grades the answer, not the thinking)."""
    return text.rsplit("</think>", 1)[-1] if "</think>" in text else text


def reward(text: str, gold: str, format_weight: float = 0.0) -> float:
    region = final_answer_region(text)
    pred = extract_boxed(region)
    return float(is_equivalent(pred, gold)) + (format_weight if pred is not None else 0.0)


class GrpoTrainer(Trainer):
    cfg: GrpoSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder, self.lm_head = decoder_and_head(self.model)

    def prompts_per_step(self) -> int:
        return max(1, self.cfg.batch_size // self.cfg.num_generations)

    def prompts_per_micro_batch(self) -> int:
        return max(1, self.cfg.micro_batch_size // self.cfg.num_generations)

    def policy_loss(self, prompt_ids: list[list[int]], comps: list[list[int]], adv: list[float]):
        """Token-level clipped surrogate (+ k3 KL to the base), averaged over all completion tokens."""
        cfg = self.cfg
        h = completion_hidden(self.decoder, prompt_ids, comps, self.tok.pad_token_id, self.device)
        targets = torch.tensor([t for c in comps for t in c], device=self.device)
        logp = chunked_token_logprobs(
            h, self.lm_head, targets, temperature=cfg.temperature, chunk_size=cfg.loss_chunk_size or 10**9
        )
        adv_tok = torch.tensor([a for a, c in zip(adv, comps) for _ in c], device=self.device)
        ratio = torch.exp(logp - logp.detach())
        surrogate = torch.minimum(ratio * adv_tok, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv_tok)
        per_token = -surrogate
        kl_value = None
        if cfg.kl_coef > 0:
            with torch.no_grad(), self.model.disable_adapter():
                href = completion_hidden(self.decoder, prompt_ids, comps, self.tok.pad_token_id, self.device)
                ref = chunked_token_logprobs(href, self.lm_head, targets, temperature=cfg.temperature)
            kl = torch.exp(ref - logp) - (ref - logp) - 1  # k3 estimator, >= 0
            per_token = per_token + cfg.kl_coef * kl
            kl_value = float(kl.mean().detach())
        return per_token.mean(), kl_value

    def micro_batch_loss(self, examples, step: int, index: int, stats: StepStats) -> torch.Tensor | None:
        cfg = self.cfg
        G = cfg.num_generations
        prompts = [
            training_student_prompt(self.tok, ex.problem, self.job.language, thinking=cfg.student_thinking)
            for ex in examples
        ]
        params = SamplingParams(
            n=G, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, max_new_tokens=cfg.max_completion_length
        )
        groups = self.sample(prompts, params, step, index, stats)
        prompt_ids, comps, adv = [], [], []
        for ex, p, g in zip(examples, prompts, groups):
            p_ids = self.tok(p, add_special_tokens=False)["input_ids"]
            r = torch.tensor([reward(x.text, ex.answer, cfg.format_reward) for x in g])
            stats.add("reward", *r.tolist())
            stats.add("zero_std_groups", float(r.std() == 0))
            a = (r - r.mean()) / (r.std() + 1e-4)
            for x, ai in zip(g, a.tolist()):
                if x.token_ids:
                    prompt_ids.append(p_ids)
                    comps.append(x.token_ids)
                    adv.append(ai)
        if not comps:
            return None
        loss, kl = self.policy_loss(prompt_ids, comps, adv)
        if kl is not None:
            stats.add("kl", kl)
        return loss

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        out = {
            "reward": stats.mean("reward"),
            "zero_variance_group_share": stats.mean("zero_std_groups"),
            **self.rollout_metrics(stats),
        }
        if stats.has("kl"):
            out["kl"] = stats.mean("kl")
        return out
