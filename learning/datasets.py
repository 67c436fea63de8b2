"""Kraken OHLCVT bulk files as frames, for reports and benchmarks that read the shared data directly.
Plain Python, no Django. (The candle store is filled from the same files by ``import_kraken_csv``.)"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

COLUMNS = ["time", "open", "high", "low", "close", "volume", "trades"]


def read_kraken_ohlcvt(path: Path, *, years: float | None = None, bars: int | None = None) -> pd.DataFrame:
    """``time,open,high,low,close,volume,trades`` lines (no header) as a float frame indexed by UTC open
    time; ``years`` / ``bars``: only the most recent span of the file."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: not found (the shared market data sits beside the repository)")
    frame = pd.read_csv(path, header=None, names=COLUMNS)
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time"), unit="s", utc=True), name="open_time")
    frame = frame.drop(columns="trades").astype(float)
    return recent(frame, years=years, bars=bars)


def recent(frame: pd.DataFrame, *, years: float | None = None, bars: int | None = None) -> pd.DataFrame:
    """The most recent ``years`` (whole days, ending at the last bar) and/or ``bars`` of ``frame``."""
    if years is not None and len(frame):
        frame = frame[frame.index > frame.index[-1] - pd.Timedelta(days=round(365 * years))]
    if bars is not None:
        frame = frame.iloc[-bars:]
    return frame


def common_span(
    frames: dict[str, pd.DataFrame], *, years: float | None = None, bars: int | None = None
) -> dict[str, pd.DataFrame]:
    """The frames clipped to the span they all cover (latest first bar to earliest last bar), then each
    cut to the most recent ``years`` / ``bars`` of that common span, so every pair covers the same
    period. Raises ``ValueError`` when the files do not overlap."""
    start = max(frame.index[0] for frame in frames.values())
    end = min(frame.index[-1] for frame in frames.values())
    if start > end:
        spans = [f"{name} {f.index[0]:%Y-%m-%d} → {f.index[-1]:%Y-%m-%d}" for name, f in frames.items()]
        raise ValueError(f"the files do not overlap: {', '.join(spans)}")
    clipped = {name: frame[(frame.index >= start) & (frame.index <= end)] for name, frame in frames.items()}
    if years is not None:
        first = end - pd.Timedelta(days=round(365 * years))
        clipped = {name: frame[frame.index > first] for name, frame in clipped.items()}
    if bars is not None:
        first = max(frame.index[-min(bars, len(frame))] for frame in clipped.values())
        clipped = {name: frame[frame.index >= first] for name, frame in clipped.items()}
    return clipped
