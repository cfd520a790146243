"""What every trainer shares: LoRA wrapping, the optimizer loop, checkpoints, resume, step metrics.

A subclass implements `compute_step(examples, step) -> dict` (forward/backward over
micro-batches, gradients accumulated) and optionally `after_optimizer_step()`. The base class
owns the loop: deterministic batches, grad-norm clipping, AdamW, NaN checks, checkpoints every
`save_steps` (adapter + optimizer + RNG, so a crashed job resumes exactly), per-step metrics.
"""

from __future__ import annotations

import math
import os
import random
import resource
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch

from copsd.config import JobConfig, LoraSettings
from copsd.errors import CopsdError

CKPT_PREFIX = "step_"


def wrap_lora(model, lora: LoraSettings, seed: int):
    """A PEFT LoRA model over `model` (B initialised to zero, so step 0 equals the base model)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise CopsdError(f"none of train.lora.target_modules {list(lora.target_modules)} exist in this model")
    torch.manual_seed(seed)
    cfg = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets,
                     bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def decoder_and_head(model):
    """(decoder returning hidden states, LM head) of a (PEFT-wrapped) causal LM."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.model, base.get_output_embeddings()


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB -> GiB


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{CKPT_PREFIX}{step:05d}"


def saved_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(int(p.name[len(CKPT_PREFIX):]) for p in d.iterdir()
                  if p.name.startswith(CKPT_PREFIX) and (p / "trainer_state.pt").is_file())


def load_adapter(model, run_dir: Path, step: int) -> None:
    """Put the adapter weights saved at `step` into `model` (step 0 = zero LoRA = the base model)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if step == 0:
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.zero_()
        return
    path = checkpoint_dir(run_dir, step) / "adapter_model.safetensors"
    if not path.is_file():
        raise CopsdError(f"no adapter checkpoint for step {step} at {path}")
    set_peft_model_state_dict(model, load_file(str(path)))


class Trainer:
    """The loop shared by COPSD, GRPO and SFT."""

    def __init__(self, job: JobConfig, model, tokenizer, examples: list, run_dir: Path, *,
                 log: Callable[[dict, int], None] | None = None, on_step: Callable[[int], None] | None = None):
        self.job, self.cfg = job, job.train
        self.model, self.tok = model, tokenizer
        self.examples = examples
        self.run_dir = Path(run_dir)
        self.log = log or (lambda metrics, step: None)
        self.on_step = on_step
        self.device = next(model.parameters()).device
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay)
        self.step = 0
        self._perm_epoch, self._perm = -1, []

    # ---- to implement ---------------------------------------------------------------------
    def compute_step(self, examples: list, step: int) -> dict[str, float]:
        raise NotImplementedError

    def after_optimizer_step(self) -> None:
        pass

    def extra_state(self) -> dict:
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

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

    def micro_batches(self, items: list, size: int) -> list[list]:
        return [items[i : i + size] for i in range(0, len(items), size)]

    def rollout_seed(self, step: int, micro: int) -> int:
        return (self.job.seed * 1_000_003 + step * 101 + micro) % (2**31 - 1)

    def save(self, step: int) -> None:
        d = checkpoint_dir(self.run_dir, step)
        tmp = d.with_name(d.name + ".tmp")
        if tmp.exists():
            shutil.rmtree(tmp)
        self.model.save_pretrained(str(tmp))
        torch.save({"step": step, "optimizer": self.optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
                    "python_rng": random.getstate(), **self.extra_state()}, tmp / "trainer_state.pt")
        if d.exists():
            shutil.rmtree(d)
        os.replace(tmp, d)  # a checkpoint directory exists only when complete

    def resume(self) -> int:
        steps = saved_steps(self.run_dir)
        if not steps:
            return 0
        last = steps[-1]
        load_adapter(self.model, self.run_dir, last)
        state = torch.load(checkpoint_dir(self.run_dir, last) / "trainer_state.pt", weights_only=False)
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        self.load_extra_state(state)
        return last

    def train(self) -> int:
        """Train to `max_steps` (resuming from the last checkpoint); returns the final step."""
        cfg = self.cfg
        start = self.resume()
        if start >= cfg.max_steps:
            return start
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
            self.optimizer.step()
            self.after_optimizer_step()
            metrics["grad_norm"] = float(grad_norm)
            metrics["step_time_s"] = time.perf_counter() - t0
            metrics["peak_memory_gib"] = peak_memory_gib(self.device)
            metrics["lr"] = cfg.lr
            self.log({f"train/{k}": v for k, v in metrics.items()}, step)
            if step % cfg.save_steps == 0 or step == cfg.max_steps:
                self.save(step)
            if self.on_step:
                self.on_step(step)
        return cfg.max_steps

    def prompts_per_step(self) -> int:
        return self.cfg.batch_size


def pad_right(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def completion_hidden(decoder, prompts: list[list[int]], completions: list[list[int]], pad_id: int,
                      device) -> torch.Tensor:
    """Hidden states that predict each completion token ([sum of completion lengths, H], row order)
    for inputs prompt + completion: only these positions ever reach the LM head."""
    seqs = [p + c for p, c in zip(prompts, completions)]
    ids, mask = pad_right(seqs, pad_id, device)
    hidden = decoder(input_ids=ids, attention_mask=mask).last_hidden_state
    rows, cols = [], []
    for i, (p, c) in enumerate(zip(prompts, completions)):
        rows += [i] * len(c)
        cols += list(range(len(p) - 1, len(p) + len(c) - 1))
    return hidden[torch.tensor(rows, device=device), torch.tensor(cols, device=device)]


__all__ = ["Trainer", "completion_hidden", "decoder_and_head", "load_adapter", "pad_right",
           "saved_steps", "wrap_lora"]
