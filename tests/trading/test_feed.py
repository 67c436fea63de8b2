"""The live market feed. Staleness and OHLC closing as plain values; then the real Kraken WS v2 source
against a fake Kraken server on 127.0.0.1, through the Django-side feed (candles, FeedStatus, audit, ticks,
metrics)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync, sync_to_async
from channels.layers import InMemoryChannelLayer
from django.db import OperationalError

from governance.models import AuditEvent
from tests.fakes.kraken_ws import FakeKrakenWS
from trading import kraken_pairs
from trading.candles import CandleRow, make_row
from trading.marketdata import feed_service
from trading.marketdata.feed import (
    Bar,
    Heartbeat,
    Rejected,
    StalenessTracker,
    Subscribed,
    SubscriptionRefused,
    Tick,
    v2_symbol,
)
from trading.marketdata.feed_service import EMBEDDED_NOTICE, TICKS_GROUP, MarketFeed
from trading.marketdata.kraken_ws import Backoff, KrakenWSSource, ReconnectPolicy
from trading.marketdata.kraken_ws_messages import OhlcCloser
from trading.models import Candle, FeedStatus
from trading.selectors import closed_candles
from trading.services import market as trading_services

RECORDED = Path(__file__).resolve().parents[3] / "shared" / "data" / "kraken" / "recorded_2026-09.json"
needs_recording = pytest.mark.skipif(
    not RECORDED.exists(), reason=f"needs the recorded Kraken messages at {RECORDED} (the shared data folder)"
)

T0 = datetime(2026, 9, 25, 17, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)
FAST = ReconnectPolicy(base=0.02, cap=0.05, healthy_after=1.0, maintenance_floor=0.02)


def row(begin, o, h, low, c, volume="1", trades=1, minutes=60, closed=False):
    return make_row(
        open_time=begin, open=o, high=h, low=low, close=c, volume=volume, trades=trades, minutes=minutes,
        closed=closed,
    )  # fmt: skip


class Clock:
    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


# --- Pure: symbols, staleness, OHLC closing, backoff -------------------------------------------------------


def test_legacy_names_map_to_websocket_v2_names():
    assert v2_symbol("XBT/USD") == "BTC/USD"
    assert v2_symbol("xdg/usd") == "DOGE/USD"
    assert v2_symbol("ETH/USD") == "ETH/USD"
    with pytest.raises(ValueError, match="BASE/QUOTE"):
        v2_symbol("XBTUSD")


def test_v2_names_use_the_one_alias_map_of_kraken_pairs(monkeypatch):
    monkeypatch.setitem(kraken_pairs.ASSET_ALIASES, "XZZ", "ZZZ")  # a new alias there applies here too
    assert v2_symbol("XZZ/USD") == "ZZZ/USD"
    assert v2_symbol("ETH/XBT") == "ETH/BTC"


def test_staleness_tracker_reports_each_transition_once():
    clock = Clock(T0)
    tracker = StalenessTracker(90, ["BTC/USD", "ETH/USD"], clock=clock)
    assert tracker.stale_symbols() == {"BTC/USD", "ETH/USD"}
    assert tracker.check() == []  # stale from the start: no transition to report

    tracker.seen("BTC/USD", clock.advance(1))
    [change] = tracker.check()
    assert (change.symbol, change.stale, change.last_seen) == ("BTC/USD", False, T0 + timedelta(seconds=1))
    assert tracker.check() == []

    clock.advance(90)  # exactly the window: still live
    assert tracker.check() == []
    assert tracker.age("BTC/USD") == 90
    clock.advance(0.5)
    [change] = tracker.check()
    assert (change.symbol, change.stale) == ("BTC/USD", True)
    assert tracker.check() == []
    assert tracker.age("ETH/USD") is None

    tracker.seen("BTC/USD")
    assert [(c.symbol, c.stale) for c in tracker.check()] == [("BTC/USD", False)]
    tracker.seen("NOT/TRACKED")  # ignored
    assert tracker.symbols == ("BTC/USD", "ETH/USD")


def test_staleness_tracker_gives_a_restored_live_symbol_one_window_and_can_retract():
    clock = Clock(T0)
    tracker = StalenessTracker(10, ["BTC/USD", "ETH/USD"], clock=clock, stale={"BTC/USD": False})
    clock.advance(9)
    assert tracker.check() == []  # BTC was live at the last run: one window from start before it goes stale
    clock.advance(2)
    [change] = tracker.check()
    assert (change.symbol, change.stale, change.last_seen) == ("BTC/USD", True, None)
    tracker.retract(change)  # e.g. the database write failed
    assert [c.symbol for c in tracker.check()] == ["BTC/USD"]

    tracker.seen("ETH/USD")
    tracker.check()
    assert [(c.symbol, c.stale) for c in tracker.force_stale()] == [("ETH/USD", True)]
    assert tracker.force_stale() == []
    with pytest.raises(ValueError, match="positive"):
        StalenessTracker(0, ["BTC/USD"])


def test_ohlc_bar_closes_when_the_next_interval_begins():
    closer = OhlcCloser("BTC/USD", 60)
    bars, rejection = closer.update(row(T0, 100, 101, 99, 100.5, volume="1", trades=1))
    assert rejection is None
    assert [bar.closed for bar in bars] == [False]
    bars, _ = closer.update(row(T0, 100, 103, 98, 102, volume="2.5", trades=4))
    assert [(bar.closed, bar.row.high) for bar in bars] == [(False, Decimal(103))]

    bars, rejection = closer.update(row(T0 + HOUR, 102, 102, 102, 102))
    assert rejection is None
    closed, forming = bars
    assert closed.closed
    assert closed.row.open_time == T0
    assert (closed.row.open, closed.row.high, closed.row.low, closed.row.close) == (100, 103, 98, 102)
    assert (closed.row.volume, closed.row.trades) == (Decimal("2.5"), 4)
    assert not forming.closed
    assert forming.row.open_time == T0 + HOUR

    # a gap (no trade for an hour) closes the forming bar just the same
    bars, _ = closer.update(row(T0 + 3 * HOUR, 110, 111, 109, 110))
    assert [(bar.row.open_time, bar.closed) for bar in bars] == [(T0 + HOUR, True), (T0 + 3 * HOUR, False)]


def test_ohlc_closer_skips_duplicates_regressions_and_late_bars():
    closer = OhlcCloser("BTC/USD", 60)
    closer.update(row(T0, 100, 103, 98, 102, volume="2", trades=4))
    bars, rejection = closer.update(row(T0, 100, 103, 98, 102, volume="2", trades=4))
    assert bars == []
    assert rejection.kind == "duplicate"
    bars, rejection = closer.update(row(T0, 100, 101, 99, 100, volume="1", trades=2))  # older state, late
    assert bars == []
    assert rejection.kind == "out_of_order"
    closer.update(row(T0 + HOUR, 102, 102, 102, 102))
    bars, rejection = closer.update(row(T0, 100, 200, 50, 150, volume="9", trades=9))  # T0 is closed
    assert bars == []
    assert rejection.kind == "out_of_order"
    bars, rejection = closer.update(row(T0 - HOUR, 90, 91, 89, 90))
    assert bars == []
    assert rejection.kind == "out_of_order"
    assert closer.forming.open_time == T0 + HOUR
    assert closer.last_closed == T0


def test_ohlc_snapshot_closes_rows_older_than_the_current_interval():
    closer = OhlcCloser("BTC/USD", 60, close_grace=30)
    rows = [row(T0, 1, 2, 1, 2), row(T0 + HOUR, 2, 3, 2, 3), row(T0 + 2 * HOUR, 3, 3, 3, 3)]
    bars = closer.snapshot(rows, now=T0 + 2 * HOUR + timedelta(minutes=5))
    assert [(bar.row.open_time, bar.closed) for bar in bars] == [
        (T0, True),
        (T0 + HOUR, True),
        (T0 + 2 * HOUR, False),
    ]
    # after a reconnect the snapshot repeats closed bars: not emitted twice; the newest row is closed
    # when its interval ended longer than the grace ago (no trade since)
    closer.reset()
    bars = closer.snapshot(rows, now=T0 + 3 * HOUR + timedelta(seconds=31))
    assert [(bar.row.open_time, bar.closed) for bar in bars] == [(T0 + 2 * HOUR, True)]
    assert closer.forming is None


def test_backoff_is_exponential_with_full_jitter_a_reset_and_a_budget():
    now = [0.0]
    draws = iter([1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 0.5])
    policy = ReconnectPolicy(
        base=1, cap=4, healthy_after=60, budget=5, budget_window=600, maintenance_floor=5
    )
    backoff = Backoff(policy, rng=lambda: next(draws), monotonic=lambda: now[0])
    delays = []
    for _ in range(4):
        backoff.attempt()
        delays.append(backoff.delay(connected_for=None))
    assert delays == [1, 2, 4, 4]  # the ceiling doubles up to the cap; rng() = 1 draws the ceiling
    backoff.attempt()
    assert backoff.delay(connected_for=None, maintenance=True) == 600  # 5 attempts in 10 min: wait it out
    now[0] = 700.0
    backoff.attempt()
    assert backoff.delay(connected_for=61) == 1  # a healthy connection reset the exponent
    assert backoff.delay(connected_for=1, maintenance=True) == 5  # never under 5 s during maintenance


def ohlc_frame(**fields) -> str:
    """An ohlc update for BTC/USD (hourly, at T0) as raw text; a field given as the string ``"<raw>..."``
    is written unquoted, so a test can send what JSON encoders refuse (``Infinity``, ``1e999999999999``)."""
    candle = FakeKrakenWS.candle("BTC/USD", begin=T0, interval=60, open=100, high=101, low=99, close=100)
    candle.update(fields)
    text = json.dumps({"channel": "ohlc", "type": "update", "data": [candle]})
    for value in fields.values():
        if isinstance(value, str) and value.startswith("<raw>"):
            text = text.replace(json.dumps(value), value.removeprefix("<raw>"))
    return text


BAD_FRAMES = [
    (ohlc_frame(trades="<raw>Infinity"), "not_finite"),  # int(Infinity): OverflowError
    (ohlc_frame(trades="<raw>-Infinity"), "not_finite"),
    (ohlc_frame(high="<raw>1e999999999999"), "malformed"),  # the exponent overflows: decimal.Overflow
    (ohlc_frame(trades="<raw>1e999999999999"), "malformed"),
    (ohlc_frame(trades="<raw>2.5"), "malformed"),
    (ohlc_frame(interval_begin="<raw>[1, 2]"), "malformed"),
    ('{"method": "subscribe", "success": false, "error": "x", "req_id": [1]}', "kraken_error"),
    (
        '{"method": "subscribe", "success": false, "result": {"channel": ["ohlc"]}, "req_id": {}}',
        "kraken_error",
    ),
    ("[" * 100_000, "malformed"),  # nesting too deep for the JSON parser: RecursionError
]


@pytest.mark.parametrize(("frame", "kind"), BAD_FRAMES, ids=range(len(BAD_FRAMES)))
def test_a_malformed_frame_is_one_rejected_event_never_an_exception(frame, kind):
    source = KrakenWSSource(url="ws://127.0.0.1:9/v2", symbols=["BTC/USD"], timeframe=60, clock=lambda: T0)
    [event] = source.handle_message(frame)
    assert isinstance(event, Rejected)
    assert event.kind == kind
    assert source.stats.rejected == 1


def test_a_subscribe_answer_with_a_req_id_that_is_not_ours_is_acknowledged_under_an_unknown_channel():
    source = KrakenWSSource(url="ws://127.0.0.1:9/v2", symbols=["BTC/USD"], timeframe=60, clock=lambda: T0)
    [ack] = source.handle_message(
        '{"method": "subscribe", "success": true, "symbol": "BTC/USD", "req_id": [1]}'
    )
    assert isinstance(ack, Subscribed)
    assert (ack.channel, ack.symbol) == ("?", "BTC/USD")
    assert source.stats.rejected == 0


def test_any_error_while_handling_a_frame_becomes_a_rejected_event(monkeypatch, caplog):
    source = KrakenWSSource(url="ws://127.0.0.1:9/v2", symbols=["BTC/USD"], timeframe=60, clock=lambda: T0)

    def broken(*args):
        raise KeyError("a bug in a handler")

    monkeypatch.setattr(source, "_on_ticker", broken)
    [event] = source.handle_message(json.dumps(FakeKrakenWS.ticker_message("BTC/USD", last="100")))
    assert isinstance(event, Rejected)
    assert (event.kind, event.reason) == ("unhandled", "KeyError: 'a bug in a handler'")
    assert source.stats.rejected == 1
    assert "could not be handled" in caplog.text
    [bar] = source.handle_message(ohlc_frame())  # the next frame is handled as usual
    assert isinstance(bar, Bar)


@needs_recording
def test_recorded_kraken_messages_parse_into_events():
    recorded = json.loads(RECORDED.read_text())["websocket_v2"]
    source = KrakenWSSource(url="ws://127.0.0.1:9/v2", symbols=["XBT/USD"], timeframe=1, clock=lambda: T0)
    assert source.symbols == ("BTC/USD",)
    assert source.handle_message(json.dumps(recorded["status_on_connect"])) == []
    [ack] = source.handle_message(json.dumps(recorded["subscribe_ack"]))
    assert isinstance(ack, Subscribed)
    assert (ack.channel, ack.symbol) == ("trade", "BTC/USD")
    [refused] = source.handle_message(json.dumps(recorded["subscribe_refused_legacy_name"]))
    assert isinstance(refused, SubscriptionRefused)
    assert (refused.symbol, refused.error) == ("XBT/USD", "Currency pair not supported XBT/USD")
    [tick] = source.handle_message(json.dumps(recorded["ticker"]))
    assert isinstance(tick, Tick)
    assert (tick.price, tick.bid, tick.ask) == (Decimal("83744.3"), Decimal("83744.2"), Decimal("83744.3"))
    [bar] = source.handle_message(json.dumps(recorded["ohlc"]))
    assert isinstance(bar, Bar)
    assert not bar.closed
    assert bar.row.open_time == datetime(2026, 9, 25, 17, 48, tzinfo=UTC)
    assert (bar.row.open, bar.row.close, bar.row.trades) == (Decimal("83729.5"), Decimal("83744.3"), 33)
    assert source.handle_message(json.dumps(recorded["trade"])) == []  # not subscribed: ignored
    [beat] = source.handle_message('{"channel": "heartbeat"}')
    assert isinstance(beat, Heartbeat)
    [rejected] = source.handle_message(json.dumps(recorded["private_refused_on_public_host"]))
    assert isinstance(rejected, Rejected)
    assert rejected.kind == "kraken_error"


@needs_recording
def test_fake_server_speaks_the_recorded_shapes():
    recorded = json.loads(RECORDED.read_text())["websocket_v2"]
    assert FakeKrakenWS.status_message().keys() == recorded["status_on_connect"].keys()
    assert FakeKrakenWS.status_message()["data"][0].keys() == recorded["status_on_connect"]["data"][0].keys()
    assert FakeKrakenWS.refusal("XBT/USD").keys() == recorded["subscribe_refused_legacy_name"].keys()
    assert FakeKrakenWS.refusal("XBT/USD")["error"] == recorded["subscribe_refused_legacy_name"]["error"]
    ticker = FakeKrakenWS.ticker_message("BTC/USD", last="83744.3")
    assert ticker["data"][0].keys() == recorded["ticker"]["data"][0].keys()
    candle = FakeKrakenWS.candle("BTC/USD", begin=T0, interval=1, open=1, high=1, low=1, close=1)
    assert candle.keys() == recorded["ohlc"]["data"][0].keys()
    assert candle["interval_begin"] == "2026-09-25T17:00:00.000000000Z"


# --- Against the fake Kraken server, through the Django-side feed ------------------------------------------


@dataclass
class Harness:
    fake: FakeKrakenWS
    source: KrakenWSSource
    feed: MarketFeed
    layer: InMemoryChannelLayer
    task: asyncio.Task
    announced: list[str] = field(default_factory=list)


@contextlib.asynccontextmanager
async def running_feed(
    universe, *, symbols=("BTC/USD",), stale_seconds=30.0, refuse=("XBT/USD",), clock=None
):
    async with FakeKrakenWS(refuse=refuse) as fake:
        source = KrakenWSSource(
            url=fake.url,
            symbols=symbols,
            timeframe=60,
            policy=FAST,
            idle_timeout=5,
            **({"clock": clock} if clock else {}),
        )
        instruments = [universe[v2_symbol(symbol)] for symbol in symbols]
        layer = InMemoryChannelLayer()
        announced: list[str] = []
        feed = MarketFeed(
            instruments=instruments,
            timeframe=60,
            stale_seconds=stale_seconds,
            check_every=0.02,
            flush_every=0.05,
            channel_layer=layer,
            announce=announced.append,
        )
        task = asyncio.create_task(feed.run(source))
        harness = Harness(fake, source, feed, layer, task, announced)
        try:
            await until(lambda: len(source.subscriptions) + len(feed.report.refused) >= 2 * len(symbols))
            yield harness
        finally:
            await source.close()
            await asyncio.wait_for(task, 5)


async def until(condition, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.01)


async def until_db(query, timeout: float = 5.0):
    """Poll a database query (run where the test's transaction lives) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = await sync_to_async(query)()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"database condition not met in time (last: {value!r})")
        await asyncio.sleep(0.02)


def feed_status(symbol: str) -> FeedStatus:
    return FeedStatus.objects.get(instrument__symbol=symbol)


def audit_count(action: str, symbol: str) -> int:
    return sum(1 for event in AuditEvent.objects.filter(action=action) if event.details["symbol"] == symbol)


FEED_METRICS = (
    feed_service.STALE_GAUGE,
    feed_service.AGE_GAUGE,
    feed_service.MESSAGES,
    feed_service.RECONNECTS,
    feed_service.ERRORS,
)


def metric(name: str, **labels) -> float | None:
    """A sample of the feed's own metrics. Not ``REGISTRY.get_sample_value``: that collects every registered
    collector, some of which read the database, which cannot be done from the event loop's thread."""
    for collector in FEED_METRICS:
        for family in collector.collect():
            for sample in family.samples:
                if sample.name == name and sample.labels == labels:
                    return sample.value
    return None


@pytest.mark.timeout(15)
def test_subscribes_v2_names_and_ticks_update_feed_status_and_reach_the_channel_layer(universe):
    async def scenario():
        async with running_feed(universe, symbols=("XBT/USD", "ETH/USD")) as h:
            assert h.fake.subscribed("ticker") == ["BTC/USD", "ETH/USD"]
            assert h.fake.subscribed("ohlc") == ["BTC/USD", "ETH/USD"]
            assert [p.get("interval") for p in h.fake.subscribe_requests if p["channel"] == "ohlc"] == [60]
            assert "XBT/USD" not in h.fake.subscribed("ticker") + h.fake.subscribed("ohlc")
            assert h.announced == [EMBEDDED_NOTICE]

            listener = await h.layer.new_channel()
            await h.layer.group_add(TICKS_GROUP, listener)
            await h.fake.ticker("BTC/USD", last="83744.3", bid="83744.2", ask="83744.4")
            message = await asyncio.wait_for(h.layer.receive(listener), 5)
            assert message["type"] == "market.tick"
            assert (message["symbol"], message["price"], message["bid"], message["ask"]) == (
                "BTC/USD",
                "83744.3",
                "83744.2",
                "83744.4",
            )
            assert message["source"] == "kraken_ws"

            status = await until_db(
                lambda: feed_status("BTC/USD") if feed_status("BTC/USD").last_price else None
            )
            assert status.last_price == Decimal("83744.3")
            assert not status.stale
            assert status.stale_since is None
            assert status.last_message_at is not None
            assert await sync_to_async(feed_status)("ETH/USD") is not None
            assert (await sync_to_async(feed_status)("ETH/USD")).stale  # nothing heard for ETH yet
            assert await sync_to_async(audit_count)("market.live", "BTC/USD") == 1
            assert metric("aether_market_stale", symbol="BTC/USD") == 0
            assert metric("aether_market_stale", symbol="ETH/USD") == 1
        return h.task.result()

    report = async_to_sync(scenario)()
    assert report.ticks == 1
    assert report.published == 1
    assert feed_status("BTC/USD").stale  # the feed stopped: nothing keeps the price current any more
    assert audit_count("market.stale", "BTC/USD") == 1


@pytest.mark.timeout(15)
def test_ohlc_updates_store_one_closed_candle_per_interval_and_one_forming(universe):
    btc = universe["BTC/USD"]

    async def scenario():
        async with running_feed(universe) as h:
            candle = {"interval": 60}
            await h.fake.ohlc(
                "BTC/USD", begin=T0, open=100, high=101, low=99, close=100, volume="1", trades=1, **candle
            )
            await h.fake.ohlc(
                "BTC/USD", begin=T0, open=100, high=105, low=99, close=104, volume="2", trades=5, **candle
            )
            await h.fake.ohlc(
                "BTC/USD", begin=T0, open=100, high=105, low=97, close=98, volume="3", trades=9, **candle
            )
            forming = await until_db(
                lambda: Candle.objects.filter(instrument=btc, timeframe=60, open_time=T0, low=97).first()
            )
            assert not forming.closed
            assert await sync_to_async(lambda: list(closed_candles(instrument=btc, timeframe=60)))() == []

            await h.fake.ohlc(
                "BTC/USD", begin=T0 + HOUR, open=98, high=99, low=98, close=99, trades=1, **candle
            )
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0, closed=True).exists())
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0 + HOUR).exists())
            await h.fake.ohlc("BTC/USD", begin=T0 + 2 * HOUR, open=99, high=99, low=99, close=99, **candle)
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0 + 2 * HOUR).exists())

    async_to_sync(scenario)()
    rows = list(Candle.objects.filter(instrument=btc, timeframe=60).order_by("open_time"))
    assert [(c.open_time, c.closed) for c in rows] == [(T0, True), (T0 + HOUR, True), (T0 + 2 * HOUR, False)]
    first = rows[0]
    assert (first.open, first.high, first.low, first.close, first.volume, first.trades) == (
        100,
        105,
        97,
        98,
        3,
        9,
    )
    assert first.source == Candle.Source.KRAKEN_WS
    assert [c.open_time for c in closed_candles(instrument=btc, timeframe=60)] == [T0, T0 + HOUR]


