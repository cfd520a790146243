"""The training loop every method shares (TRL's trainer + config pairing, nanoGPT's one loop).

`Trainer` owns: deterministic batches, the micro-batch accumulation loop, AdamW with a learning-
rate scheduler (transformers' linear/constant/cosine), grad-norm clipping, NaN checks, checkpoints
every `save_steps` (`checkpoints.py`: adapter + optimizer + scheduler + the random generators'
states, so a crashed job resumes where it stopped) and per-step metrics; on-policy rollouts come
from `rollouts.py`. A method supplies `loss_parts` (the loss of one micro-batch as parts that sum
to it, recording what it wants in `StepStats`) and, optionally, `prepare_step`, `step_metrics`,
`after_optimizer_step` and extra checkpoint state.

Memory is bounded by design: gradient checkpointing (`train.gradient_checkpointing`, on by
default on every device), log-probs and divergences computed a chunk of positions at a time
(`train.loss_chunk_size`), and `loss_parts`: one part per sub-batch of sequences
(`forward_batches`: at most `train.micro_batch_size` sequences and `train.max_tokens_per_forward`
padded tokens each), each part backpropagated before the next is computed; the parts sum to the
micro-batch's loss, so gradients equal those of one forward over the whole micro-batch.
"""

from __future__ import annotations

import math
import random
import resource
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import torch

from copsd.config import JobConfig, TrainCommon
from copsd.errors import CopsdError
from copsd.training.adapters import saved_steps
from copsd.training.checkpoints import load_last_checkpoint, rng_states, save_checkpoint, set_rng_states
from copsd.training.rollouts import RolloutSampling
from copsd.training.step_stats import StepStats

__all__ = [
    "StepStats",
    "Trainer",
    "enable_gradient_checkpointing",
    "make_scheduler",
    "micro_batches",
    "peak_memory_gib",
    "sequence_batches",
]


