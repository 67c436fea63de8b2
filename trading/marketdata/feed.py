"""Market-data sources as plain values: the events a source yields, the interface every source implements,
and the staleness rule. Plain Python, no Django: the live Kraken socket, the replay and the tests' fakes all
speak these types, and :mod:`trading.marketdata.feed_service` is the one Django-side consumer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Protocol, runtime_checkable

from trading.candles import CandleRow
from trading.kraken_pairs import common_code


def utc_now() -> datetime:
    return datetime.now(UTC)


def v2_symbol(symbol: str) -> str:
    """The WebSocket v2 name of a pair: ``XBT/USD`` → ``BTC/USD``; v2 names pass through unchanged.

    Kraken's AssetPairs ``wsname`` still uses the legacy asset codes for a few bases; the WebSocket v2 refuses
    them ("Currency pair not supported XBT/USD") and wants the common codes (``trading.kraken_pairs``)."""
    base, slash, quote = symbol.strip().upper().partition("/")
    if not slash or not base or not quote:
        raise ValueError(f"{symbol!r} is not a BASE/QUOTE pair name")
    return f"{common_code(base)}/{common_code(quote)}"


# --- Events ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Tick:
    """A price observation: the last trade price, with the best bid and ask when the source has them."""

    symbol: str
    price: Decimal
    bid: Decimal | None
    ask: Decimal | None
    time: datetime  # the source's time for it (Kraken's timestamp, or the replayed bar's close)


@dataclass(frozen=True, slots=True)
class Bar:
    """One candle of ``timeframe`` minutes. ``row.closed`` False: the bar is still forming and will change."""

    symbol: str
    timeframe: int
    row: CandleRow

    @property
    def closed(self) -> bool:
        return self.row.closed


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The connection is alive although nothing traded: liveness for every symbol listed."""

    time: datetime
    symbols: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Connected:
    time: datetime
    url: str
    attempt: int  # 1 for the first connection, then one more per reconnect


@dataclass(frozen=True, slots=True)
class Subscribed:
    time: datetime
    channel: str
    symbol: str


@dataclass(frozen=True, slots=True)
class SubscriptionRefused:
    """The exchange refused a subscription: the symbol gets no data on that channel and stays stale."""

    time: datetime
    channel: str
    symbol: str
    error: str


@dataclass(frozen=True, slots=True)
class Disconnected:
    time: datetime
    reason: str
    retry_in: float | None  # seconds until the next attempt; None when the source is closing


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message the source could not use (malformed, not finite, out of order...): skipped, never stored."""

    time: datetime
    kind: str  # malformed, not_finite, out_of_order, duplicate, unexpected, kraken_error, unhandled
    reason: str
    symbol: str | None = None


Event = Tick | Bar | Heartbeat | Connected | Subscribed | SubscriptionRefused | Disconnected | Rejected


@runtime_checkable
class MarketDataSource(Protocol):
    """What the feed consumes. Iterating yields events until the source ends (a replay runs out) or
    :meth:`close` is awaited (from any task of the same event loop)."""

    name: str  # "kraken_ws", "replay": names the source in logs and on published ticks
    store_as: str | None  # the Candle.Source value closed bars are stored as; None: they are already stored

    def __aiter__(self) -> AsyncIterator[Event]: ...

    async def close(self) -> None: ...


# --- Staleness ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StaleChange:
    symbol: str
    stale: bool  # the new state
    at: datetime
    last_seen: datetime | None


class StalenessTracker:
    """Which symbols have gone quiet for longer than ``window_seconds``.

    Feed it the time of every message per symbol (:meth:`seen`); :meth:`check` compares the state it last
    reported with the state now and returns only the changes, so each transition is reported once. A symbol
    is live only after a message seen by this tracker: a symbol reported stale stays stale until one
    arrives; a symbol reported live (e.g. restored from the last run) gets one window from ``started``.
    """

    def __init__(
        self,
        window_seconds: float,
        symbols: Iterable[str],
        *,
        clock: Callable[[], datetime] = utc_now,
        stale: bool | Mapping[str, bool] = True,
    ) -> None:
        if window_seconds <= 0:
            raise ValueError("the staleness window must be positive")
        self.window = float(window_seconds)
        self.clock = clock
        self.started = clock()
        self._symbols = tuple(dict.fromkeys(symbols))
        self._last_seen: dict[str, datetime | None] = dict.fromkeys(self._symbols)
        self._reported = {
            symbol: (stale if isinstance(stale, bool) else bool(stale.get(symbol, True)))
            for symbol in self._symbols
        }

    @property
    def symbols(self) -> tuple[str, ...]:
        return self._symbols

    def seen(self, symbol: str, at: datetime | None = None) -> None:
        if symbol not in self._last_seen:
            return
        at = at or self.clock()
        previous = self._last_seen[symbol]
        if previous is None or at > previous:
            self._last_seen[symbol] = at

    def last_seen(self, symbol: str) -> datetime | None:
        return self._last_seen[symbol]

    def age(self, symbol: str, now: datetime | None = None) -> float | None:
        """Seconds since the last message, None if none was seen."""
        seen = self._last_seen[symbol]
        return None if seen is None else max(0.0, ((now or self.clock()) - seen).total_seconds())

    def is_stale_now(self, symbol: str, now: datetime | None = None) -> bool:
        now = now or self.clock()
        seen = self._last_seen[symbol]
        if self._reported[symbol]:
            return seen is None or (now - seen).total_seconds() > self.window
        reference = seen if seen is not None else self.started
        return (now - reference).total_seconds() > self.window

    def stale_symbols(self, now: datetime | None = None) -> set[str]:
        now = now or self.clock()
        return {symbol for symbol in self._symbols if self.is_stale_now(symbol, now)}

    def reported_stale(self, symbol: str) -> bool:
        return self._reported[symbol]

    def check(self, now: datetime | None = None) -> list[StaleChange]:
        """The symbols whose state changed since the last check (each change reported once)."""
        now = now or self.clock()
        changes = []
        for symbol in self._symbols:
            stale = self.is_stale_now(symbol, now)
            if stale != self._reported[symbol]:
                self._reported[symbol] = stale
                changes.append(StaleChange(symbol, stale, now, self._last_seen[symbol]))
        return changes

    def retract(self, change: StaleChange) -> None:
        """A reported change could not be recorded (e.g. the database was down): report it again next time."""
        if self._reported.get(change.symbol) == change.stale:
            self._reported[change.symbol] = not change.stale

    def force_stale(self, now: datetime | None = None) -> list[StaleChange]:
        """Report every live symbol stale (the feed is stopping: nothing will keep them current)."""
        now = now or self.clock()
        changes = []
        for symbol in self._symbols:
            if not self._reported[symbol]:
                self._reported[symbol] = True
                changes.append(StaleChange(symbol, True, now, self._last_seen[symbol]))
        return changes