@pytest.mark.timeout(15)
def test_reconnects_with_backoff_resubscribes_and_the_snapshot_closes_the_interrupted_bar(universe):
    btc = universe["BTC/USD"]
    reconnects_before = metric("aether_market_reconnects_total", source="kraken_ws") or 0

    async def scenario():
        clock = Clock(T0 + HOUR + timedelta(minutes=10))
        async with running_feed(universe, clock=clock) as h:
            await h.fake.ticker("BTC/USD", last="100")
            await h.fake.ohlc("BTC/USD", begin=T0, interval=60, open=100, high=101, low=99, close=100)
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0).exists())
            # While the socket is down, T0 ends (more trades in it) and T0+1h begins.
            h.fake.ohlc_snapshot["BTC/USD"] = [
                FakeKrakenWS.candle(
                    "BTC/USD",
                    begin=T0,
                    interval=60,
                    open=100,
                    high=107,
                    low=95,
                    close=106,
                    volume="8",
                    trades=30,
                ),
                FakeKrakenWS.candle(
                    "BTC/USD", begin=T0 + HOUR, interval=60, open=106, high=108, low=106, close=107
                ),
            ]
            await h.fake.drop()
            await until(lambda: h.fake.connections == 2 and len(h.source.subscriptions) == 2)
            assert h.fake.subscribed("ticker") == ["BTC/USD", "BTC/USD"]
            assert h.fake.subscribed("ohlc") == ["BTC/USD", "BTC/USD"]
            await h.fake.ticker("BTC/USD", last="107.5")
            await until_db(lambda: feed_status("BTC/USD").last_price == Decimal("107.5"))
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0 + HOUR).exists())
            assert h.source.stats.connections == 2
        return h.task.result()

    report = async_to_sync(scenario)()
    assert report.reconnects == 1
    assert metric("aether_market_reconnects_total", source="kraken_ws") == reconnects_before + 1
    rows = list(Candle.objects.filter(instrument=btc, timeframe=60).order_by("open_time"))
    assert [(c.open_time, c.closed) for c in rows] == [(T0, True), (T0 + HOUR, False)]
    assert (rows[0].high, rows[0].low, rows[0].close, rows[0].trades) == (107, 95, 106, 30)


