"""Features and labels from closed candles. Plain Python, no Django.

One function, :func:`feature_matrix`, computes every feature over a whole history at once (numpy, no
per-bar loop) and is what both training and live inference call: live inference simply hands it a
trailing window. Each feature at bar ``t`` uses bars ``<= t`` only (see :mod:`learning.rolling`), so a
row is known when bar ``t`` closes, nothing after it can change it, and a trailing window of at least
:data:`WARMUP_BARS` gives the same last row as the full history.

Candles are first put on a regular grid by :func:`prepare_candles`: exchanges skip intervals without
trades, so a short run of missing bars (up to ``max_fill_bars``) is filled with flat bars at the previous
close and zero volume, which is what such an interval was; a longer gap (an outage) is left as NaN rows,
and every feature whose window touches it is NaN until the windows have passed it.

Label: class 1 when the simple return from the close of bar ``t`` to the close of bar ``t + horizon``
exceeds the round-trip taker fee, i.e. a long entered at ``t`` and closed ``horizon`` bars later is a net
gain; class 0 otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np
import pandas as pd

from learning.errors import LearningDataError
from learning.regime import DEFAULT_RULES, RegimeRules, codes_of, regime_inputs_of_log
from learning.rolling import (
    lag,
    rolling_max,
    rolling_mean,
    rolling_min,
    rolling_slope,
    rolling_std,
    safe_divide,
)

BTC = "BTC/USD"
COLUMNS = ("open", "high", "low", "close", "volume")
RETURN_WINDOWS = (1, 4, 12, 24, 72)
FEATURES = (
    *(f"ret_{k}" for k in RETURN_WINDOWS),
    "vol_24",
    "vol_72",
    "atr_14",
    "range_1",
    "trend_48",
    "trend_168",
    "rsi_14",
    "stoch_24",
    "volume_z_72",
    "btc_ret_1",
    "btc_ret_24",
    "btc_vol_24",
    "regime",
)
# The longest window any feature reads (trend_168, over log close): from this many bars on, every feature
# of the newest bar is known.
WARMUP_BARS = 168
MIN_TRAINING_BARS = 500


@dataclass(frozen=True, slots=True)
class Gap:
    start: pd.Timestamp  # open time of the first missing bar
    bars: int
    filled: bool


@dataclass(frozen=True)
class PreparedCandles:
    """Candles on a regular grid: ``values`` holds the float columns ``COLUMNS`` (NaN rows for outages),
    one row per bar of ``index``; with what was done to get there."""

    pair: str
    timeframe: int
    index: pd.DatetimeIndex
    values: np.ndarray
    gaps: tuple[Gap, ...]

    def column(self, name: str) -> np.ndarray:
        return self.values[:, COLUMNS.index(name)]

    @cached_property
    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.values, index=self.index, columns=list(COLUMNS))

    @cached_property
    def cross_asset(self) -> np.ndarray:
        """:func:`cross_asset_columns` of these candles (used when they are BTC/USD's), computed once per
        prepared window: every altcoin of a cycle aligns onto the same BTC columns."""
        return cross_asset_columns(self.column("close"))

    @property
    def unfilled_gaps(self) -> tuple[Gap, ...]:
        return tuple(gap for gap in self.gaps if not gap.filled)


def prepare_candles(
    frame: pd.DataFrame, *, pair: str, timeframe: int, min_bars: int, max_fill_bars: int = 3
) -> PreparedCandles:
    """Validate closed candles (indexed by open time, UTC) and put them on a regular grid. Raises
    :class:`LearningDataError` naming the pair and the problem: too few bars, NaNs, non-positive or
    inconsistent prices, repeated times, bars off the grid, constant prices. (numpy throughout: live
    inference runs this every cycle.)"""
    missing = [column for column in COLUMNS if column not in frame.columns]
    if missing:
        raise LearningDataError(pair, f"candles lack the column(s) {', '.join(missing)}")
    if len(frame) < min_bars:
        raise LearningDataError(pair, f"only {len(frame)} closed {timeframe}m bars; need at least {min_bars}")
    if not isinstance(frame.index, pd.DatetimeIndex) or frame.index.tz is None:
        raise LearningDataError(pair, "candles must be indexed by their UTC open time")
    index = frame.index.as_unit("ns")
    times = index.asi8
    values = np.column_stack([frame[column].to_numpy(dtype=float) for column in COLUMNS])
    if not index.is_monotonic_increasing or not index.is_unique:
        if index.has_duplicates:
            first = index[index.duplicated()][0]
            raise LearningDataError(pair, f"bar {first.isoformat()} appears more than once")
        order = np.argsort(times, kind="stable")
        index, times, values = index[order], times[order], values[order]

    def when(mask: np.ndarray) -> str:
        return index[int(np.argmax(mask))].isoformat()

    nan = np.isnan(values)
    if nan.any():
        column = int(np.argmax(nan.any(axis=0)))
        bad = nan[:, column]
        raise LearningDataError(
            pair, f"{int(bad.sum())} NaN value(s) in {COLUMNS[column]}, first at {when(bad)}"
        )
    bad = (values[:, :4] <= 0).any(axis=1) | (values[:, 4] < 0)
    if bad.any():
        raise LearningDataError(pair, f"non-positive price or negative volume at {when(bad)}")
    bad = values[:, 2] > values[:, 1]
    if bad.any():
        raise LearningDataError(pair, f"low above high at {when(bad)}")
    close = values[:, 3]
    if (close == close[0]).all():
        raise LearningDataError(
            pair, f"the close is constant ({close[0]:g}) over all {len(close)} bars: nothing to learn"
        )
    step = timeframe * 60 * 1_000_000_000
    bad = (times - times[0]) % step != 0
    if bad.any():
        raise LearningDataError(pair, f"bar {when(bad)} is not on the {timeframe}m grid")
    if len(times) < 2 or (np.diff(times) == step).all():
        return PreparedCandles(pair, timeframe, index.rename("open_time"), values, ())

    positions = (times - times[0]) // step
    gridded = np.full((int(positions[-1]) + 1, len(COLUMNS)), np.nan)
    gridded[positions] = values
    grid = pd.date_range(
        index[0], periods=len(gridded), freq=pd.Timedelta(minutes=timeframe), name="open_time"
    )
    absent = np.ones(len(gridded), dtype=bool)
    absent[positions] = False
    starts = np.flatnonzero(absent & ~np.r_[False, absent[:-1]])
    ends = np.flatnonzero(absent & ~np.r_[absent[1:], False])
    gaps = []
    for start, end in zip(starts, ends, strict=True):
        bars = int(end - start + 1)
        filled = bars <= max_fill_bars
        gaps.append(Gap(start=grid[start], bars=bars, filled=filled))
        if filled:  # flat bars at the previous close, no volume: what an interval without trades was
            gridded[start : end + 1, :4] = gridded[start - 1, 3]
            gridded[start : end + 1, 4] = 0.0
    return PreparedCandles(pair, timeframe, grid, gridded, tuple(gaps))


def cross_asset_columns(btc_close: np.ndarray) -> np.ndarray:
    """BTC/USD's one-bar and 24-bar log returns and 24-bar volatility, on BTC's own grid."""
    btc_log = np.log(btc_close)
    btc_r1 = btc_log - lag(btc_log, 1)
    return np.column_stack([btc_r1, btc_log - lag(btc_log, 24), rolling_std(btc_r1, 24)])


def feature_matrix(
    *,
    high: np.ndarray,
    low: np.ndarray,
    close: np.ndarray,
    volume: np.ndarray,
    cross_asset: np.ndarray,
    regime_rules: RegimeRules = DEFAULT_RULES,
) -> np.ndarray:
    """Every feature of :data:`FEATURES`, one row per bar, one column per feature (NaN where a window is
    incomplete or touches a gap). ``cross_asset`` is :func:`cross_asset_columns` of BTC/USD aligned onto
    the same bars. The one feature function: training and live inference both call it."""
    log_close = np.log(close)
    r1 = log_close - lag(log_close, 1)
    columns = [log_close - lag(log_close, k) for k in RETURN_WINDOWS]
    volatility = {24: rolling_std(r1, 24), 72: rolling_std(r1, 72)}
    columns += [volatility[24], volatility[72]]

    previous = lag(close, 1)
    true_range = np.maximum(high - low, np.maximum(np.abs(high - previous), np.abs(low - previous)))
    columns.append(rolling_mean(true_range, 14) / close)
    columns.append(np.log(high / low))
    columns += [rolling_slope(log_close, 48), rolling_slope(log_close, 168)]

    gains = rolling_mean(np.maximum(r1, 0.0), 14)  # NaN stays NaN, so gaps propagate
    losses = rolling_mean(np.maximum(-r1, 0.0), 14)
    columns.append(safe_divide(gains, gains + losses, default=0.5))
    lowest, highest = rolling_min(low, 24), rolling_max(high, 24)
    columns.append(safe_divide(close - lowest, highest - lowest, default=0.5))
    log_volume = np.log1p(volume)
    columns.append(
        safe_divide(log_volume - rolling_mean(log_volume, 72), rolling_std(log_volume, 72), default=0.0)
    )
    columns += list(cross_asset.T)
    regime = regime_inputs_of_log(
        log_close, r1, regime_rules, volatility=volatility.get(regime_rules.trend_window)
    )
    columns.append(codes_of(regime.strength, regime_rules))
    return np.column_stack(columns)


def _aligned_cross_asset(prepared: PreparedCandles, btc: PreparedCandles | None) -> np.ndarray:
    if prepared.pair == BTC:
        return prepared.cross_asset
    if btc is None:
        raise LearningDataError(
            prepared.pair, f"cross-asset features need {BTC} candles of the same timeframe"
        )
    own = btc.cross_asset  # on BTC's own bars, then matched by open time
    btc_times, times = btc.index.asi8, prepared.index.asi8
    where = np.clip(np.searchsorted(btc_times, times), 0, len(btc_times) - 1)
    found = btc_times[where] == times
    aligned = np.full((len(times), own.shape[1]), np.nan)
    aligned[found] = own[where[found]]
    return aligned


def features_of(prepared: PreparedCandles, btc: PreparedCandles | None = None) -> np.ndarray:
    """:func:`feature_matrix` over prepared candles (rows of ``prepared.index``). ``btc`` is required for
    any pair but BTC/USD: its features are computed on its own bars, then aligned onto the pair's (a bar
    BTC lacks is NaN)."""
    return feature_matrix(
        high=prepared.column("high"),
        low=prepared.column("low"),
        close=prepared.column("close"),
        volume=prepared.column("volume"),
        cross_asset=_aligned_cross_asset(prepared, btc),
    )


def feature_frame(prepared: PreparedCandles, btc: PreparedCandles | None = None) -> pd.DataFrame:
    """:func:`features_of` as a frame indexed by open time, columns :data:`FEATURES`."""
    return pd.DataFrame(features_of(prepared, btc), index=prepared.index, columns=list(FEATURES))


def round_trip_cost(taker_fee: float) -> float:
    """A buy and a sell at the taker rate (a fraction, e.g. 0.004), as a fraction of the notional."""
    return 2.0 * taker_fee


def forward_return(close: pd.Series, horizon: int) -> pd.Series:
    """Simple return from the close of each bar to the close ``horizon`` bars later (NaN at the end)."""
    return close.shift(-horizon) / close - 1.0


def labels(close: pd.Series, *, horizon: int, taker_fee: float) -> pd.Series:
    """1.0 when the forward return beats the round-trip taker fee, 0.0 when not, NaN when unknown."""
    forward = forward_return(close, horizon)
    return (forward > round_trip_cost(taker_fee)).astype(float).where(forward.notna())
