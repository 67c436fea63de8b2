"""Synthetic candles for the learning tests: seeded, hourly, UTC."""

from __future__ import annotations

import numpy as np
import pandas as pd

START = pd.Timestamp("2024-01-01", tz="UTC")


def candles(
    n: int = 1500,
    *,
    seed: int = 0,
    drift: float | np.ndarray | list[tuple[int, float]] = 0.0,
    noise: float = 0.01,
    start: pd.Timestamp = START,
    price: float = 100.0,
) -> pd.DataFrame:
    """OHLCV bars; ``drift`` is a log return per bar: one for all, one per bar, or ``[(bars, drift), …]``."""
    rng = np.random.default_rng(seed)
    if isinstance(drift, list):
        drifts = np.concatenate([np.full(bars, value) for bars, value in drift])
        n = len(drifts)
    elif isinstance(drift, np.ndarray):
        drifts, n = drift, len(drift)
    else:
        drifts = np.full(n, drift)
    log_close = np.log(price) + np.cumsum(drifts + rng.normal(0, noise, n))
    close = np.exp(log_close)
    open_ = np.r_[price, close[:-1]]
    spread = np.abs(rng.normal(0, noise / 2, n))
    high = np.maximum(open_, close) * (1 + spread)
    low = np.minimum(open_, close) * (1 - spread)
    volume = rng.lognormal(2, 0.5, n)
    index = pd.date_range(start, periods=n, freq="h", name="open_time")
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def predictable(n: int = 2400, *, seed: int = 1) -> pd.DataFrame:
    """Trends of two days up or down at random: momentum the features can see, so a model has something
    to learn (for tests that need a model better than a coin toss)."""
    rng = np.random.default_rng(seed)
    trend = np.repeat(rng.choice([-0.004, 0.004], size=n // 48 + 1), 48)[:n]
    return candles(n, seed=seed, drift=trend, noise=0.004)
