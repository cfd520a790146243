"""Training methods (COPSD, GRPO, SFT): each a trainer (`*_trainer.py`, on the shared loop in
`trainer.py`) paired with its settings class in `copsd.config`."""

from copsd.training.copsd_trainer import CopsdTrainer
from copsd.training.grpo_trainer import GrpoTrainer
from copsd.training.sft_trainer import SftTrainer
from copsd.training.trainer import StepStats, Trainer

TRAINERS: dict[str, type[Trainer]] = {"copsd": CopsdTrainer, "grpo": GrpoTrainer, "sft": SftTrainer}

__all__ = ["TRAINERS", "CopsdTrainer", "GrpoTrainer", "SftTrainer", "StepStats", "Trainer"]
