"""Evaluation: one model on one benchmark language -> the paper's metrics (`evaluate.py`,
`metrics.py`). Answer extraction and grading live in `copsd.grading`, re-exported here."""

from copsd.evaluation.metrics import compute_metrics, pass_at_k, repetition_rate
from copsd.grading import extract_boxed, is_equivalent, normalize_answer

__all__ = ["compute_metrics", "extract_boxed", "is_equivalent", "normalize_answer", "pass_at_k", "repetition_rate"]
