"""On-policy rollouts for the methods that sample (COPSD, GRPO): from the current weights, seeded
per step and micro-batch, one call for the whole step or one per micro-batch (`train.rollout_batch`),
timed, with their lengths and stops recorded in the step's `StepStats`."""

from __future__ import annotations

import time
from typing import Any

import torch

from copsd.config import JobConfig, TrainCommon
from copsd.errors import CopsdError
from copsd.rollout import Rollout, SamplingParams, generate, resolve_engine
from copsd.training.step_stats import StepStats


class RolloutSampling:
    """Mixed into `Trainer` (it sets `job`, `cfg`, `model` and `tok`)."""

    job: JobConfig
    cfg: TrainCommon
    model: Any
    tok: Any

    def rollout_seed(self, step: int, micro: int) -> int:
        return (self.job.seed * 1_000_003 + step * 101 + micro) % (2**31 - 1)

    def sample(
        self, prompts: list[str], params: SamplingParams, step: int, micro: int, stats: StepStats | None = None
    ) -> list[list[Rollout]]:
        """On-policy rollouts from the current weights, timed; lengths and stops go into `stats`."""
        t0 = time.perf_counter()
        self.model.eval()
        try:
            groups = generate(
                self.model,
                self.tok,
                prompts,
                params,
                batch_size=len(prompts) * params.n,
                seed=self.rollout_seed(step, micro),
                engine=self.cfg.rollout_engine,
            )
        except torch.cuda.OutOfMemoryError:
            raise  # the loop names the setting to lower
        except RuntimeError as exc:  # torch.multinomial: "probability tensor contains either `inf`, `nan` ..."
            if "inf" not in str(exc) and "nan" not in str(exc):
                raise
            raise CopsdError(
                f"the model's outputs became non-finite before training step {step} of {self.job.label} "
                f"(rollouts cannot be sampled: the last update exploded); lower train.lr (now {self.cfg.lr})"
            ) from None
        self.model.train()
        if stats is not None:
            stats.add("rollout_time_s", time.perf_counter() - t0)
            rolls = [r for g in groups for r in g]
            stats.add("rollout_length", *(len(r.token_ids) for r in rolls))
            stats.add("rollout_finished", *(r.finished for r in rolls))
        return groups

    def rollout_mode(self) -> str:
        """`step` (one call for the whole step) or `micro` (one per micro-batch): train.rollout_batch,
        `auto` = step where the fast engine samples (one wide decode instead of one per micro-batch)."""
        mode = self.cfg.rollout_batch
        if mode == "auto":
            mode = "step" if resolve_engine(self.cfg.rollout_engine, self.model) == "fast" else "micro"
        return mode

    def sample_step(
        self, prompts: list[list[str]], params: SamplingParams, step: int, stats: StepStats | None = None
    ) -> list[list[list[Rollout]]]:
        """Rollouts of every micro-batch of a step (`prompts` per micro-batch), grouped the same way."""
        if self.rollout_mode() == "micro":
            return [self.sample(ps, params, step, index, stats) for index, ps in enumerate(prompts)]
        groups = self.sample([p for ps in prompts for p in ps], params, step, 0, stats)
        out, start = [], 0
        for ps in prompts:
            out.append(groups[start : start + len(ps)])
            start += len(ps)
        return out

    @staticmethod
    def rollout_metrics(stats: StepStats) -> dict[str, float]:
        t = stats.sum("rollout_time_s")
        return {
            "rollout_length": stats.mean("rollout_length"),
            "truncation_rate": 1.0 - stats.mean("rollout_finished"),
            "rollout_tokens_per_s": stats.sum("rollout_length") / t if t > 0 else 0.0,
        }
