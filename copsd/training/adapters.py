"""LoRA adapters on disk and in the model: wrapping a model, where each step's checkpoint lives,
and loading a saved step back (step 0 = zero LoRA = the base model)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import torch

from copsd.config import LoraSettings
from copsd.errors import CopsdError

CKPT_PREFIX = "step_"
STATE_FILE = "trainer_state.pt"  # optimizer, scheduler, RNG states: `checkpoints.py` writes it


def wrap_lora(model, lora: LoraSettings, seed: int):
    """A PEFT LoRA model over `model` (B initialised to zero, so step 0 equals the base model)."""
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    targets = [t for t in lora.target_modules if t in present]
    if not targets:
        raise CopsdError(f"none of train.lora.target_modules {list(lora.target_modules)} exist in this model")
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, cfg)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"{CKPT_PREFIX}{step:05d}"


_COMPLETE = re.compile(rf"^{CKPT_PREFIX}(\d+)$")  # a finished checkpoint; temp dirs never match


def saved_steps(run_dir: Path) -> list[int]:
    """Steps with a complete checkpoint (renamed into place with its trainer state)."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    out = []
    for p in d.iterdir():
        m = _COMPLETE.match(p.name)
        if m and p.is_dir() and (p / STATE_FILE).is_file() and (p / "adapter_model.safetensors").is_file():
            out.append(int(m.group(1)))
    return sorted(out)


def remove_leftovers(run_dir: Path) -> list[str]:
    """Delete what a killed checkpoint write left behind (temp dirs, incomplete step dirs)."""
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    complete = set(saved_steps(run_dir))
    removed = []
    for p in d.iterdir():
        m = _COMPLETE.match(p.name)
        if m and int(m.group(1)) in complete:
            continue
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p.name)
    return removed


def fsync_tree(path: Path) -> None:
    """Flush a directory's files and the directory entries to disk (before the rename publishes it)."""
    for p in sorted(path.rglob("*")):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