@pytest.mark.timeout(15)
def test_staleness_marks_feed_status_exports_the_gauge_and_audits_each_transition(universe):
    async def scenario():
        async with running_feed(universe, stale_seconds=0.5) as h:
            await h.fake.ticker("BTC/USD", last="100")
            await until_db(lambda: not feed_status("BTC/USD").stale)
            assert metric("aether_market_stale", symbol="BTC/USD") == 0

            # heartbeats keep a quiet market live: the connection is there, nothing traded
            for _ in range(10):
                await h.fake.heartbeat()
                await asyncio.sleep(0.05)
            assert not (await sync_to_async(feed_status)("BTC/USD")).stale
            assert metric("aether_market_last_message_age_seconds", symbol="BTC/USD") < 0.5

            status = await until_db(lambda: feed_status("BTC/USD") if feed_status("BTC/USD").stale else None)
            assert status.stale_since is not None
            assert metric("aether_market_stale", symbol="BTC/USD") == 1
            assert metric("aether_market_last_message_age_seconds", symbol="BTC/USD") > 0.5
            assert await sync_to_async(audit_count)("market.stale", "BTC/USD") == 1
            await asyncio.sleep(0.2)  # still stale: no second event
            assert await sync_to_async(audit_count)("market.stale", "BTC/USD") == 1

            await h.fake.ticker("BTC/USD", last="101")
            status = await until_db(
                lambda: feed_status("BTC/USD") if not feed_status("BTC/USD").stale else None
            )
            assert status.stale_since is None
            assert metric("aether_market_stale", symbol="BTC/USD") == 0
            assert await sync_to_async(audit_count)("market.live", "BTC/USD") == 2

    async_to_sync(scenario)()
    event = AuditEvent.objects.filter(action="market.stale").order_by("seq").first()
    assert event.actor == "system:market_feed"
    assert event.target_type == "trading.feedstatus"
    assert event.details["reason"] == "no message for more than 0.5 s"


