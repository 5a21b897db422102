"""``evaluator``: the CNN that chooses the guidance scale on the validation clips."""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.config.core import require


@dataclass(frozen=True)
class EvaluatorParams:
    seed: int = 0
    epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 2e-3

    def __post_init__(self) -> None:
        for key in ("epochs", "batch_size"):
            require(getattr(self, key) >= 1, f"evaluator.{key}", "must be at least 1")
        require(self.learning_rate > 0, "evaluator.learning_rate", "must be positive")
