"""GRPO baseline, as the released `multilingual_grpo_train.py` runs it on TRL's GRPOTrainer.

- Prompt: the evaluation prompt (problem + instruction, no "Problem:" label) with the thinking
  prefix, as the released script builds it.
- Reward: 1 if the FIRST `\\boxed{}` after the last `</think>` (anywhere, without one) is correct
  by the released reward's check (`copsd.grading.grpo_reward_correct`), else 0; plus the optional
  `format_reward` (0 by default; the released script has none).
- Advantages: (r - group mean) / (group std + 1e-4) (TRL's scale_rewards="group").
- Loss: token-level clipped surrogate (epsilon 0.2), aggregated per `loss_type`:
    dapo  sum over every completion token of the optimizer step / their number (TRL 0.26's
          default, which the released script gets: it sets no loss_type in code)
    grpo  mean over each completion's tokens, then mean over completions (TRL's original; the
          OPSD repository's GRPO launch script sets it)
    bnpo  mean over the tokens of each micro-batch, then mean over micro-batches
  Optional k3 KL to the base model (adapters disabled) with `kl_coef` (TRL's beta; default 0).

`batch_size` counts completions per optimizer step (TRL's convention), so a step covers
batch_size / num_generations prompts. All of a step's groups are sampled first (`prepare_step`,
as TRL generates the whole batch; with the fast engine in one call), so `dapo` can divide by the step's token count. The loss is
computed `micro_batch_size` completions per forward (TRL's per-device batch; fewer under
`max_tokens_per_forward`), each forward's part backpropagated before the next. One gradient
step per batch of rollouts: the importance ratio is 1 where the gradient is taken (TRL with
num_iterations = 1), so the clip bounds only the direction.
"""

from __future__ import annotations

import torch

from copsd.config import GrpoSettings
from copsd.grading import first_box_after_think, grpo_reward_correct
from copsd.losses import chunked_token_logprobs
from copsd.prompts import student_prompt
from copsd.training.forward import completion_hidden, decoder_and_head
from copsd.training.trainer import StepStats, Trainer


def final_answer_region(text: str) -> str:
    """The part after the last `</think>` (the released reward grades the answer, not the thinking)."""
    return text.rsplit("</think>", 1)[-1] if "</think>" in text else text


def reward(text: str, gold: str, format_weight: float = 0.0) -> float:
    """The released correctness reward, plus `format_weight` when a box was found."""
    has_box = first_box_after_think(text) is not None
    return float(grpo_reward_correct(text, gold)) + (format_weight if has_box else 0.0)


# one micro-batch's scored groups: (examples, prompt ids, completions, advantages), one entry per
# completion that has tokens
Group = tuple[list, list[list[int]], list[list[int]], list[float]]


