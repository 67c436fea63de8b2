"""The Django side of the market feed: consumes any :class:`~trading.marketdata.feed.MarketDataSource`
(the live Kraken socket, a replay) and

- stores closed bars with :func:`trading.services.candles_upsert` as the source says (``kraken_ws`` live,
  ``replay`` for replayed rows, stored only where no bar exists: a replay never overwrites Kraken's bars),
  and keeps at most the one forming bar per pair as ``closed=False``;
- never lets one bar block the others: when the database refuses a batch, the rows are retried one at a
  time and a row refused on its own is dropped (logged, counted, reported); rows that failed for a
  transient reason (database locked or unreachable) are kept for at most ``write_attempts`` attempts;
- keeps ``FeedStatus`` current — last message time and price written at most every ``flush_every`` seconds,
  not per tick — and records each stale / live transition once, with its audit event (``market.stale``,
  ``market.live``) in the same transaction;
- publishes every tick to the channel layer group ``market.ticks`` (``{"type": "market.tick", ...}``, prices
  as strings);
- exports Prometheus metrics: ``aether_market_stale{symbol}`` (1/0),
  ``aether_market_last_message_age_seconds{symbol}`` (+Inf until a first message),
  ``aether_market_messages_total{source,kind}``, ``aether_market_reconnects_total{source}`` and
  ``aether_market_feed_errors_total{source,kind}`` (refused subscriptions, skipped messages, publish errors,
  ``database`` write errors, ``bar_dropped`` bars given up on).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from asgiref.sync import sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.core.exceptions import ImproperlyConfigured
from django.db import DatabaseError, InterfaceError, OperationalError
from django.utils import timezone
from prometheus_client import Counter, Gauge

from governance.actors import SystemActor
from trading.candles import CandleRow, check_timeframe
from trading.marketdata.feed import (
    Bar,
    Connected,
    Disconnected,
    Event,
    Heartbeat,
    MarketDataSource,
    Rejected,
    StaleChange,
    StalenessTracker,
    SubscriptionRefused,
    Tick,
)
from trading.models import Candle, Instrument
from trading.services import (
    UpsertResult,
    feed_bars_store,
    feed_status_set_stale,
    feed_status_touch,
    feed_statuses_prepare,
)

logger = logging.getLogger(__name__)

ACTOR = SystemActor("market_feed")
TICKS_GROUP = "market.ticks"
TICK_MESSAGE_TYPE = "market.tick"
PUBLISH_TIMEOUT_SECONDS = 2.0
WRITE_ATTEMPTS = 12  # a bar failing for a transient reason is tried this often (about a minute), then dropped

EMBEDDED_NOTICE = (
    "EMBEDDED MODE: REDIS_URL is not set, so ticks go to the in-process channel layer "
    "(InMemoryChannelLayer) and reach only consumers in THIS process, not the web process. "
    "Set REDIS_URL to publish them to the web process."
)

STALE_GAUGE = Gauge(
    "aether_market_stale",
    "1 when the pair's market data is stale (no message within the window), else 0",
    ["symbol"],
)
AGE_GAUGE = Gauge(
    "aether_market_last_message_age_seconds",
    "Seconds since the market feed last heard about the pair (+Inf before a first message)",
    ["symbol"],
)
MESSAGES = Counter("aether_market_messages", "Market-data events received by the feed", ["source", "kind"])
RECONNECTS = Counter("aether_market_reconnects", "Reconnects of the market-data source", ["source"])
ERRORS = Counter(
    "aether_market_feed_errors",
    "Market-feed errors: refused subscriptions, skipped messages, failed writes and publishes",
    ["source", "kind"],
)


def decimal_text(value: Decimal) -> str:
    """A price as a plain decimal string without trailing zeros: ``105.000000000000`` → ``"105"``."""
    return format(value.normalize(), "f")


# --- Services (sync; the only writers of FeedStatus and of the feed's candles) ---------------------------


def is_transient(exc: BaseException) -> bool:
    """A write error that says nothing about the rows (database locked, connection lost): worth retrying."""
    return isinstance(exc, OperationalError | InterfaceError)


# --- The feed -------------------------------------------------------------------------------------------


@dataclass
class FeedReport:
    source: str
    events: int = 0
    ticks: int = 0
    bars_closed: int = 0
    bars_written: int = 0
    bars_dropped: int = 0  # bars the database refused (or kept failing on), given up on
    heartbeats: int = 0
    reconnects: int = 0
    rejected: int = 0
    published: int = 0
    publish_errors: int = 0
    went_stale: int = 0
    went_live: int = 0
    refused: list[str] = field(default_factory=list)
    stale_at_exit: list[str] = field(default_factory=list)
    unwritten_at_exit: int = 0  # closed bars still failing to write when the feed stopped

    def summary(self) -> str:
        refused = f" ({'; '.join(self.refused)})" if self.refused else ""
        return (
            f"run_market_feed ({self.source}): {self.events} events, {self.ticks} ticks "
            f"({self.published} published, {self.publish_errors} failed), {self.bars_closed} closed bars "
            f"({self.bars_written} rows written, {self.bars_dropped} dropped), {self.reconnects} reconnects, "
            f"{len(self.refused)} refused "
            f"subscriptions{refused}, {self.rejected} messages skipped, {self.went_stale} stale / "
            f"{self.went_live} live transitions"
        )


class MarketFeed:
    """Runs one source into the database, the channel layer and the metrics (see the module doc).

    ``clock`` is wall-clock time: staleness is about when this process last heard something, whatever the
    events' own times (a replay carries historical times)."""

    def __init__(
        self,
        *,
        instruments: Iterable[Instrument],
        timeframe: int,
        stale_seconds: float,
        clock: Callable[[], datetime] = timezone.now,
        check_every: float = 1.0,
        flush_every: float = 5.0,
        channel_layer=None,
        announce: Callable[[str], None] | None = None,
        write_attempts: int = WRITE_ATTEMPTS,
    ) -> None:
        self.instruments = {instrument.symbol: instrument for instrument in instruments}
        if not self.instruments:
            raise ValueError("the market feed needs at least one instrument")
        self.timeframe = check_timeframe(timeframe)
        self.stale_seconds = float(stale_seconds)
        self.clock = clock
        self.check_every = check_every
        self.flush_every = flush_every
        self.channel_layer = channel_layer
        self.announce = announce
        if write_attempts < 1:
            raise ValueError("write_attempts must be at least 1")
        self.write_attempts = write_attempts
        self.tracker: StalenessTracker | None = None
        self.report = FeedReport(source="?")
        self._seen: dict[str, tuple[datetime, Decimal | None]] = {}
        self._forming: dict[str, CandleRow] = {}
        # closed bars whose write failed for a transient reason: symbol → open time → (row, failed attempts)
        self._unwritten: dict[str, dict[datetime, tuple[CandleRow, int]]] = {}
        self._last_flush = 0.0
        self._source_name = "?"
        self._store_as: str | None = None

    # -- lifecycle --

    async def run(self, source: MarketDataSource) -> FeedReport:
        """Consume ``source`` until it ends or is closed; then flush, mark every pair stale (nothing keeps
        them current any more) and return the report."""
        self._source_name = source.name
        self._store_as = source.store_as
        if self._store_as is not None and self._store_as not in Candle.Source.values:
            raise ValueError(f"source {source.name}: unknown candle source {self._store_as!r}")
        self.report = FeedReport(source=source.name)
        layer = self.channel_layer if self.channel_layer is not None else get_channel_layer()
        if layer is None:
            raise ImproperlyConfigured("CHANNEL_LAYERS has no default layer: ticks could not be published")
        self.channel_layer = layer
        if isinstance(layer, InMemoryChannelLayer):
            if self.announce is not None:
                self.announce(EMBEDDED_NOTICE)
            else:
                logger.warning(EMBEDDED_NOTICE)
        stored = await sync_to_async(feed_statuses_prepare)(instruments=list(self.instruments.values()))
        self.tracker = StalenessTracker(self.stale_seconds, self.instruments, clock=self.clock, stale=stored)
        self._update_gauges()
        self._last_flush = time.monotonic()
        watcher = asyncio.create_task(self._watch())
        try:
            async for event in source:
                await self._on_event(event)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            try:
                await self._flush()
            except DatabaseError:
                logger.exception("market feed: the last status write failed")
            self.report.unwritten_at_exit = sum(len(rows) for rows in self._unwritten.values())
            if self.report.unwritten_at_exit:
                logger.error(
                    "market feed: stopping with %d closed bar(s) not stored (the database kept failing)",
                    self.report.unwritten_at_exit,
                )
            await self._apply(self.tracker.force_stale(), reason="the market feed stopped")
            self._update_gauges()
            self.report.stale_at_exit = [s for s in self.tracker.symbols if self.tracker.reported_stale(s)]
        return self.report

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.check_every)
            try:
                await self._apply(self.tracker.check())
                if time.monotonic() - self._last_flush >= self.flush_every:
                    await self._flush()
            except DatabaseError:
                logger.exception("market feed: database write failed; retrying in %s s", self.check_every)
                ERRORS.labels(self._source_name, "database").inc()
            self._update_gauges()

    # -- events --

    async def _on_event(self, event: Event) -> None:
        report = self.report
        report.events += 1
        name = self._source_name
        now = self.clock()
        match event:
            case Tick():
                if not self._known(event.symbol):
                    return
                MESSAGES.labels(name, "tick").inc()
                report.ticks += 1
                await self._saw(event.symbol, now, event.price)
                await self._publish(event, now)
            case Bar():
                if not self._known(event.symbol):
                    return
                if event.timeframe != self.timeframe:
                    report.rejected += 1
                    ERRORS.labels(name, "unexpected").inc()
                    logger.warning("market feed: %s bar of %sm ignored", event.symbol, event.timeframe)
                    return
                MESSAGES.labels(name, "bar_closed" if event.closed else "bar_forming").inc()
                await self._saw(event.symbol, now, None)
                await self._on_bar(event)
            case Heartbeat():
                MESSAGES.labels(name, "heartbeat").inc()
                report.heartbeats += 1
                for symbol in event.symbols:
                    if symbol in self.instruments:
                        await self._saw(symbol, now, None)
            case Disconnected():
                if event.retry_in is not None:
                    RECONNECTS.labels(name).inc()
                    report.reconnects += 1
            case Connected():
                MESSAGES.labels(name, "connected").inc()
            case SubscriptionRefused():
                ERRORS.labels(name, "subscription_refused").inc()
                report.refused.append(f"{event.symbol} {event.channel}: {event.error}")
                logger.error(
                    "market feed: %s %s refused by the source (%s); it stays stale",
                    event.symbol,
                    event.channel,
                    event.error,
                )
            case Rejected():
                ERRORS.labels(name, event.kind).inc()
                report.rejected += 1

    def _known(self, symbol: str) -> bool:
        if symbol in self.instruments:
            return True
        self.report.rejected += 1
        ERRORS.labels(self._source_name, "unexpected").inc()
        logger.warning("market feed: event for %s, which this feed does not trade; ignored", symbol)
        return False

    async def _saw(self, symbol: str, now: datetime, price: Decimal | None) -> None:
        tracker = self.tracker
        was_stale = tracker.reported_stale(symbol)
        tracker.seen(symbol, now)
        previous = self._seen.get(symbol)
        if price is None and previous is not None:
            price = previous[1]
        self._seen[symbol] = (now, price)
        if was_stale:
            await self._apply(tracker.check(now))

    async def _on_bar(self, bar: Bar) -> None:
        if self._store_as is None:
            if bar.closed:
                self.report.bars_closed += 1
            return
        symbol, row = bar.symbol, bar.row
        if not bar.closed:
            self._forming[symbol] = row
            return
        self.report.bars_closed += 1
        forming = self._forming.get(symbol)
        if forming is not None and forming.open_time <= row.open_time:
            del self._forming[symbol]
        await self._write(symbol, [row])

    async def _store(self, symbol: str, rows: list[CandleRow]) -> UpsertResult:
        return await sync_to_async(feed_bars_store)(
            instrument=self.instruments[symbol], timeframe=self.timeframe, rows=rows, source=self._store_as
        )

    async def _write(self, symbol: str, rows: list[CandleRow]) -> None:
        """Store ``rows`` with the symbol's bars still unwritten, in one batch. If the database refuses it,
        retry the rows one at a time: a row refused on its own is dropped, so it cannot block the others;
        a row that failed for a transient reason is kept for the next write, at most ``write_attempts``
        times. A forming row is never kept (the next update supersedes it)."""
        pending = self._unwritten.pop(symbol, {})
        for row in rows:
            pending[row.open_time] = (row, 0)  # a new version of a bar starts its count again
        if not pending:
            return
        batch = [pending[moment][0] for moment in sorted(pending)]
        try:
            result = await self._store(symbol, batch)
        except Exception as exc:  # the database, or a value it cannot take: must not stop the feed
            ERRORS.labels(self._source_name, "database").inc()
            if is_transient(exc):
                logger.warning(
                    "market feed: could not store %d %s bar(s) (%s: %s); will retry",
                    len(batch),
                    symbol,
                    type(exc).__name__,
                    exc,
                )
                for row, failures in pending.values():
                    self._keep(symbol, row, failures + 1, exc)
                return
            logger.warning(
                "market feed: the database refused %d %s bar(s) (%s: %s); retrying them one at a time",
                len(batch),
                symbol,
                type(exc).__name__,
                exc,
            )
            await self._write_each(symbol, pending)
            return
        self.report.bars_written += result.written

    async def _write_each(self, symbol: str, pending: dict[datetime, tuple[CandleRow, int]]) -> None:
        for moment in sorted(pending):
            row, failures = pending[moment]
            try:
                result = await self._store(symbol, [row])
            except Exception as exc:
                if is_transient(exc):
                    self._keep(symbol, row, failures + 1, exc)
                else:
                    self._drop(symbol, row, exc, attempts=failures + 1)
                continue
            self.report.bars_written += result.written

    def _keep(self, symbol: str, row: CandleRow, failures: int, exc: BaseException) -> None:
        if not row.closed:
            return  # superseded by the next update of the forming bar
        if failures >= self.write_attempts:
            self._drop(symbol, row, exc, attempts=failures)
            return
        self._unwritten.setdefault(symbol, {})[row.open_time] = (row, failures)

    def _drop(self, symbol: str, row: CandleRow, exc: BaseException, *, attempts: int) -> None:
        self.report.bars_dropped += 1
        ERRORS.labels(self._source_name, "bar_dropped").inc()
        logger.error(
            "market feed: DROPPED the %s %s %sm bar at %s after %d failed attempt(s): %s: %s",
            "closed" if row.closed else "forming",
            symbol,
            self.timeframe,
            row.open_time.isoformat(),
            attempts,
            type(exc).__name__,
            exc,
        )

    async def _publish(self, tick: Tick, now: datetime) -> None:
        message = {
            "type": TICK_MESSAGE_TYPE,
            "symbol": tick.symbol,
            "price": decimal_text(tick.price),
            "bid": None if tick.bid is None else decimal_text(tick.bid),
            "ask": None if tick.ask is None else decimal_text(tick.ask),
            "time": tick.time.isoformat(),
            "received_at": now.isoformat(),
            "source": self._source_name,
        }
        try:
            await asyncio.wait_for(
                self.channel_layer.group_send(TICKS_GROUP, message), timeout=PUBLISH_TIMEOUT_SECONDS
            )
        except Exception as exc:  # a channel layer error (Redis down, timeout) must not stop the feed
            self.report.publish_errors += 1
            ERRORS.labels(self._source_name, "publish").inc()
            if self.report.publish_errors == 1 or self.report.publish_errors % 100 == 0:
                logger.error(
                    "market feed: publishing ticks failed (%d so far): %s: %s",
                    self.report.publish_errors,
                    type(exc).__name__,
                    exc,
                )
            return
        self.report.published += 1

    # -- writes --

    async def _flush(self) -> None:
        self._last_flush = time.monotonic()
        seen, self._seen = self._seen, {}
        if seen:
            by_id = {self.instruments[symbol].pk: value for symbol, value in seen.items()}
            try:
                await sync_to_async(feed_status_touch)(seen=by_id)
            except DatabaseError:
                for symbol, value in seen.items():
                    self._seen.setdefault(symbol, value)
                raise
        for symbol in set(self._forming) | set(self._unwritten):
            forming = self._forming.pop(symbol, None)
            await self._write(symbol, [] if forming is None else [forming])

    async def _apply(self, changes: list[StaleChange], reason: str | None = None) -> None:
        for change in changes:
            if change.stale:
                why = reason or f"no message for more than {self.stale_seconds:g} s"
            else:
                why = reason or "messages again"
            try:
                await sync_to_async(feed_status_set_stale)(
                    actor=ACTOR,
                    instrument=self.instruments[change.symbol],
                    stale=change.stale,
                    at=change.at,
                    last_seen=change.last_seen,
                    window_seconds=self.stale_seconds,
                    reason=why,
                )
            except DatabaseError:
                self.tracker.retract(change)
                ERRORS.labels(self._source_name, "database").inc()
                logger.exception(
                    "market feed: could not record %s as stale=%s; will retry", change.symbol, change.stale
                )
                continue
            if change.stale:
                self.report.went_stale += 1
                logger.warning("market feed: %s is STALE: %s", change.symbol, why)
            else:
                self.report.went_live += 1
                logger.info("market feed: %s is live again", change.symbol)
            STALE_GAUGE.labels(change.symbol).set(1 if change.stale else 0)

    def _update_gauges(self) -> None:
        tracker = self.tracker
        if tracker is None:
            return
        now = self.clock()
        for symbol in tracker.symbols:
            STALE_GAUGE.labels(symbol).set(1 if tracker.reported_stale(symbol) else 0)
            age = tracker.age(symbol, now)
            AGE_GAUGE.labels(symbol).set(math.inf if age is None else age)
