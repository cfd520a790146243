"""copsd: Crosslingual On-Policy Self-Distillation experiments (sweeps, training, evaluation, reports)."""

__version__ = "0.2.0"