class GrpoTrainer(Trainer):
    cfg: GrpoSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder, self.lm_head = decoder_and_head(self.model)
        self.use_groups([])

    def prompts_per_step(self) -> int:
        return max(1, self.cfg.batch_size // self.cfg.num_generations)

    def prompts_per_micro_batch(self) -> int:
        return max(1, self.cfg.micro_batch_size // self.cfg.num_generations)

    def prompt(self, ex) -> str:
        return student_prompt(self.tok, ex.problem, self.job.language, thinking=self.cfg.student_thinking)

    def prepare_step(self, micro: list[list], step: int, stats: StepStats) -> None:
        """Sample every group of the step (one call, or one per micro-batch: train.rollout_batch) and score it."""
        cfg = self.cfg
        params = cfg.sampling_params(n=cfg.num_generations)
        groups_by_micro: list[Group] = []
        prompts_by_micro = [[self.prompt(ex) for ex in examples] for examples in micro]
        sampled = self.sample_step(prompts_by_micro, params, step, stats)
        for examples, prompts, groups in zip(micro, prompts_by_micro, sampled):
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
            groups_by_micro.append((examples, prompt_ids, comps, adv))
        self.use_groups(groups_by_micro)

    def use_groups(self, groups: list[Group]) -> None:
        """The step's scored completions, one entry per micro-batch (what `loss_parts` forwards),
        and the step's normalisers, which every micro-batch's loss divides by."""
        self.groups = groups
        self.step_tokens = sum(len(c) for _, _, comps, _ in groups for c in comps)
        self.step_completions = sum(len(comps) for _, _, comps, _ in groups)

    def policy_loss(
        self,
        prompt_ids: list[list[int]],
        comps: list[list[int]],
        adv: list[float],
        n_micro: int,
        micro_tokens: int | None = None,
    ):
        """The clipped surrogate (+ k3 KL) of these completions (one forward), aggregated so that the
        mean over micro-batches that the trainer takes equals the `loss_type` aggregate over the whole
        step. `micro_tokens`: the completion tokens of the whole micro-batch when these are a
        sub-batch of it (bnpo's normaliser; default: these). Returns (loss, mean k3 KL or None)."""
        cfg = self.cfg
        chunk = cfg.loss_chunk_size or 10**9
        h = completion_hidden(self.decoder, prompt_ids, comps, self.tok.pad_token_id, self.device)
        targets = torch.tensor([t for c in comps for t in c], device=self.device)
        logp = chunked_token_logprobs(h, self.lm_head, targets, temperature=cfg.temperature, chunk_size=chunk)
        del h
        adv_tok = torch.tensor([a for a, c in zip(adv, comps) for _ in c], device=self.device)
        ratio = torch.exp(logp - logp.detach())
        surrogate = torch.minimum(ratio * adv_tok, ratio.clamp(1 - cfg.epsilon, 1 + cfg.epsilon) * adv_tok)
        per_token = -surrogate
        kl_value = None
        if cfg.kl_coef > 0:
            with torch.no_grad(), self.model.disable_adapter():
                href = completion_hidden(self.decoder, prompt_ids, comps, self.tok.pad_token_id, self.device)
                ref = chunked_token_logprobs(href, self.lm_head, targets, temperature=cfg.temperature, chunk_size=chunk)
                del href
            kl = torch.exp(ref - logp) - (ref - logp) - 1  # k3 estimator, >= 0
            per_token = per_token + cfg.kl_coef * kl
            kl_value = float(kl.mean().detach())
        if cfg.loss_type == "dapo":
            loss = per_token.sum() * n_micro / self.step_tokens
        elif cfg.loss_type == "grpo":
            lengths = [len(c) for c in comps]
            per_seq = torch.stack([t.mean() for t in torch.split(per_token, lengths)])
            loss = per_seq.sum() * n_micro / self.step_completions
        else:  # bnpo
            loss = per_token.sum() / (micro_tokens or per_token.numel())
        return loss, kl_value

    def loss_parts(self, examples, step: int, index: int, stats: StepStats):
        """The micro-batch's groups forwarded `micro_batch_size` completions at a time (TRL's
        per-device batch), fewer under `max_tokens_per_forward`; every aggregate is a sum over
        tokens or completions with the step's (bnpo: the micro-batch's) normaliser, so the parts
        add up to the loss of one forward over the whole micro-batch."""
        _examples, prompt_ids, comps, adv = self.groups[index]
        if not comps:
            return
        micro_tokens = sum(len(c) for c in comps)
        kl_sum, has_kl = 0.0, False
        for idx in self.forward_batches([len(p) + len(c) for p, c in zip(prompt_ids, comps)]):
            sub = [comps[i] for i in idx]
            loss, kl = self.policy_loss(
                [prompt_ids[i] for i in idx], sub, [adv[i] for i in idx], len(self.groups), micro_tokens
            )
            if kl is not None:
                kl_sum, has_kl = kl_sum + kl * sum(len(c) for c in sub), True
            yield loss
        if has_kl:
            stats.add("kl", kl_sum / micro_tokens)

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        out = {
            "reward": stats.mean("reward"),
            "zero_variance_group_share": stats.mean("zero_std_groups"),
            **self.rollout_metrics(stats),
        }
        if stats.has("kl"):
            out["kl"] = stats.mean("kl")
        return out
