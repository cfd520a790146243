"""What one optimizer step records (losses, rollout lengths, rewards, diagnostics), by name."""

from __future__ import annotations

from collections import defaultdict

import torch


class StepStats:
    """Values recorded during one optimizer step, by name (lists, so means and sums are exact)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, key: str, *values: float | torch.Tensor) -> None:
        self.values[key].extend(float(v) for v in values)

    def mean(self, key: str) -> float:
        v = self.values.get(key) or []
        return sum(v) / len(v) if v else 0.0

    def sum(self, key: str) -> float:
        return float(sum(self.values.get(key) or []))

    def has(self, key: str) -> bool:
        return bool(self.values.get(key))
