"""Evaluation: answer extraction, grading with math-verify, and the paper's metrics.

Public API: `extract_boxed`, `is_equivalent`, `pass_at_k` (used by the methods' rewards too).
"""

from copsd.evaluation.grading import extract_boxed, is_equivalent, normalize_answer
from copsd.evaluation.metrics import compute_metrics, pass_at_k, repetition_rate

__all__ = ["compute_metrics", "extract_boxed", "is_equivalent", "normalize_answer", "pass_at_k", "repetition_rate"]