@pytest.mark.timeout(15)
def test_a_refused_subscription_is_an_error_and_its_pair_stays_stale(universe):
    refused_before = (
        metric("aether_market_feed_errors_total", source="kraken_ws", kind="subscription_refused") or 0
    )

    async def scenario():
        async with running_feed(
            universe, symbols=("BTC/USD", "SOL/USD"), stale_seconds=0.5, refuse=("XBT/USD", "SOL/USD")
        ) as h:
            assert h.feed.report.refused == [
                "SOL/USD ticker: Currency pair not supported SOL/USD",
                "SOL/USD ohlc: Currency pair not supported SOL/USD",
            ]
            for _ in range(8):
                await h.fake.heartbeat()
                await asyncio.sleep(0.05)
            assert not (await sync_to_async(feed_status)("BTC/USD")).stale
            assert (await sync_to_async(feed_status)("SOL/USD")).stale
            assert metric("aether_market_stale", symbol="SOL/USD") == 1

    async_to_sync(scenario)()
    after = metric("aether_market_feed_errors_total", source="kraken_ws", kind="subscription_refused")
    assert after == refused_before + 2
    assert audit_count("market.live", "SOL/USD") == 0


@pytest.mark.timeout(15)
def test_malformed_nan_duplicate_and_out_of_order_messages_never_corrupt_candles(universe):
    btc = universe["BTC/USD"]

    async def scenario():
        async with running_feed(universe) as h:
            fake = h.fake
            await fake.ohlc(
                "BTC/USD", begin=T0, interval=60, open=100, high=110, low=90, close=105, volume="5", trades=7
            )
            await fake.ohlc(
                "BTC/USD",
                begin=T0 + HOUR,
                interval=60,
                open=105,
                high=106,
                low=104,
                close=106,
                volume="2",
                trades=3,
            )
            await until_db(lambda: Candle.objects.filter(instrument=btc, open_time=T0, closed=True).exists())
            rejected = h.feed.report.rejected

            def ohlc_text(**fields) -> str:
                candle = FakeKrakenWS.candle(
                    "BTC/USD", begin=T0 + HOUR, interval=60, open=105, high=107, low=104, close=106
                )
                candle.update(fields)
                candle = {name: value for name, value in candle.items() if value is not None}
                return json.dumps({"channel": "ohlc", "type": "update", "data": [candle]}).replace(
                    '"NaN!"', "NaN"
                )

            bad = [
                "this is not json",
                '{"channel": "ohlc", "type": "update", "data": "nope"}',
                ohlc_text(high="NaN!"),
                ohlc_text(close=None),  # partial: no close
                '{"channel": "ticker", "data": [{"symbol": "BTC/USD", "last": NaN, "bid": 1}]}',
            ]
            for text in bad:
                await fake.send_raw(text)
            # inconsistent (low above high), another interval size, a duplicate, a regression, a closed bar
            await fake.ohlc("BTC/USD", begin=T0 + HOUR, interval=60, open=105, high=100, low=104, close=106)
            await fake.ohlc("BTC/USD", begin=T0 + HOUR, interval=5, open=105, high=107, low=104, close=106)
            await fake.ohlc(
                "BTC/USD",
                begin=T0 + HOUR,
                interval=60,
                open=105,
                high=106,
                low=104,
                close=106,
                volume="2",
                trades=3,
            )
            await fake.ohlc(
                "BTC/USD",
                begin=T0 + HOUR,
                interval=60,
                open=105,
                high=106,
                low=104,
                close=105,
                volume="1",
                trades=2,
            )
            await fake.ohlc(
                "BTC/USD", begin=T0, interval=60, open=1, high=1000, low=1, close=500, volume="99", trades=99
            )
            await until(lambda: h.feed.report.rejected >= rejected + 10)

            await fake.ohlc(
                "BTC/USD",
                begin=T0 + HOUR,
                interval=60,
                open=105,
                high=108,
                low=103,
                close=107,
                volume="4",
                trades=6,
            )
            await fake.ohlc(
                "BTC/USD", begin=T0 + 2 * HOUR, interval=60, open=107, high=107, low=107, close=107
            )
            await fake.ticker("BTC/USD", last="107")
            await until_db(
                lambda: Candle.objects.filter(instrument=btc, open_time=T0 + HOUR, closed=True).exists()
            )
            await until_db(lambda: feed_status("BTC/USD").last_price == Decimal("107"))
        return h.task.result()

    report = async_to_sync(scenario)()
    assert report.rejected == 10
    rows = {c.open_time: c for c in Candle.objects.filter(instrument=btc, timeframe=60)}
    first, second = rows[T0], rows[T0 + HOUR]

    def values(c):
        return (c.open, c.high, c.low, c.close, c.volume, c.trades, c.closed)

    assert values(first) == (100, 110, 90, 105, 5, 7, True)
    assert values(second) == (105, 108, 103, 107, 4, 6, True)
    assert sorted(rows) == [T0, T0 + HOUR, T0 + 2 * HOUR]


