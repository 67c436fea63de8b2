"""Generated market history for a machine with neither history files nor internet (``make run`` offline).

Correlated geometric random walks with switching regimes (calm up, calm down, volatile, crash), written as
Kraken OHLCVT lines (``time,open,high,low,close,volume,trades``) so they go through the very importer and
replay that real files do. Everything stored from them is labelled synthetic (``Candle.Source.SYNTHETIC``
for the imported history; the console and the admin header say so); they are never mistaken for Kraken's.
Plain Python and NumPy, no Django; seeded, so the same call gives the same history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np

#: Starting prices by base asset (rough levels; the rest start at 10 USD).
START_PRICES = {"BTC": 60000.0, "ETH": 3000.0, "SOL": 150.0, "XRP": 0.6, "ADA": 0.5}


@dataclass(frozen=True)
class Regime:
    name: str
    drift: float  # log return per hour
    volatility: float  # stdev of the log return per hour
    mean_hours: int  # average length


REGIMES = (
    Regime("calm_up", 0.0004, 0.006, 120),
    Regime("calm_down", -0.0003, 0.007, 96),
    Regime("volatile", 0.0, 0.018, 48),
    Regime("crash", -0.004, 0.03, 12),
)
#: How often each regime follows another (crashes are rare).
REGIME_WEIGHTS = np.array([0.4, 0.3, 0.24, 0.06])
#: Correlation of every asset's returns with the market factor.
MARKET_BETA = 0.8


def synthetic_ohlcvt(
    bases: Sequence[str], *, end: datetime, bars: int, timeframe: int = 60, seed: int = 7
) -> dict[str, list[str]]:
    """``bars`` closed bars per base asset ending with the bar that opens one timeframe before ``end``, as
    Kraken OHLCVT lines. Prices are rounded to 2 decimals above 1 USD, 6 below; volumes to 8."""
    if bars < 2:
        raise ValueError("bars must be at least 2")
    rng = np.random.default_rng(seed)
    minutes = timeframe
    scale = np.sqrt(minutes / 60)
    drifts = np.empty(bars)
    vols = np.empty(bars)
    filled = 0
    while filled < bars:
        regime = REGIMES[rng.choice(len(REGIMES), p=REGIME_WEIGHTS)]
        length = max(1, int(rng.exponential(regime.mean_hours * 60 / minutes)))
        stop = min(bars, filled + length)
        drifts[filled:stop] = regime.drift * minutes / 60
        vols[filled:stop] = regime.volatility * scale
        filled = stop
    market = rng.standard_normal(bars)
    step = minutes * 60
    boundary = int(end.timestamp()) // step * step  # the open of the bar forming at ``end``
    times = [boundary - step * (bars - i) for i in range(bars)]
    out: dict[str, list[str]] = {}
    for base in bases:
        own = rng.standard_normal(bars)
        shocks = MARKET_BETA * market + np.sqrt(1 - MARKET_BETA**2) * own
        returns = drifts + vols * shocks
        close = START_PRICES.get(base, 10.0) * np.exp(np.cumsum(returns))
        open_ = np.r_[close[0] / np.exp(returns[0]), close[:-1]]
        wick = np.abs(rng.normal(0, vols / 2))
        high = np.maximum(open_, close) * (1 + wick)
        low = np.minimum(open_, close) * (1 - wick)
        notional = rng.lognormal(np.log(2_000_000), 0.6, bars) * (1 + 20 * vols)
        volume = notional / close
        trades = np.maximum(1, (volume * close / 2000).astype(int))
        digits = 2 if close.min() >= 1 else 6
        out[base] = [
            f"{t},{o:.{digits}f},{h:.{digits}f},{lo:.{digits}f},{c:.{digits}f},{v:.8f},{n}"
            for t, o, h, lo, c, v, n in zip(times, open_, high, low, close, volume, trades, strict=True)
        ]
    return out


__all__ = ["REGIMES", "synthetic_ohlcvt"]
