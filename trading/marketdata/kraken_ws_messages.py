"""Kraken WebSocket v2 messages as plain values: parsing one frame, and closing OHLC bars. No Django, no I/O;
:mod:`trading.marketdata.kraken_ws` (the connection) feeds frames through these.

Parsing. Numbers are read as exact Decimals (Kraken sends prices as JSON floats), ``NaN`` and ``Infinity``
kept as numbers so validation names them. Whatever a frame holds, parsing raises only :class:`Malformed`
(with the kind of the problem): a wrong type, a non-finite or absurd number, an overflowing count — never a
``TypeError``, ``ValueError`` or ``ArithmeticError`` that would reach the connection loop.

Closing of OHLC bars. Kraken streams the candle of the current interval on every trade (``update``) and never
says "this candle is final". :class:`OhlcCloser` keeps, per symbol, the forming bar; it is emitted closed when
a message for a later ``interval_begin`` arrives (the next interval has begun, so no trade can change it any
more). In a ``snapshot`` (sent on subscribe, so after every reconnect) every row older than the newest is
closed, and the newest too when its interval ended more than ``close_grace`` seconds ago by our clock (the
snapshot is Kraken's own, complete state of that candle). After a disconnect the forming bar is dropped, not
closed: updates may have been missed; the snapshot that follows the resubscription replaces it. A message
for a bar already closed, an older interval, an update that goes backwards (volume, trades, high or low
regressing), a duplicate, a non-finite or inconsistent number: logged and skipped, never emitted.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from trading.candles import MAX_TRADES, BadCandle, CandleRow, check_timeframe, make_row, to_decimal
from trading.marketdata.feed import Bar, Tick

# What a malformed value can raise on its way through Decimal, int() and datetime: turned into Malformed.
PARSE_ERRORS = (BadCandle, ArithmeticError, TypeError, ValueError)


# --- OHLC closing -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str  # malformed, not_finite, out_of_order, duplicate, unexpected, kraken_error
    reason: str


def _regresses(new: CandleRow, old: CandleRow) -> bool:
    """An update of the same interval cannot lower volume, trades or the high, nor raise the low."""
    if new.volume < old.volume or new.high < old.high or new.low > old.low:
        return True
    return new.trades is not None and old.trades is not None and new.trades < old.trades


class OhlcCloser:
    """Turns Kraken's running candles of one symbol into forming and closed bars (see the module doc)."""

    def __init__(self, symbol: str, timeframe: int, *, close_grace: float = 30.0) -> None:
        self.symbol = symbol
        self.timeframe = check_timeframe(timeframe)
        self.close_grace = timedelta(seconds=close_grace)
        self.forming: CandleRow | None = None
        self.last_closed: datetime | None = None

    def _bar(self, row: CandleRow) -> Bar:
        return Bar(self.symbol, self.timeframe, row)

    def _close(self, row: CandleRow) -> Bar:
        self.last_closed = row.open_time
        return self._bar(replace(row, closed=True))

    def update(self, row: CandleRow) -> tuple[list[Bar], Rejection | None]:
        """An ``update`` row: the candle of its interval as it stands now."""
        row = replace(row, closed=False)
        if self.last_closed is not None and row.open_time <= self.last_closed:
            return [], Rejection("out_of_order", f"{row.open_time:%Y-%m-%d %H:%M} is already closed")
        forming = self.forming
        if forming is None:
            self.forming = row
            return [self._bar(row)], None
        if row.open_time < forming.open_time:
            return [], Rejection(
                "out_of_order",
                f"{row.open_time:%Y-%m-%d %H:%M} is older than the forming {forming.open_time:%H:%M}",
            )
        if row.open_time == forming.open_time:
            if row == forming:
                return [], Rejection("duplicate", f"{row.open_time:%Y-%m-%d %H:%M} repeated unchanged")
            if _regresses(row, forming):
                return [], Rejection("out_of_order", f"{row.open_time:%Y-%m-%d %H:%M} update goes backwards")
            self.forming = row
            return [self._bar(row)], None
        # A later interval has begun: the forming bar is final.
        self.forming = row
        return [self._close(forming), self._bar(row)], None

    def snapshot(self, rows: Iterable[CandleRow], now: datetime) -> list[Bar]:
        """A ``snapshot``: Kraken's recent candles, the newest possibly still forming."""
        by_time = {row.open_time: replace(row, closed=False) for row in rows}
        if not by_time:
            return []
        newest = max(by_time)
        minutes = timedelta(minutes=self.timeframe)
        bars = []
        self.forming = None
        for moment in sorted(by_time):
            row = by_time[moment]
            if self.last_closed is not None and moment <= self.last_closed:
                continue  # already closed and emitted (a snapshot after a reconnect repeats it)
            if moment < newest or moment + minutes + self.close_grace <= now:
                bars.append(self._close(row))
            else:
                self.forming = row
                bars.append(self._bar(row))
        return bars

    def reset(self) -> None:
        """The connection dropped: the forming bar may have missed updates; the next snapshot replaces it."""
        self.forming = None