@pytest.mark.timeout(15)
def test_malformed_frames_never_end_the_live_feed(universe):
    unhandled_before = metric("aether_market_feed_errors_total", source="kraken_ws", kind="not_finite") or 0

    async def scenario():
        async with running_feed(universe) as h:
            for frame, _ in BAD_FRAMES:
                await h.fake.send_raw(frame)
            await h.fake.ticker("BTC/USD", last="123.5")
            await until_db(lambda: feed_status("BTC/USD").last_price == Decimal("123.5"))
            assert not h.task.done()
            assert h.fake.connections == 1  # not even a reconnect
            assert h.feed.report.rejected == len(BAD_FRAMES)
        return h.task.result()

    report = async_to_sync(scenario)()
    assert report.ticks == 1
    after = metric("aether_market_feed_errors_total", source="kraken_ws", kind="not_finite")
    assert after == unhandled_before + 2


# --- Storing bars: one bar the database refuses must not block the others ---------------------------------


class ScriptedSource:
    """Yields the given events, then ends (a live source as far as storing goes: ``store_as`` kraken_ws)."""

    name = "kraken_ws"
    store_as = "kraken_ws"

    def __init__(self, events) -> None:
        self.events = list(events)

    def __aiter__(self):
        return self._events()

    async def _events(self):
        for event in self.events:
            yield event
            await asyncio.sleep(0)

    async def close(self) -> None:
        pass


