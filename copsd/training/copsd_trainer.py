"""COPSD: the student samples from the target-language prompt; the teacher (same network, with
the English problem and reference solution in its prompt) scores the student's tokens; the loss
is the per-token divergence between their next-token distributions over the rollout.

One optimizer step = `batch_size` prompts, in micro-batches of `micro_batch_size`:
  1. rollouts: the current policy (adapters on) generates from the student prompt alone;
  2. student forward (with grad) on student prompt + rollout;
  3. teacher forward (no grad) on teacher prompt + the same rollout tokens, with the adapters
     disabled (`fixed`, the paper's setting), the current adapters (`live`), or an EMA of them;
  4. loss = sum over rollout tokens of the (clipped) divergence / number of rollout tokens,
     divided by the number of micro-batches (gradient accumulation).
Steps 2-4 run per sub-batch of the micro-batch's sequences under `train.max_tokens_per_forward`
(`loss_parts`), each part backpropagated before the next; the parts sum to the same loss.
"""

from __future__ import annotations

import contextlib

import torch

from copsd.config import CopsdSettings
from copsd.losses import chunked_token_divergence, divergence_diagnostics, token_divergence
from copsd.prompts import teacher_prompt, training_student_prompt
from copsd.rollout import SamplingParams
from copsd.training.forward import completion_hidden, decoder_and_head
from copsd.training.trainer import StepStats, Trainer


