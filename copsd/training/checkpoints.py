"""Checkpoint I/O: a step's adapter and trainer state (optimizer, scheduler, random generators,
a method's extra state) written atomically, and read back without running code from the file."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import torch

from copsd.errors import CopsdError
from copsd.training.adapters import (
    STATE_FILE,
    checkpoint_dir,
    fsync_dir,
    fsync_tree,
    load_adapter,
    remove_leftovers,
    saved_steps,
)


def rng_states() -> dict:
    """Every random generator training draws from: torch's CPU generator, Python's `random` and,
    once CUDA is in use, each CUDA device's (numpy's is not used in training)."""
    state = {"torch_rng": torch.get_rng_state(), "python_rng": random.getstate()}
    if torch.cuda.is_initialized():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_states(state: dict) -> None:
    """Put back what `rng_states` saved (CUDA's on as many devices as this process sees)."""
    torch.set_rng_state(state["torch_rng"])
    random.setstate(state["python_rng"])
    if state.get("cuda_rng") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"][: torch.cuda.device_count()])


def save_checkpoint(run_dir: Path, step: int, model, state: dict) -> None:
    """`model`'s adapter and the trainer `state` as step `step`'s checkpoint. Written to a temp dir,
    fsynced, renamed: a checkpoint directory exists only when complete, and a kill at any moment
    leaves at worst a temp dir that `load_last_checkpoint` deletes."""
    d = checkpoint_dir(run_dir, step)
    tmp = d.with_name(f"{d.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    model.save_pretrained(str(tmp))
    torch.save(state, tmp / STATE_FILE)
    fsync_tree(tmp)
    if d.exists():
        shutil.rmtree(d)
    os.replace(tmp, d)  # atomic on one filesystem
    fsync_dir(d.parent)


def load_last_checkpoint(run_dir: Path, model) -> tuple[int, dict]:
    """(step, trainer state) of the last complete checkpoint, its adapter loaded into `model`;
    (0, {}) when there is none. What a killed write left behind is deleted first."""
    remove_leftovers(run_dir)
    steps = saved_steps(run_dir)
    if not steps:
        return 0, {}
    last = steps[-1]
    load_adapter(model, run_dir, last)
    path = checkpoint_dir(run_dir, last) / STATE_FILE
    try:  # tensors and plain containers only: a file placed in runs/ cannot run code
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises several types for a bad or hostile file
        raise CopsdError(
            f"{path}: not a checkpoint state copsd wrote ({type(exc).__name__}); delete that checkpoint "
            "directory to resume from the one before"
        ) from None
    return last, state