def run_scripted(universe, events, **options) -> tuple[MarketFeed, object]:
    feed = MarketFeed(
        instruments=[universe["BTC/USD"]],
        timeframe=60,
        stale_seconds=30,
        channel_layer=InMemoryChannelLayer(),
        announce=lambda line: None,
        **({"check_every": 600, "flush_every": 600} | options),  # no background flush: writes per bar
    )
    return feed, async_to_sync(feed.run)(ScriptedSource(events))


def closed_bar(hour: int, price: int = 100) -> Bar:
    return Bar("BTC/USD", 60, row(T0 + hour * HOUR, price, price + 1, price - 1, price, closed=True))


def test_a_bar_the_database_refuses_is_dropped_and_later_bars_are_stored(universe):
    btc = universe["BTC/USD"]
    dropped_before = metric("aether_market_feed_errors_total", source="kraken_ws", kind="bar_dropped") or 0
    # low = 0 breaks the candle table's check constraint (low > 0): the database refuses it, not our code
    refused = CandleRow(T0 + HOUR, Decimal(100), Decimal(101), Decimal(0), Decimal(100), Decimal(1), 1, True)
    forming = Bar("BTC/USD", 60, row(T0 + 5 * HOUR, 104, 105, 103, 104))
    events = [closed_bar(0), Bar("BTC/USD", 60, refused), closed_bar(2), closed_bar(3, 103), forming]
    feed, report = run_scripted(universe, events)

    stored = {c.open_time: c for c in Candle.objects.filter(instrument=btc, timeframe=60)}
    assert sorted(stored) == [T0, T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 5 * HOUR]
    assert [stored[t].closed for t in sorted(stored)] == [True, True, True, False]
    assert stored[T0 + 3 * HOUR].close == 103
    assert (report.bars_closed, report.bars_written, report.bars_dropped) == (4, 4, 1)
    assert report.unwritten_at_exit == 0
    assert feed._unwritten == {}
    assert "4 rows written, 1 dropped" in report.summary()
    after = metric("aether_market_feed_errors_total", source="kraken_ws", kind="bar_dropped")
    assert after == dropped_before + 1


