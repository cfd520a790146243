"""Training methods (COPSD, GRPO, SFT): each a trainer paired with its settings class in copsd.config."""

from copsd.training.copsd_trainer import CopsdTrainer
from copsd.training.grpo_trainer import GrpoTrainer
from copsd.training.sft_trainer import SftTrainer

TRAINERS = {"copsd": CopsdTrainer, "grpo": GrpoTrainer, "sft": SftTrainer}

__all__ = ["TRAINERS", "CopsdTrainer", "GrpoTrainer", "SftTrainer"]
