"""Trailing-window arithmetic over numpy arrays. Plain Python, no Django.

Every function returns an array as long as its input whose element ``i`` depends only on elements
``i - window + 1 … i``: the first ``window - 1`` elements are NaN, and so is any window holding a NaN (a
gap). Each output is computed from its own window alone, in the same order, so the value at a bar is
the same whether the history starts a year or a day earlier (the train/live parity the tests assert).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def _place(values: np.ndarray, n: int, window: int) -> np.ndarray:
    out = np.full(n, np.nan)
    if len(values):
        out[window - 1 :] = values
    return out


def rolling_mean(x: np.ndarray, window: int) -> np.ndarray:
    n = len(x)
    if n < window:
        return np.full(n, np.nan)
    return _place(np.correlate(x, np.full(window, 1.0 / window), mode="valid"), n, window)


def rolling_std(x: np.ndarray, window: int) -> np.ndarray:
    """Population standard deviation of each trailing window."""
    n = len(x)
    if n < window:
        return np.full(n, np.nan)
    weights = np.full(window, 1.0 / window)
    mean = np.correlate(x, weights, mode="valid")
    square = np.correlate(x * x, weights, mode="valid")
    return _place(np.sqrt(np.maximum(square - mean * mean, 0.0)), n, window)


def rolling_min(x: np.ndarray, window: int) -> np.ndarray:
    n = len(x)
    if n < window:
        return np.full(n, np.nan)
    return _place(sliding_window_view(x, window).min(axis=1), n, window)


def rolling_max(x: np.ndarray, window: int) -> np.ndarray:
    n = len(x)
    if n < window:
        return np.full(n, np.nan)
    return _place(sliding_window_view(x, window).max(axis=1), n, window)


def rolling_slope(y: np.ndarray, window: int) -> np.ndarray:
    """Least-squares slope of ``y`` against the bar number over each trailing window (units of y per bar)."""
    n = len(y)
    if n < window:
        return np.full(n, np.nan)
    k = np.arange(window, dtype=float)
    weights = (k - k.mean()) / ((k - k.mean()) ** 2).sum()
    return _place(np.correlate(y, weights, mode="valid"), n, window)


def lag(x: np.ndarray, periods: int) -> np.ndarray:
    """``x`` shifted ``periods`` bars later (the value ``periods`` bars ago); NaN where there is none."""
    out = np.full(len(x), np.nan)
    if periods < len(x):
        out[periods:] = x[: len(x) - periods]
    return out


def safe_divide(numerator: np.ndarray, denominator: np.ndarray, *, default: float) -> np.ndarray:
    """``numerator / denominator``, with ``default`` where the denominator is zero (NaN stays NaN)."""
    out = np.full(np.broadcast(numerator, denominator).shape, default, dtype=float)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return np.where(np.isnan(numerator) | np.isnan(denominator), np.nan, out)