def failing_upsert(monkeypatch, failures: int | None):
    """``candles_upsert`` raising "database is locked" for the first ``failures`` calls (None: always)."""
    calls = []
    real = trading_services.candles_upsert

    def upsert(**kwargs):
        calls.append(sorted(r.open_time for r in kwargs["rows"]))
        if failures is None or len(calls) <= failures:
            raise OperationalError("database is locked")
        return real(**kwargs)

    monkeypatch.setattr(trading_services, "candles_upsert", upsert)  # what feed_bars_store calls
    return calls


def test_bars_failing_for_a_transient_reason_are_kept_and_stored_once_the_database_answers(
    universe, monkeypatch
):
    calls = failing_upsert(monkeypatch, failures=2)
    feed, report = run_scripted(universe, [closed_bar(0), closed_bar(1), closed_bar(2)], write_attempts=5)
    assert calls[:3] == [[T0], [T0, T0 + HOUR], [T0, T0 + HOUR, T0 + 2 * HOUR]]
    assert (report.bars_written, report.bars_dropped, report.unwritten_at_exit) == (3, 0, 0)
    assert feed._unwritten == {}
    opened = Candle.objects.filter(instrument=universe["BTC/USD"], closed=True).values_list(
        "open_time", flat=True
    )
    assert sorted(opened) == [T0, T0 + HOUR, T0 + 2 * HOUR]


def test_bars_are_retried_a_bounded_number_of_times_while_the_database_stays_down(universe, monkeypatch):
    calls = failing_upsert(monkeypatch, failures=None)
    feed, report = run_scripted(universe, [closed_bar(hour) for hour in range(5)], write_attempts=3)
    # bar n is tried with bars n+1 and n+2, then given up on; the last flush tries what is left once more
    assert calls == [
        [T0],
        [T0, T0 + HOUR],
        [T0, T0 + HOUR, T0 + 2 * HOUR],
        [T0 + HOUR, T0 + 2 * HOUR, T0 + 3 * HOUR],
        [T0 + 2 * HOUR, T0 + 3 * HOUR, T0 + 4 * HOUR],
        [T0 + 3 * HOUR, T0 + 4 * HOUR],
    ]
    assert (report.bars_written, report.bars_dropped, report.unwritten_at_exit) == (0, 4, 1)
    assert {moment: failures for moment, (_, failures) in feed._unwritten["BTC/USD"].items()} == {
        T0 + 4 * HOUR: 2
    }
    assert not Candle.objects.exists()
