"""The learning app's errors. Plain Python, no Django: the decision core raises them, the shell reports."""

from __future__ import annotations


class LearningDataError(ValueError):
    """Candles that cannot be learned from or predicted on; the message names the pair and the problem."""

    def __init__(self, pair: str, problem: str) -> None:
        self.pair = pair
        self.problem = problem
        super().__init__(f"{pair}: {problem}")


class ArtifactIntegrityError(RuntimeError):
    """A stored model artifact whose bytes do not match the SHA-256 recorded when it was registered (or
    that cannot be read at all). It is never unpickled."""


class ModelIncompatible(ValueError):
    """A model that cannot be fed by the current feature function (a feature it was trained on no longer
    exists). The message names the model's missing features."""


class PromotionRefused(RuntimeError):
    """A promotion or rollback that must not happen; the message says why."""
