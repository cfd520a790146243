"""Training methods (COPSD, GRPO, SFT): each a trainer (`*_trainer.py`, on the shared loop in
`trainer.py`, which samples with `rollouts.py` and checkpoints with `checkpoints.py`) paired with
its settings class in `copsd.config`.

The trainers are imported on first use (PEP 562), so `copsd.training.memory` and `.cost` (the
plan's estimates) load without torch."""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "CopsdTrainer": "copsd.training.copsd_trainer",
    "GrpoTrainer": "copsd.training.grpo_trainer",
    "SftTrainer": "copsd.training.sft_trainer",
    "StepStats": "copsd.training.step_stats",
    "Trainer": "copsd.training.trainer",
}

__all__ = ["TRAINERS", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name == "TRAINERS":
        return {
            "copsd": __getattr__("CopsdTrainer"),
            "grpo": __getattr__("GrpoTrainer"),
            "sft": __getattr__("SftTrainer"),
        }
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'copsd.training' has no attribute {name!r}")