# --- Parsing ----------------------------------------------------------------------------------------------


class Malformed(ValueError):
    """A frame, or one item of it, that cannot be used; ``kind`` names the problem (``malformed``,
    ``not_finite``, ``unexpected``)."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _kind(exc: Exception) -> str:
    return "not_finite" if "finite" in str(exc) else "malformed"


def _number(item: dict, field: str, *, optional: bool = False) -> Decimal | None:
    value = item.get(field)
    if value is None:
        if optional:
            return None
        raise Malformed("malformed", f"{field} is missing")
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise Malformed("malformed", f"{field}={value!r} is not a number")
    try:
        number = to_decimal(value, field)
    except PARSE_ERRORS as exc:
        raise Malformed(_kind(exc), f"{field}: {exc}") from None
    if number <= 0:
        raise Malformed("malformed", f"{field}={number} is not positive")
    return number


def _time(value, field: str) -> datetime:
    if not isinstance(value, str):
        raise Malformed("malformed", f"{field}={value!r} is not an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value)
    except PARSE_ERRORS:
        raise Malformed("malformed", f"{field}={value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise Malformed("malformed", f"{field}={value!r} has no time zone")
    return moment


def _json_constant(name: str) -> Decimal:
    return Decimal(name)  # NaN, Infinity, -Infinity: kept as numbers so validation names them


def parse_message(raw: str | bytes) -> dict:
    """One WebSocket frame as JSON; numbers as exact Decimals (Kraken sends prices as JSON floats)."""
    try:
        message = json.loads(raw, parse_float=Decimal, parse_constant=_json_constant)
    except (*PARSE_ERRORS, UnicodeDecodeError, RecursionError) as exc:
        raise Malformed("malformed", f"not JSON ({type(exc).__name__}: {exc})") from None
    if not isinstance(message, dict):
        raise Malformed("malformed", "not a JSON object")
    return message


def parse_tick(item: dict, *, received: datetime) -> Tick:
    symbol = item.get("symbol")
    if not isinstance(symbol, str):
        raise Malformed("malformed", "ticker without a symbol")
    stamp = item.get("timestamp")
    return Tick(
        symbol=symbol,
        price=_number(item, "last"),
        bid=_number(item, "bid", optional=True),
        ask=_number(item, "ask", optional=True),
        time=_time(stamp, "timestamp") if stamp is not None else received,
    )


def parse_candle(item: dict, *, timeframe: int) -> tuple[str, CandleRow]:
    symbol = item.get("symbol")
    if not isinstance(symbol, str):
        raise Malformed("malformed", "ohlc without a symbol")
    if item.get("interval") != timeframe:
        raise Malformed("unexpected", f"ohlc interval {item.get('interval')!r}, subscribed {timeframe}")
    trades = item.get("trades")
    if trades is not None and (isinstance(trades, bool) or not isinstance(trades, int | Decimal)):
        raise Malformed("malformed", f"trades={trades!r} is not a count")
    if isinstance(trades, Decimal) and not trades.is_finite():
        raise Malformed("not_finite", f"trades={trades} is not finite")
    # No abs() or int() before this: 1e999999999999 overflows the one and does not fit memory in the other.
    if trades is not None and not -MAX_TRADES <= trades <= MAX_TRADES:
        raise Malformed("malformed", f"trades={trades} is too large to store")
    values = {name: _number(item, name) for name in ("open", "high", "low", "close")}
    volume = item.get("volume")
    if volume is None or isinstance(volume, bool) or not isinstance(volume, Decimal | int):
        raise Malformed("malformed", f"volume={volume!r} is not a number")
    open_time = _time(item.get("interval_begin"), "interval_begin")
    try:
        # make_row checks the count is whole, non-negative and storable; no int() here, which would
        # overflow on an infinite one.
        row = make_row(
            open_time=open_time, volume=volume, trades=trades, closed=False, minutes=timeframe, **values
        )
    except PARSE_ERRORS as exc:
        raise Malformed(_kind(exc), str(exc)) from None
    return symbol, row
