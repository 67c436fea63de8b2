"""CoinGecko answers as candles. Plain Python, no Django.

Two shapes come in:

- ``/coins/{id}/market_chart/range`` (and ``/market_chart``): ``{"prices": [[ms, price], ...],
  "market_caps": [...], "total_volumes": [...]}``. Prices are samples (5-minutely, hourly or daily by range,
  at un-aligned times such as 00:00:41.331), not bars. They are grouped into ``[open_time, open_time +
  timeframe)`` buckets aligned like :func:`trading.candles.floor_time`: open = first sample, close = last,
  high/low = max/min.
- ``/coins/{id}/ohlc``: ``[[ms, open, high, low, close], ...]`` where the timestamp marks the candle's
  CLOSE, so ``open_time = ts - interval``.

Volume: CoinGecko has no per-bar volume. ``total_volumes`` is a rolling 24-hour USD turnover summed over
every exchange CoinGecko tracks; neither a difference of two rolling sums nor a pro-rata share of it is the
volume traded in one bar, and its scale (all exchanges) is not Kraken's. So bars built here carry
``volume=0`` meaning *unknown* (see :data:`VOLUME_NOTE`), ``trades=None``, and the ``coingecko`` source
tells readers not to use the volume column.

Bad points (null, NaN or infinity, zero or negative, non-numeric, malformed pairs) are dropped and counted
by reason; repeated timestamps keep the last value and are counted; points are sorted by time.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import pairwise

from trading.candles import BadCandle, CandleRow, check_timeframe, floor_time, make_row

VOLUME_NOTE = (
    "0 = unknown: CoinGecko's total_volumes is a rolling 24h all-exchange USD turnover, not a per-bar volume"
)
ZERO = Decimal(0)

# Reasons a point is dropped (keys of ``Conversion.dropped``).
NULL = "null"
NOT_FINITE = "not finite"
NOT_POSITIVE = "not positive"
NOT_A_NUMBER = "not a number"
MALFORMED = "malformed point"
INCONSISTENT = "inconsistent ohlc"
UNALIGNED = "unaligned close time"


class MalformedAnswer(ValueError):
    """The answer does not have CoinGecko's shape (a key is missing, or a series is not a list)."""


@dataclass(frozen=True)
class Conversion:
    """Candles built from one answer, oldest first, and what was left out."""

    rows: tuple[CandleRow, ...]
    points: int  # points used
    dropped: dict[str, int] = field(default_factory=dict)  # reason → count
    duplicates: int = 0  # repeated timestamps (the last value was kept)
    outside: int = 0  # good points outside the requested window

    @property
    def closed_rows(self) -> tuple[CandleRow, ...]:
        return tuple(row for row in self.rows if row.closed)


