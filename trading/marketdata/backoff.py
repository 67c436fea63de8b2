"""Exponential backoff with jitter, shared by every client that retries or reconnects. Plain Python."""

from __future__ import annotations

import random
from collections.abc import Callable


def jittered_backoff(
    attempt: int, *, base: float, cap: float, floor: float = 0.0, rng: Callable[[], float] = random.random
) -> float:
    """Seconds to wait before retry number ``attempt`` (0 for the first retry): a ceiling of
    ``min(cap, base * 2**attempt)``, of which a random share between ``floor`` and 1 is taken. ``floor=0``
    is "full jitter" (best at spreading many clients), ``floor=0.5`` "equal jitter" (never too eager)."""
    if not 0.0 <= floor <= 1.0:
        raise ValueError("floor must be between 0 and 1")
    ceiling = min(cap, base * 2 ** min(attempt, 60))
    return ceiling * (floor + (1.0 - floor) * rng())