class CopsdTrainer(Trainer):
    cfg: CopsdSettings

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.decoder, self.lm_head = decoder_and_head(self.model)
        # EMA teacher as released: no copy until the end of optimizer step 1 (the teacher is the live
        # student until then), then ema <- decay * ema + (1 - decay) * weights after every step.
        self.ema: dict[str, torch.Tensor] | None = None

    # ---- teacher weights ------------------------------------------------------------------
    @contextlib.contextmanager
    def teacher_weights(self):
        """Weights the teacher forward runs with; the student's are restored afterwards."""
        if self.cfg.teacher == "fixed":
            with self.model.disable_adapter():
                yield
        elif self.cfg.teacher == "live":
            yield
        elif self.ema is None:  # ema, during step 1: no copy yet, the live student teaches
            yield
        else:  # ema: swap the EMA adapter weights in, then back
            live = {}
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if n in self.ema:
                        live[n] = p.detach().clone()
                        p.copy_(self.ema[n])
            try:
                yield
            finally:
                with torch.no_grad():
                    for n, p in self.model.named_parameters():
                        if n in live:
                            p.copy_(live[n])

    def after_optimizer_step(self) -> None:
        if self.cfg.teacher != "ema":
            return
        if self.ema is None:  # the first copy, undecayed
            self.ema = {n: p.detach().clone() for n, p in self.model.named_parameters() if p.requires_grad}
        else:
            d = self.cfg.ema_decay
            with torch.no_grad():
                for n, p in self.model.named_parameters():
                    if n in self.ema:
                        self.ema[n].mul_(d).add_(p.detach(), alpha=1 - d)

    def extra_state(self) -> dict:
        return {"ema": self.ema} if self.ema is not None else {}

    def load_extra_state(self, state: dict) -> None:
        if self.cfg.teacher == "ema" and state.get("ema"):
            self.ema = state["ema"]

    # ---- prompts ------------------------------------------------------------------------------
    def student_ids(self, ex) -> list[int]:
        text = training_student_prompt(self.tok, ex.problem, self.job.language, thinking=self.cfg.student_thinking)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def teacher_ids(self, ex) -> list[int]:
        text = teacher_prompt(
            self.tok,
            ex.problem,
            self.job.language,
            problem_en=ex.problem_en,
            solution_en=ex.solution_en,
            include_problem_en=self.cfg.include_problem_en,
            include_reference_solution_en=self.cfg.include_reference_solution_en,
        )
        return self.tok(text, add_special_tokens=False)["input_ids"]

    # ---- one optimizer step -------------------------------------------------------------------
    def _params(self) -> SamplingParams:
        cfg = self.cfg
        return cfg.sampling_params(n=1)

    def _prompts(self, examples) -> list[str]:
        thinking = self.cfg.student_thinking
        return [training_student_prompt(self.tok, ex.problem, self.job.language, thinking=thinking) for ex in examples]

    def prepare_step(self, micro: list[list], step: int, stats: StepStats) -> None:
        """With train.rollout_batch `step`: every micro-batch's rollouts in one call, before any backward
        (kept with the step and the micro-batches they were sampled for)."""
        self._step_rollouts: tuple[int, list[list], list[list[list[int]]]] | None = None
        if self.rollout_mode() == "step":
            groups = self.sample_step([self._prompts(m) for m in micro], self._params(), step, stats)
            self._step_rollouts = (step, micro, [[g[0].token_ids for g in gs] for gs in groups])

    def rollouts(self, examples, step: int, micro: int, stats: StepStats | None = None) -> list[list[int]]:
        """One rollout per example from the student prompt, with the current (student) weights."""
        kept = getattr(self, "_step_rollouts", None)
        if kept is not None and kept[0] == step and micro < len(kept[1]) and kept[1][micro] is examples:
            return kept[2][micro]
        return [g[0].token_ids for g in self.sample(self._prompts(examples), self._params(), step, micro, stats)]

    def token_loss(
        self, student: list[list[int]], teacher: list[list[int]], completions: list[list[int]], pad_id: int
    ) -> tuple[torch.Tensor, dict]:
        """The loss on token ids (non-empty completions) in one forward each for teacher and student;
        `copsd speed step` times this."""
        per_token, hs, ht = self.token_divergences(student, teacher, completions, pad_id)
        return per_token.mean(), self.diagnostics(hs, ht)

    def token_divergences(
        self, student: list[list[int]], teacher: list[list[int]], completions: list[list[int]], pad_id: int
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(divergence per rollout token, student and teacher hidden states of those tokens)."""
        cfg = self.cfg
        # teacher first: the EMA teacher swaps weights in place, which must not touch the student's graph
        with torch.no_grad(), self.teacher_weights():
            ht = completion_hidden(self.decoder, teacher, completions, pad_id, self.device)
        hs = completion_hidden(self.decoder, student, completions, pad_id, self.device)
        kind, beta, temp, clip, clip_mode = cfg.divergence, cfg.beta, cfg.temperature, cfg.clip, cfg.clip_mode
        chunk = cfg.loss_chunk_size
        if chunk > 0:
            per_token = chunked_token_divergence(
                hs,
                ht,
                self.lm_head,
                kind=kind,
                beta=beta,
                temperature=temp,
                clip=clip,
                clip_mode=clip_mode,
                chunk_size=chunk,
            )
        else:  # the direct path: full-vocabulary logits for every rollout token at once
            per_token = token_divergence(
                self.lm_head(hs),
                self.lm_head(ht),
                kind=kind,
                beta=beta,
                temperature=temp,
                clip=clip,
                clip_mode=clip_mode,
            )
        return per_token, hs, ht

    def diagnostics(self, hs: torch.Tensor, ht: torch.Tensor) -> dict:
        """Unclipped divergence and clipped share on the first (up to) 256 rollout tokens."""
        cfg = self.cfg
        n = min(256, hs.shape[0])
        with torch.no_grad():
            unclipped, share = divergence_diagnostics(
                self.lm_head(hs[:n]),
                self.lm_head(ht[:n]),
                kind=cfg.divergence,
                beta=cfg.beta,
                temperature=cfg.temperature,
                clip=cfg.clip,
                clip_mode=cfg.clip_mode,
            )
        return {"divergence_unclipped": unclipped, "clipped_share": share}

    def divergence_parts(self, examples, completions: list[list[int]], stats: StepStats):
        """Sum of divergences / the micro-batch's rollout tokens, one part per forward sub-batch
        (`forward_batches` on teacher-prompt + rollout lengths, the longer forward); the parts add up
        to `token_loss` over the micro-batch's non-empty rollouts, and the diagnostics see the same
        first 256 tokens."""
        keep = [i for i, c in enumerate(completions) if c]
        examples, completions = [examples[i] for i in keep], [completions[i] for i in keep]
        if not completions:
            yield torch.zeros((), device=self.device, requires_grad=True)
            return
        student = [self.student_ids(e) for e in examples]
        teacher = [self.teacher_ids(e) for e in examples]
        n_tokens = sum(len(c) for c in completions)
        seen_s: list[torch.Tensor] = []
        seen_t: list[torch.Tensor] = []
        seen = 0
        lengths = [max(len(s), len(t)) + len(c) for s, t, c in zip(student, teacher, completions)]
        for idx in self.forward_batches(lengths):
            per_token, hs, ht = self.token_divergences(
                [student[i] for i in idx],
                [teacher[i] for i in idx],
                [completions[i] for i in idx],
                self.tok.pad_token_id,
            )
            if seen < 256:  # the diagnostics' tokens, kept without their graph
                seen_s.append(hs[: 256 - seen].detach())
                seen_t.append(ht[: 256 - seen])
                seen += seen_s[-1].shape[0]
            yield per_token.sum() / n_tokens
        for key, value in self.diagnostics(torch.cat(seen_s), torch.cat(seen_t)).items():
            stats.add(key, value)

    def loss_parts(self, examples, step: int, index: int, stats: StepStats):
        yield from self.divergence_parts(examples, self.rollouts(examples, step, index, stats), stats)

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        out = self.rollout_metrics(stats)
        for key in ("divergence_unclipped", "clipped_share"):
            if stats.has(key):
                out[key] = stats.mean(key)
        return out