def peak_memory_gib(device: torch.device) -> float:
    """Logged as `train/peak_memory_gib`. On CUDA: the most memory torch allocated on `device` during
    the current optimizer step (the loop resets the peak as each step starts). Elsewhere: the
    process's peak resident set so far (getrusage's ru_maxrss cannot be reset), so it never falls."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB


class Trainer(RolloutSampling):
    """The loop shared by COPSD, GRPO and SFT."""

    def __init__(
        self,
        job: JobConfig,
        model,
        tokenizer,
        examples: list,
        run_dir: Path,
    ):
        if job.train is None:
            raise CopsdError(f"{job.label}: a trainer needs a training block (method '{job.method}' has none)")
        self.job = job
        self.cfg: TrainCommon = job.train
        self.model, self.tok = model, tokenizer
        self.examples = examples
        self.run_dir = Path(run_dir)
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, self.cfg)
        self._perm_epoch: int = -1
        self._perm: list[int] = []

        if self.cfg.gradient_checkpointing:
            enable_gradient_checkpointing(model)

    # ---- what a method supplies -----------------------------------------------------------
    def loss_parts(self, examples: list, step: int, index: int, stats: StepStats) -> Iterator[torch.Tensor]:
        """The micro-batch's (mean) loss as parts that sum to it, each backpropagated (and its graph
        freed) before the next is computed; no part: nothing to learn from (e.g. only empty rollouts)."""
        raise NotImplementedError

    def forward_batches(self, lengths: list[int], max_sequences: int | None = None) -> list[list[int]]:
        """Indices of sequences (of these total lengths) grouped into forwards: in order, at most
        `max_sequences` (default `micro_batch_size`) each and, with `max_tokens_per_forward`, at most
        that many padded tokens (count x longest); a longer sequence is forwarded alone."""
        return sequence_batches(lengths, max_sequences or self.cfg.micro_batch_size, self.cfg.max_tokens_per_forward)

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        """Metrics of one optimizer step beyond the loss, from what `loss_parts` recorded."""
        return {}

    def prepare_step(self, micro: list[list], step: int, stats: StepStats) -> None:
        """Work over the whole step before any loss (GRPO samples every group first, as TRL does,
        so its loss can be normalised by the step's total completion tokens)."""

    def prompts_per_micro_batch(self) -> int:
        return self.cfg.micro_batch_size

    def prompts_per_step(self) -> int:
        return self.cfg.batch_size

    def after_optimizer_step(self) -> None:
        pass

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ---- one optimizer step: the only accumulation loop ----------------------------------------
    def compute_step(self, examples: list, step: int) -> dict[str, float]:
        """Forward/backward over micro-batches; gradients accumulate as the mean of their losses."""
        micro = micro_batches(examples, self.prompts_per_micro_batch())
        stats = StepStats()
        self.prepare_step(micro, step, stats)
        for index, batch in enumerate(micro):
            total, any_part = 0.0, False
            for part in self.loss_parts(batch, step, index, stats):
                (part / len(micro)).backward()
                total += float(part.detach())
                any_part = True
            if any_part:
                stats.add("loss", total)
        # what the gradient is of: the sum over micro-batches / their number (empty ones add 0)
        return {"loss": stats.sum("loss") / len(micro), **self.step_metrics(stats)}

    # ---- the loop --------------------------------------------------------------------------
    def batch_for(self, step: int, size: int) -> list:
        """Examples for optimizer step `step` (1-based): a seeded permutation per epoch."""
        n = len(self.examples)
        out = []
        start = (step - 1) * size
        for k in range(start, start + size):
            epoch, i = divmod(k, n)
            out.append(self.examples[self._permutation(epoch)[i]])
        return out

    def _permutation(self, epoch: int) -> list[int]:
        if self._perm_epoch != epoch:
            perm = list(range(len(self.examples)))
            random.Random(self.job.seed * 7919 + epoch).shuffle(perm)
            self._perm_epoch, self._perm = epoch, perm
        return self._perm

    def save(self, step: int) -> None:
        """Checkpoint `step`: adapter, optimizer, scheduler, RNG states and the method's extra state."""
        state = {
            "step": step,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            **rng_states(),
            **self.extra_state(),
        }
        save_checkpoint(self.run_dir, step, self.model, state)

    def resume(self) -> int:
        """Load the last checkpoint (adapter, optimizer, scheduler, RNG states, extra state); its step."""
        last, state = load_last_checkpoint(self.run_dir, self.model)
        if not last:
            return 0
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        set_rng_states(state)
        self.load_extra_state(state)
        return last

    def train(self) -> int:
        """Train to `max_steps` (resuming from the last checkpoint); returns the final step."""
        done = deque(self.steps(), maxlen=1)  # run to the end, keeping only the last (step, metrics)
        return done[0][0] if done else (saved_steps(self.run_dir) or [0])[-1]

    def steps(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Train to `max_steps` (resuming from the last checkpoint), yielding (step, metrics) after
        each optimizer step and its checkpoint: the caller records them and may stop between steps."""
        cfg = self.cfg
        start = self.resume()
        for step in range(start + 1, cfg.max_steps + 1):
            t0 = time.perf_counter()
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(self.device)  # peak_memory_gib: this step's
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            try:
                metrics = self.compute_step(self.batch_for(step, self.prompts_per_step()), step)
            except torch.cuda.OutOfMemoryError:
                raise CopsdError(
                    f"out of GPU memory at training step {step}; lower train.micro_batch_size (now "
                    f"{cfg.micro_batch_size}) or the completion length"
                ) from None
            if not math.isfinite(metrics.get("loss", 0.0)):
                raise CopsdError(
                    f"non-finite loss ({metrics.get('loss')}) at training step {step} of {self.job.label}; "
                    f"lower train.lr (now {cfg.lr}); checkpoints up to step {saved_steps(self.run_dir)[-1:] or [0]} are kept"
                )
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.max_grad_norm)
            if not torch.isfinite(grad_norm):
                raise CopsdError(f"non-finite gradient norm at training step {step}; lower train.lr (now {cfg.lr})")
            lr = float(self.scheduler.get_last_lr()[0])  # the rate this step is taken with
            self.optimizer.step()
            if not all(bool(torch.isfinite(p).all()) for p in self.params):
                raise CopsdError(
                    f"the adapter weights became non-finite at training step {step} of {self.job.label} "
                    f"(the loss exploded); lower train.lr (now {cfg.lr})"
                )
            self.scheduler.step()
            self.after_optimizer_step()
            metrics["grad_norm"] = float(grad_norm)
            metrics["step_time_s"] = time.perf_counter() - t0
            metrics["peak_memory_gib"] = peak_memory_gib(self.device)
            metrics["lr"] = lr
            if step % cfg.save_steps == 0 or step == cfg.max_steps:
                self.save(step)
            yield step, metrics


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainCommon) -> torch.optim.lr_scheduler.LambdaLR:
    """transformers' own schedules (what the released runs got by default), stepped once per optimizer step.

    Their multipliers are module-level partials, so the state dict holds only numbers and loads with
    `weights_only=True` on resume.
    """
    from transformers import get_scheduler

    name: str = cfg.lr_scheduler
    if name == "constant" and cfg.warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=cfg.warmup_steps, num_training_steps=cfg.max_steps)


def micro_batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def sequence_batches(lengths: list[int], max_sequences: int, max_tokens: int = 0) -> list[list[int]]:
    """Consecutive index groups of at most `max_sequences` sequences whose padded size (count x
    longest) stays <= `max_tokens` (0 = no token cap); a sequence longer than the cap goes alone."""
    out: list[list[int]] = []
    cur: list[int] = []
    longest = 0
    for i, n in enumerate(lengths):
        wide = max(longest, n)
        if cur and (len(cur) >= max_sequences or (max_tokens and (len(cur) + 1) * wide > max_tokens)):
            out.append(cur)
            cur, wide = [], n
        cur.append(i)
        longest = wide
    if cur:
        out.append(cur)
    return out


def enable_gradient_checkpointing(model) -> None:
    """Recompute each decoder layer in backward (non-reentrant: works with frozen inputs and LoRA)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    elif hasattr(model, "gradient_checkpointing_enable"):
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
