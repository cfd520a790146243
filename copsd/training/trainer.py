"""The training loop every method shares (TRL's trainer + config pairing, nanoGPT's one loop).

`Trainer` owns: deterministic batches, the micro-batch accumulation loop, AdamW with a learning-
rate scheduler (transformers' linear/constant/cosine), grad-norm clipping, NaN checks, checkpoints every `save_steps`
(adapter + optimizer + scheduler + RNG, so a crashed job resumes exactly) and per-step metrics.
A method supplies `micro_batch_loss` (the mean loss of one micro-batch, recording what it wants
in `StepStats`) and, optionally, `step_metrics`, `after_optimizer_step` and extra checkpoint state.

Memory is bounded by design: gradient checkpointing (`train.gradient_checkpointing`, on by
default on every device), log-probs and divergences computed a chunk of positions at a time
(`train.loss_chunk_size`), and `loss_parts`: a method may yield a micro-batch's loss in parts, one
per sub-batch of sequences (`forward_batches`: at most `train.micro_batch_size` sequences and
`train.max_tokens_per_forward` padded tokens each), each part backpropagated before the next is
computed; the parts sum to the micro-batch's loss, so gradients equal the unsplit path's.
"""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from copsd.config import JobConfig, TrainCommon
from copsd.errors import CopsdError
from copsd.rollout import Rollout, SamplingParams, generate, resolve_engine
from copsd.training.adapters import (
    checkpoint_dir,
    fsync_dir,
    fsync_tree,
    load_adapter,
    remove_leftovers,
    saved_steps,
)


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB


class StepStats:
    """Values recorded during one optimizer step, by name (lists, so means and sums are exact)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str, *values: float | torch.Tensor) -> None:
        self.values[key].extend(float(v) for v in values)

    def mean(self, key: str) -> float:
        v = self.values.get(key) or []
        return sum(v) / len(v) if v else 0.0

    def sum(self, key: str) -> float:
        return float(sum(self.values.get(key) or []))

    def has(self, key: str) -> bool:
        return bool(self.values.get(key))


class Trainer:
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
    def micro_batch_loss(self, examples: list, step: int, index: int, stats: StepStats) -> torch.Tensor | None:
        """The mean loss of one micro-batch (None: nothing to learn from, e.g. only empty rollouts)."""
        raise NotImplementedError

    def loss_parts(self, examples: list, step: int, index: int, stats: StepStats) -> Iterator[torch.Tensor]:
        """The micro-batch's loss as parts that sum to it, each backpropagated (and its graph freed)
        before the next is computed. Default: one part, `micro_batch_loss`."""
        loss = self.micro_batch_loss(examples, step, index, stats)
        if loss is not None:
            yield loss

    def forward_batches(self, lengths: list[int], max_sequences: int | None = None) -> list[list[int]]:
        """Indices of sequences (of these total lengths) grouped into forwards: in order, at most
        `max_sequences` (default `micro_batch_size`) each and, with `max_tokens_per_forward`, at most
        that many padded tokens (count x longest); a longer sequence is forwarded alone."""
        return sequence_batches(lengths, max_sequences or self.cfg.micro_batch_size, self.cfg.max_tokens_per_forward)

    def step_metrics(self, stats: StepStats) -> dict[str, float]:
        """Metrics of one optimizer step beyond the loss, from what `micro_batch_loss` recorded."""
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

    # ---- rollouts (COPSD, GRPO) -----------------------------------------------------------------
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
        except RuntimeError as exc:
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
        """Write to a temp dir, fsync, rename: a checkpoint directory exists only when complete,
        and a kill at any moment leaves at worst a temp dir that `resume` deletes."""
        d = checkpoint_dir(self.run_dir, step)
        tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(str(tmp))
        torch.save(
            {
                "step": step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "torch_rng": torch.get_rng_state(),
                "python_rng": random.getstate(),
                **self.extra_state(),
            },
            tmp / "trainer_state.pt",
        )
        fsync_tree(tmp)
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)  # atomic on one filesystem
        fsync_dir(d.parent)

    def resume(self) -> int:
        remove_leftovers(self.run_dir)  # temp dirs of a write that was killed
        steps = saved_steps(self.run_dir)
        if not steps:
            return 0
        last = steps[-1]
        load_adapter(self.model, self.run_dir, last)
        path = checkpoint_dir(self.run_dir, last) / "trainer_state.pt"
        try:  # tensors and plain containers only: a file placed in runs/ cannot run code
            state = torch.load(path, weights_only=True)
        except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad or hostile file
            raise CopsdError(
                f"{path}: not a checkpoint state copsd wrote ({type(exc).__name__}); delete that checkpoint "
                "directory to resume from the one before"
            ) from None
        self.optimizer.load_state_dict(state["optimizer"])
        if "scheduler" in state:
            self.scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.load_extra_state(state)
        return last

    def train(self) -> int:
        """Train to `max_steps` (resuming from the last checkpoint); returns the final step."""
        last = 0
        for last, _metrics in self.steps():
            pass
        return last or (saved_steps(self.run_dir) or [0])[-1]

    def steps(self) -> Iterator[tuple[int, dict[str, float]]]:
        """Train to `max_steps` (resuming from the last checkpoint), yielding (step, metrics) after
        each optimizer step and its checkpoint: the caller records them and may stop between steps."""
        cfg = self.cfg
        start = self.resume()
        for step in range(start + 1, cfg.max_steps + 1):
            t0 = time.perf_counter()
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
