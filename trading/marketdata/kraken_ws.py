"""The live source: Kraken's public WebSocket v2 (``ticker`` and ``ohlc``), with reconnects. No Django here:
the caller passes the URL, the pairs and the timeframe (``run_market_feed`` reads them from settings).

Closing of OHLC bars. Kraken streams the candle of the current interval on every trade (``update``) and never
says "this candle is final". :class:`OhlcCloser` keeps, per symbol, the forming bar; it is emitted closed when
a message for a later ``interval_begin`` arrives (the next interval has begun, so no trade can change it any
more). In a ``snapshot`` (sent on subscribe, so after every reconnect) every row older than the newest is
closed, and the newest too when its interval ended more than ``close_grace`` seconds ago by our clock (the
snapshot is Kraken's own, complete state of that candle). After a disconnect the forming bar is dropped, not
closed: updates may have been missed; the snapshot that follows the resubscription replaces it. A message
for a bar already closed, an older interval, an update that goes backwards (volume, trades, high or low
regressing), a duplicate, a non-finite or inconsistent number: logged and skipped, never emitted.

Reconnects: exponential backoff with full jitter (``uniform(0, min(cap, base·2ⁿ))``), reset after a
connection stayed healthy for ``healthy_after`` seconds, at least ``maintenance_floor`` seconds while Kraken
reports the system not online, and never more than ``budget`` attempts in ``budget_window`` seconds. Kraken's
documented limits (docs.kraken.com, "Spot WebSocket" introduction): about 150 connection attempts per IP per
rolling 10 minutes, beyond which the IP is banned for 10 minutes; after maintenance, no more than one
attempt every 5 seconds. The defaults (1 s base, 60 s cap, 60 s healthy, 30 attempts per 10 minutes, 5 s
during maintenance) stay well inside them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from trading.candles import BadCandle, CandleRow, check_timeframe, make_row, to_decimal
from trading.marketdata.feed import (
    Bar,
    Connected,
    Disconnected,
    Event,
    Heartbeat,
    Rejected,
    Subscribed,
    SubscriptionRefused,
    Tick,
    utc_now,
    v2_symbol,
)

logger = logging.getLogger(__name__)

CHANNELS = ("ticker", "ohlc")


# --- Reconnect policy (pure) ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReconnectPolicy:
    base: float = 1.0  # seconds: the first retry waits uniform(0, base)
    cap: float = 60.0  # the longest single wait
    healthy_after: float = 60.0  # a connection up this long resets the backoff
    budget: int = 30  # at most this many connection attempts ...
    budget_window: float = 600.0  # ... in any window of this many seconds
    maintenance_floor: float = 5.0  # the shortest wait while Kraken says the system is not online

    def __post_init__(self) -> None:
        if self.base <= 0 or self.cap < self.base or self.budget < 1 or self.budget_window <= 0:
            raise ValueError("reconnect policy: need 0 < base ≤ cap, budget ≥ 1, budget_window > 0")


class Backoff:
    """Exponential backoff with full jitter, a reset after a healthy period and a rolling attempt budget."""

    def __init__(
        self,
        policy: ReconnectPolicy,
        *,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policy = policy
        self.rng = rng
        self.monotonic = monotonic
        self.failures = 0
        self._attempts: deque[float] = deque()

    def attempt(self) -> None:
        """Record a connection attempt (counts against the budget)."""
        self._attempts.append(self.monotonic())

    def delay(self, *, connected_for: float | None = None, maintenance: bool = False) -> float:
        """Seconds to wait before the next attempt, after a connection that lasted ``connected_for``
        seconds (None: it never opened)."""
        policy = self.policy
        if connected_for is not None and connected_for >= policy.healthy_after:
            self.failures = 0
        ceiling = min(policy.cap, policy.base * 2 ** min(self.failures, 30))
        self.failures += 1
        wait = self.rng() * ceiling
        if maintenance:
            wait = max(wait, policy.maintenance_floor)
        now = self.monotonic()
        while self._attempts and self._attempts[0] <= now - policy.budget_window:
            self._attempts.popleft()
        if len(self._attempts) >= policy.budget:
            wait = max(wait, self._attempts[0] + policy.budget_window - now)
        return wait


# --- OHLC closing (pure) ----------------------------------------------------------------------------------


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


@dataclass(frozen=True, slots=True)
class Rejection:
    kind: str  # malformed, not_finite, out_of_order, duplicate, unexpected, kraken_error
    reason: str


# --- Parsing ----------------------------------------------------------------------------------------------


class _Malformed(ValueError):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind


def _number(item: dict, field: str, *, optional: bool = False) -> Decimal | None:
    value = item.get(field)
    if value is None:
        if optional:
            return None
        raise _Malformed("malformed", f"{field} is missing")
    if isinstance(value, bool) or not isinstance(value, Decimal | int | str):
        raise _Malformed("malformed", f"{field}={value!r} is not a number")
    try:
        number = to_decimal(value, field)
    except BadCandle as exc:
        raise _Malformed("not_finite" if "finite" in str(exc) else "malformed", str(exc)) from None
    if number <= 0:
        raise _Malformed("malformed", f"{field}={number} is not positive")
    return number


def _time(value, field: str) -> datetime:
    if not isinstance(value, str):
        raise _Malformed("malformed", f"{field}={value!r} is not an RFC 3339 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise _Malformed("malformed", f"{field}={value!r} is not an RFC 3339 time") from None
    if moment.tzinfo is None:
        raise _Malformed("malformed", f"{field}={value!r} has no time zone")
    return moment


def _json_constant(name: str) -> Decimal:
    return Decimal(name)  # NaN, Infinity, -Infinity: kept as numbers so validation names them


def parse_message(raw: str | bytes) -> dict:
    """One WebSocket frame as JSON; numbers as exact Decimals (Kraken sends prices as JSON floats)."""
    try:
        message = json.loads(raw, parse_float=Decimal, parse_constant=_json_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise _Malformed("malformed", f"not JSON ({exc})") from None
    if not isinstance(message, dict):
        raise _Malformed("malformed", "not a JSON object")
    return message


def parse_tick(item: dict, *, received: datetime) -> Tick:
    symbol = item.get("symbol")
    if not isinstance(symbol, str):
        raise _Malformed("malformed", "ticker without a symbol")
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
        raise _Malformed("malformed", "ohlc without a symbol")
    if item.get("interval") != timeframe:
        raise _Malformed("unexpected", f"ohlc interval {item.get('interval')!r}, subscribed {timeframe}")
    trades = item.get("trades")
    if trades is not None and (isinstance(trades, bool) or not isinstance(trades, int | Decimal)):
        raise _Malformed("malformed", f"trades={trades!r} is not a count")
    values = {name: _number(item, name) for name in ("open", "high", "low", "close")}
    volume = item.get("volume")
    if volume is None or isinstance(volume, bool) or not isinstance(volume, Decimal | int):
        raise _Malformed("malformed", f"volume={volume!r} is not a number")
    try:
        row = make_row(
            open_time=_time(item.get("interval_begin"), "interval_begin"),
            volume=volume,
            trades=None if trades is None else int(trades),
            closed=False,
            minutes=timeframe,
            **values,
        )
    except (BadCandle, ValueError) as exc:
        kind = "not_finite" if "finite" in str(exc) else "malformed"
        raise _Malformed(kind, str(exc)) from None
    return symbol, row


# --- The source -------------------------------------------------------------------------------------------


@dataclass
class SourceStats:
    connections: int = 0
    reconnects: int = 0
    messages: int = 0
    heartbeats: int = 0
    rejected: int = 0
    refused: int = 0


class KrakenWSSource:
    """Kraken WebSocket v2 ``ticker`` and ``ohlc`` for ``symbols``, as feed events, reconnecting until closed.

    Legacy names are mapped (``XBT/USD`` → ``BTC/USD``); a subscription Kraken refuses is reported as a
    :class:`SubscriptionRefused` event, logged as an error and retried on the next connection — never dropped
    silently. Heartbeats carry no data but prove the connection: they are yielded as :class:`Heartbeat` for
    the symbols whose subscriptions were all acknowledged."""

    name = "kraken_ws"
    store_as = "kraken_ws"

    def __init__(
        self,
        *,
        url: str,
        symbols: Iterable[str],
        timeframe: int,
        policy: ReconnectPolicy | None = None,
        idle_timeout: float = 15.0,
        open_timeout: float = 10.0,
        close_grace: float = 30.0,
        clock: Callable[[], datetime] = utc_now,
        rng: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        try:
            parse_uri(url)
        except InvalidURI as exc:
            raise ValueError(f"KRAKEN_WS_URL: {exc}") from None
        self.url = url
        self.timeframe = check_timeframe(timeframe)
        wanted = list(symbols)
        self.symbols = tuple(dict.fromkeys(v2_symbol(symbol) for symbol in wanted))
        for symbol in wanted:
            if v2_symbol(symbol) != symbol:
                logger.info(
                    "kraken ws: %s is %s on the WebSocket v2; subscribing that", symbol, v2_symbol(symbol)
                )
        if not self.symbols:
            raise ValueError("no symbols to subscribe")
        self.policy = policy or ReconnectPolicy()
        self.idle_timeout = idle_timeout
        self.open_timeout = open_timeout
        self.clock = clock
        self.monotonic = monotonic
        self.stats = SourceStats()
        self._backoff = Backoff(self.policy, rng=rng, monotonic=monotonic)
        self._closers = {
            symbol: OhlcCloser(symbol, timeframe, close_grace=close_grace) for symbol in self.symbols
        }
        self._stop = asyncio.Event()
        self._ws = None
        self._req_ids: dict[int, str] = {}
        self._next_req_id = 0
        self._acked: dict[str, set[str]] = {}
        self._maintenance = False

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    @property
    def subscriptions(self) -> frozenset[tuple[str, str]]:
        """(channel, symbol) pairs acknowledged on the current connection."""
        acked = self._acked.items()
        return frozenset((channel, symbol) for symbol, channels in acked for channel in channels)

    async def close(self) -> None:
        self._stop.set()
        ws = self._ws
        if ws is not None:
            await ws.close()

    # -- connection loop --

    async def _events(self) -> AsyncIterator[Event]:
        attempt = 0
        while not self._stop.is_set():
            attempt += 1
            self._backoff.attempt()
            opened_at = None
            reason = "closed"
            try:
                async with connect(
                    self.url,
                    open_timeout=self.open_timeout,
                    close_timeout=2,
                    ping_interval=20,
                    ping_timeout=20,
                    max_size=2**22,
                ) as ws:
                    self._ws = ws
                    opened_at = self.monotonic()
                    self.stats.connections += 1
                    if self._stop.is_set():
                        break
                    logger.info("kraken ws: connected to %s (attempt %d)", self.url, attempt)
                    yield Connected(self.clock(), self.url, attempt)
                    await self._subscribe(ws)
                    while True:
                        try:
                            raw = await asyncio.wait_for(ws.recv(), self.idle_timeout)
                        except TimeoutError:
                            reason = f"no message for {self.idle_timeout:g} s"
                            break
                        for event in self.handle_message(raw):
                            yield event
            except ConnectionClosed as exc:
                reason = f"connection closed ({exc})"
            except (OSError, TimeoutError, WebSocketException) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            finally:
                self._ws = None
                self._acked.clear()
                self._req_ids.clear()
                for closer in self._closers.values():
                    closer.reset()
            if self._stop.is_set():
                break
            connected_for = None if opened_at is None else self.monotonic() - opened_at
            delay = self._backoff.delay(connected_for=connected_for, maintenance=self._maintenance)
            self.stats.reconnects += 1
            logger.warning("kraken ws: %s; reconnecting in %.2f s", reason, delay)
            yield Disconnected(self.clock(), reason, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
        yield Disconnected(self.clock(), "closed", None)

    async def _subscribe(self, ws) -> None:
        for channel in CHANNELS:
            self._next_req_id += 1
            self._req_ids[self._next_req_id] = channel
            params: dict = {"channel": channel, "symbol": list(self.symbols)}
            if channel == "ohlc":
                params.update(interval=self.timeframe, snapshot=True)
            await ws.send(json.dumps({"method": "subscribe", "params": params, "req_id": self._next_req_id}))

    # -- messages --

    def _reject(self, kind: str, reason: str, symbol: str | None = None) -> Rejected:
        self.stats.rejected += 1
        level = logging.DEBUG if kind == "duplicate" else logging.WARNING
        logger.log(level, "kraken ws: skipped a message (%s): %s", kind, reason)
        return Rejected(self.clock(), kind, reason, symbol)

    def handle_message(self, raw: str | bytes) -> list[Event]:
        """One frame from the socket as events (public for tests; the connection loop calls it)."""
        self.stats.messages += 1
        now = self.clock()
        try:
            message = parse_message(raw)
        except _Malformed as exc:
            return [self._reject(exc.kind, str(exc))]
        if "method" in message:
            return self._on_method(message, now)
        channel = message.get("channel")
        if channel == "heartbeat":
            self.stats.heartbeats += 1
            live = tuple(s for s in self.symbols if self._acked.get(s, set()) >= set(CHANNELS))
            return [Heartbeat(now, live)]
        if channel == "status":
            return self._on_status(message)
        data = message.get("data")
        if channel not in CHANNELS:
            return []  # e.g. "pong", or a channel we did not ask for
        if not isinstance(data, list):
            return [self._reject("malformed", f"{channel} message without a data list")]
        if channel == "ticker":
            return self._on_ticker(data, now)
        return self._on_ohlc(data, message.get("type"), now)

    def _on_method(self, message: dict, now: datetime) -> list[Event]:
        if message.get("method") != "subscribe":
            return []
        result = message.get("result") if isinstance(message.get("result"), dict) else {}
        channel = result.get("channel") or self._req_ids.get(message.get("req_id"), "?")
        symbol = result.get("symbol") or message.get("symbol")
        if message.get("success") is True:
            if not isinstance(symbol, str):
                return []  # a channel without symbols (e.g. heartbeat, status)
            self._acked.setdefault(symbol, set()).add(channel)
            logger.info("kraken ws: subscribed %s %s", channel, symbol)
            return [Subscribed(now, channel, symbol)]
        error = str(message.get("error") or "refused without a reason")
        if not isinstance(symbol, str):
            return [self._reject("kraken_error", f"subscribe {channel}: {error}")]
        self.stats.refused += 1
        logger.error(
            "kraken ws: Kraken refused the %s subscription for %s: %s; it stays stale", channel, symbol, error
        )
        return [SubscriptionRefused(now, channel, symbol, error)]

    def _on_status(self, message: dict) -> list[Event]:
        data = message.get("data")
        if isinstance(data, list) and data and isinstance(data[0], dict):
            system = data[0].get("system")
            self._maintenance = system != "online"
            log = logger.info if system == "online" else logger.warning
            log("kraken ws: system %s (version %s)", system, data[0].get("version"))
        return []

    def _on_ticker(self, data: list, now: datetime) -> list[Event]:
        events: list[Event] = []
        for item in data:
            try:
                if not isinstance(item, dict):
                    raise _Malformed("malformed", "ticker item is not an object")
                tick = parse_tick(item, received=now)
            except _Malformed as exc:
                events.append(self._reject(exc.kind, f"ticker: {exc}", _symbol_of(item)))
                continue
            if tick.symbol not in self._closers:
                events.append(self._reject("unexpected", f"ticker for {tick.symbol}", tick.symbol))
                continue
            events.append(tick)
        return events

    def _on_ohlc(self, data: list, kind, now: datetime) -> list[Event]:
        events: list[Event] = []
        snapshot_rows: dict[str, list[CandleRow]] = {}
        for item in data:
            try:
                if not isinstance(item, dict):
                    raise _Malformed("malformed", "ohlc item is not an object")
                symbol, row = parse_candle(item, timeframe=self.timeframe)
            except _Malformed as exc:
                events.append(self._reject(exc.kind, f"ohlc: {exc}", _symbol_of(item)))
                continue
            closer = self._closers.get(symbol)
            if closer is None:
                events.append(self._reject("unexpected", f"ohlc for {symbol}", symbol))
                continue
            if kind == "snapshot":
                snapshot_rows.setdefault(symbol, []).append(row)
                continue
            bars, rejection = closer.update(row)
            events.extend(bars)
            if rejection is not None:
                events.append(self._reject(rejection.kind, f"ohlc {symbol}: {rejection.reason}", symbol))
        for symbol, rows in snapshot_rows.items():
            events.extend(self._closers[symbol].snapshot(rows, now))
        return events


def _symbol_of(item) -> str | None:
    symbol = item.get("symbol") if isinstance(item, dict) else None
    return symbol if isinstance(symbol, str) else None
