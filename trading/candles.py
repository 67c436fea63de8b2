"""Candles as plain values: validation and timeframe arithmetic. Plain Python, no Django.

Only closed candles are used for decisions; a candle still forming is carried with ``closed=False`` and
replaced when it closes.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation

TIMEFRAMES = (1, 5, 15, 30, 60, 240, 1440, 10080)  # minutes, as Kraken offers them

# What the candle table stores exactly (DecimalField(max_digits=30, decimal_places=12)), and a trade count
# that fits its integer column. Anything outside is refused here, before it can fail a whole batch.
QUANTUM = Decimal("0.000000000001")
LIMIT = Decimal(10) ** 18
MAX_TRADES = 2**31 - 1


class BadCandle(ValueError):
    """A candle that must not be stored; the message says why."""


@dataclass(frozen=True, slots=True)
class CandleRow:
    open_time: datetime
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    trades: int | None = None
    closed: bool = True


def check_timeframe(minutes: int) -> int:
    if minutes not in TIMEFRAMES:
        raise ValueError(f"timeframe {minutes} is not one of {', '.join(map(str, TIMEFRAMES))} minutes")
    return minutes


def floor_time(moment: datetime, minutes: int) -> datetime:
    """The open time of the ``minutes`` candle containing ``moment`` (UTC, aligned to the epoch)."""
    seconds = minutes * 60
    epoch = int(moment.astimezone(UTC).timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=UTC)


def close_time(row: CandleRow, minutes: int) -> datetime:
    return row.open_time + timedelta(minutes=minutes)


def to_decimal(value, field: str) -> Decimal:
    """``value`` as a Decimal rounded to the stored 12 decimals; refuses non-numbers, non-finite values
    and magnitudes the table cannot hold."""
    try:
        number = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise BadCandle(f"{field}={value!r} is not a number") from None
    if not number.is_finite():
        raise BadCandle(f"{field}={value!r} is not finite")
    if number.copy_abs() >= LIMIT:  # copy_abs: no context rounding, so no Overflow
        raise BadCandle(f"{field}={value!r} is too large to store")
    return number.quantize(QUANTUM, rounding=ROUND_HALF_EVEN)


def make_row(
    *, open_time: datetime, open, high, low, close, volume, trades=None, closed: bool = True, minutes: int
) -> CandleRow:
    """A validated row: finite, positive prices, low ≤ open/close ≤ high, volume ≥ 0, aligned open time."""
    if open_time.tzinfo is None:
        raise BadCandle("open time has no time zone")
    if floor_time(open_time, minutes) != open_time:
        raise BadCandle(f"open time {open_time.isoformat()} is not aligned to {minutes} minutes")
    if trades is not None:
        try:
            whole = Decimal(str(trades))
        except (InvalidOperation, ValueError):
            raise BadCandle(f"trades={trades!r} is not a whole number") from None
        if not whole.is_finite():
            raise BadCandle(f"trades={trades!r} is not a whole number")
        # Size first: int() or rounding of an exponent like 1E+999999999 must never be attempted.
        if whole.copy_abs() > MAX_TRADES:  # copy_abs: no context rounding, so no Overflow
            raise BadCandle(f"trade count {trades!r} is too large to store")
        if whole != whole.to_integral_value():
            raise BadCandle(f"trades={trades!r} is not a whole number")
        trades = int(whole)
    row = CandleRow(
        open_time=open_time.astimezone(UTC),
        open=to_decimal(open, "open"),
        high=to_decimal(high, "high"),
        low=to_decimal(low, "low"),
        close=to_decimal(close, "close"),
        volume=to_decimal(volume, "volume"),
        trades=trades,
        closed=closed,
    )
    if min(row.open, row.high, row.low, row.close) <= 0:
        raise BadCandle("prices must be positive (after rounding to 12 decimals)")
    if not row.low <= min(row.open, row.close) or not max(row.open, row.close) <= row.high:
        raise BadCandle(f"inconsistent OHLC: o={row.open} h={row.high} l={row.low} c={row.close}")
    if row.volume < 0 or (row.trades is not None and row.trades < 0):
        raise BadCandle("volume and trade count cannot be negative")
    if row.trades is not None and row.trades > MAX_TRADES:
        raise BadCandle(f"trade count {row.trades} is too large to store")
    return row
