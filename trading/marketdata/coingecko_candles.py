"""CoinGecko ``/market_chart/range`` answers as candles. Plain Python, no Django.

The answer is ``{"prices": [[ms, price], ...], "market_caps": [...], "total_volumes": [...]}``. Prices are
samples (5-minutely, hourly or daily by range, at un-aligned times such as 00:00:41.331), not bars: each is
the price at its moment.

Bucketing rule (which bar a sample belongs to). Bars are ``[open_time, open_time + timeframe)`` aligned like
:func:`trading.candles.floor_time`. CoinGecko stamps its samples a little *after* the grid time (hourly ones
seconds after the hour, e.g. 01:00:47.420; daily ones at 00:00:00), so a sample taken within
:data:`CLOSE_GRACE` (2 minutes; half the bar for bars shorter than 4 minutes) after a bar boundary is the
price *at* that boundary: it is the CLOSE of the bar that ends there, not the open of the bar that begins
there. In integer milliseconds::

    open_time(sample) = floor_time(sample - grace, timeframe)

So a sample at 13:00:41 closes the 12:00-13:00 bar, and a daily bar closes with the next day's 00:00:xx
sample. Within a bar, open = first sample, high/low = max/min, close = last. Hourly samples into hourly
bars give one sample per bar, its close (open = high = low = close, like Kraken's close for that bar); 5-
minute samples into 15-minute bars give the samples at about +5, +10 and +15 minutes. A bar is only
*closed* once ``grace`` has passed after its end, since its closing sample may still come. A sample later
than the grace after a boundary (CoinGecko late by more than 2 minutes) opens the next bar instead.

Volume: CoinGecko has no per-bar volume. ``total_volumes`` is a rolling 24-hour USD turnover summed over
every exchange CoinGecko tracks; neither a difference of two rolling sums nor a pro-rata share of it is the
volume traded in one bar, and its scale (all exchanges) is not Kraken's. So bars built here carry
``volume=0`` meaning *unknown* (see :data:`VOLUME_NOTE`), ``trades=None``, and the ``coingecko`` source
tells readers not to use the volume column.

Bad points (null, NaN or infinity, zero or negative, non-numeric, malformed pairs) are dropped and counted
by reason; repeated timestamps keep the last value and are counted; points are sorted by time. The median
spacing of the good points is reported (:attr:`Conversion.spacing`) so the caller can refuse an answer
coarser than it asked for.

``/coins/{id}/ohlc`` answers (:func:`ohlc_to_bars`) are candles with a true high and low: rows
``[close_ms, open, high, low, close]`` whose timestamp marks the candle's CLOSE (30-minute candles for
``days`` 1-2, 4-hour ones for 3-30). They are grouped into bars of the timeframe; a bar is built only when
every candle it spans is present and it has ended.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from itertools import pairwise

from trading.candles import CandleRow, check_timeframe, make_row

VOLUME_NOTE = (
    "0 = unknown: CoinGecko's total_volumes is a rolling 24h all-exchange USD turnover, not a per-bar volume"
)
ZERO = Decimal(0)
CLOSE_GRACE = timedelta(minutes=2)  # a sample this soon after a bar boundary is that bar's close

# Reasons a point is dropped (keys of ``Conversion.dropped``).
NULL = "null"
NOT_FINITE = "not finite"
NOT_POSITIVE = "not positive"
NOT_A_NUMBER = "not a number"
MALFORMED = "malformed point"


class MalformedAnswer(ValueError):
    """The answer does not have CoinGecko's shape (a key is missing, or a series is not a list)."""


@dataclass(frozen=True)
class Conversion:
    """Candles built from one answer, oldest first, and what was left out."""

    rows: tuple[CandleRow, ...]
    points: int  # points used
    dropped: dict[str, int] = field(default_factory=dict)  # reason → count
    duplicates: int = 0  # repeated timestamps (the last value was kept)
    outside: int = 0  # good points whose bar is outside the requested window
    spacing: timedelta | None = None  # median time between the answer's good points; None under two

    @property
    def closed_rows(self) -> tuple[CandleRow, ...]:
        return tuple(row for row in self.rows if row.closed)


def close_grace(timeframe: int) -> timedelta:
    """How long after a bar's end a sample still counts as its close: :data:`CLOSE_GRACE`, or half the bar
    when that is shorter (so a sample can never skip a bar)."""
    return min(CLOSE_GRACE, timedelta(minutes=timeframe) / 2)


def bar_open_ms(ms: int, timeframe: int) -> int:
    """The open time (ms) of the ``timeframe`` bar a sample taken at ``ms`` belongs to (module docstring)."""
    moved = ms - int(close_grace(timeframe) / timedelta(milliseconds=1))
    return moved - moved % (timeframe * 60_000)


