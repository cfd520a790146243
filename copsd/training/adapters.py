"""LoRA adapters on disk and in the model: wrapping a model, where each step's checkpoint lives,
and loading a saved step back (step 0 = zero LoRA = the base model)."""

from __future__ import annotations

from pathlib import Path

import torch

from copsd.config import LoraSettings
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


def saved_steps(run_dir: Path) -> list[int]:
    d = run_dir / "checkpoints"
    if not d.is_dir():
        return []
    return sorted(
        int(p.name[len(CKPT_PREFIX) :])
        for p in d.iterdir()
        if p.name.startswith(CKPT_PREFIX) and (p / "trainer_state.pt").is_file()
    )


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