def _ms_to_datetime(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def _timestamp(value) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return int(value)


def _price(value) -> tuple[Decimal | None, str | None]:
    """The value as a positive finite Decimal, or the reason it is not one."""
    if value is None:
        return None, NULL
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None, NOT_A_NUMBER
    try:
        number = Decimal(str(value).strip())
    except (InvalidOperation, ValueError):
        return None, NOT_A_NUMBER
    if not number.is_finite():
        return None, NOT_FINITE
    if number <= 0:
        return None, NOT_POSITIVE
    return number, None


def clean_series(series, *, name: str = "prices") -> tuple[list[tuple[int, Decimal]], Counter, int]:
    """``[[ms, value], ...]`` as sorted, de-duplicated ``(ms, Decimal)`` pairs, the dropped points by
    reason, and the number of repeated timestamps."""
    if not isinstance(series, list):
        raise MalformedAnswer(f"{name!r} is {type(series).__name__}, not a list of [ms, value] pairs")
    dropped: Counter = Counter()
    by_ms: dict[int, Decimal] = {}
    duplicates = 0
    for point in series:
        if not isinstance(point, list | tuple) or len(point) != 2:
            dropped[MALFORMED] += 1
            continue
        ms = _timestamp(point[0])
        if ms is None or ms <= 0:
            dropped[MALFORMED] += 1
            continue
        value, reason = _price(point[1])
        if reason:
            dropped[reason] += 1
            continue
        if ms in by_ms:
            duplicates += 1
        by_ms[ms] = value
    return sorted(by_ms.items()), dropped, duplicates


def _window_ms(moment: datetime | None) -> int | None:
    return None if moment is None else int(moment.timestamp() * 1000)


def market_chart_to_candles(
    answer: Mapping,
    *,
    timeframe: int,
    now: datetime,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Conversion:
    """Candles of ``timeframe`` minutes from a ``market_chart`` / ``market_chart/range`` answer.

    Only points in ``[start, end)`` are used (so adjacent chunks never build the same bucket twice). A
    bucket that has not ended at ``now`` is marked ``closed=False``. Only ``prices`` is required."""
    check_timeframe(timeframe)
    if not isinstance(answer, Mapping):
        raise MalformedAnswer(f"the answer is {type(answer).__name__}, not an object with 'prices'")
    if "prices" not in answer:
        raise MalformedAnswer(f"the answer has no 'prices' (keys: {', '.join(sorted(answer)) or 'none'})")
    points, dropped, duplicates = clean_series(answer["prices"])
    low_ms, high_ms = _window_ms(start), _window_ms(end)
    buckets: dict[datetime, list[Decimal]] = {}
    outside = 0
    for ms, price in points:
        if (low_ms is not None and ms < low_ms) or (high_ms is not None and ms >= high_ms):
            outside += 1
            continue
        buckets.setdefault(floor_time(_ms_to_datetime(ms), timeframe), []).append(price)
    length = timedelta(minutes=timeframe)
    rows = tuple(
        make_row(
            open_time=open_time,
            open=prices[0],
            high=max(prices),
            low=min(prices),
            close=prices[-1],
            volume=ZERO,
            closed=open_time + length <= now,
            minutes=timeframe,
        )
        for open_time, prices in sorted(buckets.items())
    )
    return Conversion(
        rows=rows,
        points=len(points) - outside,
        dropped=dict(dropped),
        duplicates=duplicates,
        outside=outside,
    )


# /ohlc bar length by the ``days`` asked (CoinGecko's automatic granularity, free and demo plans).
def ohlc_interval_minutes(days: int) -> int:
    """The bar length ``/ohlc`` returns for ``days``: 1-2 days → 30 minutes, 3-30 → 4 hours, 31+ → 4 days."""
    if days < 1:
        raise ValueError("days must be at least 1")
    if days <= 2:
        return 30
    if days <= 30:
        return 240
    return 4 * 1440


def _infer_interval_ms(close_times: Iterable[int]) -> int:
    ordered = sorted(set(close_times))
    steps = Counter(later - earlier for earlier, later in pairwise(ordered))
    if not steps:
        raise MalformedAnswer(
            "cannot tell the bar length from fewer than two OHLC rows: pass interval_minutes"
        )
    return steps.most_common(1)[0][0]


def ohlc_to_candles(answer, *, now: datetime, interval_minutes: int | None = None) -> Conversion:
    """Candles from an ``/ohlc`` answer. Each row's timestamp is the candle's CLOSE time, so the candle
    opens ``interval`` earlier; a candle whose close time is after ``now`` is marked ``closed=False``.

    ``interval_minutes`` defaults to the most common spacing of the rows (see :func:`ohlc_interval_minutes`
    for what CoinGecko serves). Rows with a bad value, or whose high/low do not bracket open/close, are
    dropped and counted, and so are rows whose close time is off the bar grid (a live, un-aligned sample)."""
    if not isinstance(answer, list):
        raise MalformedAnswer(f"the OHLC answer is {type(answer).__name__}, not a list of rows")
    dropped: Counter = Counter()
    by_ms: dict[int, tuple[Decimal, ...]] = {}
    duplicates = 0
    for row in answer:
        if not isinstance(row, list | tuple) or len(row) != 5 or _timestamp(row[0]) is None:
            dropped[MALFORMED] += 1
            continue
        values, reason = [], None
        for value in row[1:]:
            number, reason = _price(value)
            if reason:
                break
            values.append(number)
        if reason:
            dropped[reason] += 1
            continue
        ms = _timestamp(row[0])
        if ms in by_ms:
            duplicates += 1
        by_ms[ms] = tuple(values)
    if interval_minutes is None:
        interval_ms = _infer_interval_ms(by_ms)
        if interval_ms % 60_000:
            raise MalformedAnswer(f"OHLC rows are {interval_ms} ms apart, not a whole number of minutes")
        interval_minutes = interval_ms // 60_000
    length = timedelta(minutes=interval_minutes)
    # Bars of a Kraken timeframe must align to it; CoinGecko's multi-day bars align to UTC days.
    align = interval_minutes if 1440 % interval_minutes == 0 else 1440
    rows = []
    for ms, (open_, high, low, close) in sorted(by_ms.items()):
        closes_at = _ms_to_datetime(ms)
        if floor_time(closes_at - length, align) != closes_at - length:
            dropped[UNALIGNED] += 1
            continue
        try:
            rows.append(
                make_row(
                    open_time=closes_at - length,
                    open=open_,
                    high=high,
                    low=low,
                    close=close,
                    volume=ZERO,
                    closed=closes_at <= now,
                    minutes=align,
                )
            )
        except BadCandle:
            dropped[INCONSISTENT] += 1
    return Conversion(rows=tuple(rows), points=len(rows), dropped=dict(dropped), duplicates=duplicates)