def median_spacing(times_ms: list[int]) -> timedelta | None:
    """The median gap between consecutive sorted sample times; ``None`` with fewer than two."""
    if len(times_ms) < 2:
        return None
    return timedelta(milliseconds=statistics.median(b - a for a, b in pairwise(times_ms)))


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
    """Candles of ``timeframe`` minutes from a ``market_chart`` / ``market_chart/range`` answer, bucketed
    by the module's rule (a sample just after a boundary closes the bar ending there).

    Only bars opening in ``[start, end)`` are built (so adjacent bar-aligned chunks never build the same bar
    twice; a chunk's last bar takes its closing sample from just after ``end``). A bar is marked
    ``closed=False`` until its end plus :func:`close_grace` has passed at ``now``. Only ``prices`` is
    required."""
    check_timeframe(timeframe)
    if not isinstance(answer, Mapping):
        raise MalformedAnswer(f"the answer is {type(answer).__name__}, not an object with 'prices'")
    if "prices" not in answer:
        raise MalformedAnswer(f"the answer has no 'prices' (keys: {', '.join(sorted(answer)) or 'none'})")
    points, dropped, duplicates = clean_series(answer["prices"])
    low_ms, high_ms = _window_ms(start), _window_ms(end)
    buckets: dict[int, list[Decimal]] = {}
    outside = 0
    for ms, price in points:
        open_ms = bar_open_ms(ms, timeframe)
        if (low_ms is not None and open_ms < low_ms) or (high_ms is not None and open_ms >= high_ms):
            outside += 1
            continue
        buckets.setdefault(open_ms, []).append(price)
    settled = timedelta(minutes=timeframe) + close_grace(timeframe)
    rows = tuple(
        make_row(
            open_time=_ms_to_datetime(open_ms),
            open=prices[0],
            high=max(prices),
            low=min(prices),
            close=prices[-1],
            volume=ZERO,
            closed=_ms_to_datetime(open_ms) + settled <= now,
            minutes=timeframe,
        )
        for open_ms, prices in sorted(buckets.items())
    )
    return Conversion(
        rows=rows,
        points=len(points) - outside,
        dropped=dict(dropped),
        duplicates=duplicates,
        outside=outside,
        spacing=median_spacing([ms for ms, _ in points]),
    )


@dataclass(frozen=True)
class OhlcBars:
    """Bars built from an ``/ohlc`` answer, oldest first, and what was left out."""

    rows: tuple[CandleRow, ...]
    candles: int  # candles used
    dropped: dict[str, int] = field(default_factory=dict)
    incomplete: int = 0  # bars left out because a candle they span is missing or they have not ended
    spacing: timedelta | None = None  # median time between candle closes


OFF_GRID = "off the candle grid"


def ohlc_to_bars(answer, *, piece_minutes: int, timeframe: int, now: datetime) -> OhlcBars:
    """``/ohlc`` rows of ``piece_minutes`` candles → ``timeframe`` bars (a multiple of the piece). A close
    stamp may sit up to :data:`CLOSE_GRACE` past the piece grid; farther off it is dropped."""
    check_timeframe(timeframe)
    if timeframe % piece_minutes:
        raise ValueError(f"{timeframe}-minute bars cannot be built from {piece_minutes}-minute candles")
    if not isinstance(answer, list):
        raise MalformedAnswer("an /ohlc answer must be a list of [close_ms, open, high, low, close] rows")
    piece_ms = piece_minutes * 60_000
    grace_ms = int(CLOSE_GRACE / timedelta(milliseconds=1))
    dropped: Counter = Counter()
    pieces: dict[int, tuple[Decimal, Decimal, Decimal, Decimal]] = {}
    for row in answer:
        if not isinstance(row, list | tuple) or len(row) != 5:
            dropped[MALFORMED] += 1
            continue
        close_ms = _timestamp(row[0])
        if close_ms is None:
            dropped[MALFORMED] += 1
            continue
        values, reasons = zip(*(_price(value) for value in row[1:]), strict=True)
        if any(reasons):
            dropped[next(reason for reason in reasons if reason)] += 1
            continue
        grid = close_ms - close_ms % piece_ms
        if close_ms - grid > grace_ms:
            dropped[OFF_GRID] += 1
            continue
        pieces[grid - piece_ms] = values  # keyed by the candle's open; a repeat keeps the last
    opens = sorted(pieces)
    spacing = median_spacing(opens)
    per_bar = timeframe // piece_minutes
    groups: dict[int, list[int]] = {}
    for open_ms in opens:
        groups.setdefault(open_ms - open_ms % (timeframe * 60_000), []).append(open_ms)
    now_ms = int(now.timestamp() * 1000)
    rows, incomplete = [], 0
    for bar_ms, members in sorted(groups.items()):
        if len(members) != per_bar or bar_ms + timeframe * 60_000 > now_ms:
            incomplete += 1
            continue
        first, last = pieces[members[0]], pieces[members[-1]]
        try:
            rows.append(
                make_row(
                    open_time=_ms_to_datetime(bar_ms),
                    open=first[0],
                    high=max(pieces[m][1] for m in members),
                    low=min(pieces[m][2] for m in members),
                    close=last[3],
                    volume=ZERO,
                    minutes=timeframe,
                )
            )
        except ValueError:  # inconsistent OHLC in the answer
            dropped[MALFORMED] += 1
    return OhlcBars(tuple(rows), len(pieces), dict(dropped), incomplete, spacing)
