"""The live source: Kraken's public WebSocket v2 (``ticker`` and ``ohlc``), with reconnects. No Django here:
the caller passes the URL, the pairs and the timeframe (``run_market_feed`` reads them from settings).

Parsing frames and closing OHLC bars (when a bar Kraken streams counts as final) live in
:mod:`trading.marketdata.kraken_ws_messages`; this module is the connection. One frame never ends the feed:
whatever it holds, :meth:`KrakenWSSource.handle_message` turns a frame it cannot use into a logged, counted
:class:`~trading.marketdata.feed.Rejected` event — an error while handling it included (kind ``unhandled``).

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
from dataclasses import dataclass
from datetime import datetime

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidURI, WebSocketException
from websockets.uri import parse_uri

from trading.candles import CandleRow, check_timeframe
from trading.marketdata.backoff import jittered_backoff
from trading.marketdata.feed import (
    Connected,
    Disconnected,
    Event,
    Heartbeat,
    Rejected,
    Subscribed,
    SubscriptionRefused,
    utc_now,
    v2_symbol,
)
from trading.marketdata.kraken_ws_messages import (
    Malformed,
    OhlcCloser,
    parse_candle,
    parse_message,
    parse_tick,
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
        wait = jittered_backoff(self.failures, base=policy.base, cap=policy.cap, rng=self.rng)
        self.failures += 1
        if maintenance:
            wait = max(wait, policy.maintenance_floor)
        now = self.monotonic()
        while self._attempts and self._attempts[0] <= now - policy.budget_window:
            self._attempts.popleft()
        if len(self._attempts) >= policy.budget:
            wait = max(wait, self._attempts[0] + policy.budget_window - now)
        return wait


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
        """One frame from the socket as events (public for tests; the connection loop calls it). Never
        raises: a frame that cannot be handled, whatever the error, is one logged, counted ``Rejected``."""
        self.stats.messages += 1
        now = self.clock()
        try:
            return self._handle(raw, now)
        except Exception as exc:  # one bad frame must not end the feed
            self.stats.rejected += 1
            logger.error(
                "kraken ws: skipped a message that could not be handled (%s: %s): %.300r",
                type(exc).__name__,
                exc,
                raw,
                exc_info=True,
            )
            return [Rejected(now, "unhandled", f"{type(exc).__name__}: {exc}")]

    def _handle(self, raw: str | bytes, now: datetime) -> list[Event]:
        try:
            message = parse_message(raw)
        except Malformed as exc:
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
        channel = result.get("channel")
        if not isinstance(channel, str) or not channel:
            req_id = message.get("req_id")  # ours are ints; anything else (a list is unhashable) is unknown
            channel = self._req_ids.get(req_id, "?") if isinstance(req_id, int) else "?"
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
                    raise Malformed("malformed", "ticker item is not an object")
                tick = parse_tick(item, received=now)
            except Malformed as exc:
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
                    raise Malformed("malformed", "ohlc item is not an object")
                symbol, row = parse_candle(item, timeframe=self.timeframe)
            except Malformed as exc:
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
