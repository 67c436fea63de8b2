"""Replay: stored closed candles played through the same feed on an accelerated clock."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import pytest
from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer
from django.core.management import CommandError, call_command

from governance.models import AuditEvent
from trading.candles import make_row
from trading.marketdata.feed import Bar, Tick
from trading.marketdata.feed_service import EMBEDDED_NOTICE, TICKS_GROUP, MarketFeed
from trading.marketdata.replay import ReplaySource, default_speed, load_stored_bars, rows_from_ohlcvt_csv
from trading.models import Candle, FeedStatus
from trading.selectors import closed_candles
from trading.services import candles_upsert

SHARED_MARKET = Path(__file__).resolve().parents[3] / "shared" / "data" / "market" / "kraken"
XBTUSD_60 = SHARED_MARKET / "XBTUSD_60.csv"

T0 = datetime(2022, 1, 3, 0, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


def hourly(count: int, *, start: datetime = T0, base: int = 100, skip: tuple[int, ...] = ()) -> list:
    rows = []
    for n in range(count):
        if n in skip:
            continue
        price = Decimal(base + n)
        rows.append(
            make_row(
                open_time=start + n * HOUR,
                open=price,
                high=price + 2,
                low=price - 1,
                close=price + 1,
                volume=Decimal("1.25"),
                trades=n + 1,
                minutes=60,
            )
        )
    return rows


async def collect(source) -> list:
    return [event async for event in source]


# --- The source alone ---------------------------------------------------------------------------------------


@pytest.mark.timeout(10)
def test_replay_emits_bars_in_time_order_each_followed_by_a_tick_at_its_close_faster_than_real_time():
    btc, eth = hourly(6, base=100), hourly(6, base=200, skip=(2,))  # ETH has a real gap at the third hour
    source = ReplaySource(bars={"ETH/USD": eth, "BTC/USD": btc}, timeframe=60, speed=3600 / 0.02)
    started = time.monotonic()
    events = asyncio.run(collect(source))
    elapsed = time.monotonic() - started

    bars = [event for event in events if isinstance(event, Bar)]
    assert [(bar.row.open_time, bar.symbol) for bar in bars] == sorted(
        [(row.open_time, "BTC/USD") for row in btc] + [(row.open_time, "ETH/USD") for row in eth]
    )
    assert all(bar.closed and bar.timeframe == 60 for bar in bars)
    for bar, tick in zip(events[::2], events[1::2], strict=True):
        assert isinstance(bar, Bar)
        assert isinstance(tick, Tick)
        assert (tick.symbol, tick.price, tick.time) == (bar.symbol, bar.row.close, bar.row.open_time + HOUR)
    # 5 hours of market time at 0.02 s per hour: paced, not dumped, and far faster than real time
    assert 0.09 <= elapsed < 2
    assert source.stats.bars == 11
    assert source.store_as == "replay"


@pytest.mark.timeout(10)
def test_replay_stops_when_closed_and_refuses_forming_bars_and_bad_speeds():
    source = ReplaySource(bars={"BTC/USD": hourly(100)}, timeframe=60, speed=3600 / 0.05)

    async def first_three_then_close():
        seen = []
        async for event in source:
            if isinstance(event, Bar):
                seen.append(event)
            if len(seen) == 3:
                await source.close()
        return seen

    assert len(asyncio.run(first_three_then_close())) == 3
    assert source.stats.bars == 3

    forming = make_row(open_time=T0, open=1, high=1, low=1, close=1, volume=0, closed=False, minutes=60)
    with pytest.raises(ValueError, match="closed bars only"):
        ReplaySource(bars={"BTC/USD": [forming]}, timeframe=60)
    with pytest.raises(ValueError, match="positive"):
        ReplaySource(bars={"BTC/USD": hourly(1)}, timeframe=60, speed=0)
    assert default_speed(60) == 36000  # one hourly bar per 0.1 s
    assert ReplaySource(bars={}, timeframe=60, store=False).store_as is None


# --- Through the feed ---------------------------------------------------------------------------------------


def drain(layer: InMemoryChannelLayer, channel: str) -> list[dict]:
    async def receive_all():
        messages = []
        while True:
            try:
                messages.append(await asyncio.wait_for(layer.receive(channel), 0.05))
            except TimeoutError:
                return messages

    return async_to_sync(receive_all)()


def run_feed(source, instruments, layer):
    feed = MarketFeed(
        instruments=instruments,
        timeframe=60,
        stale_seconds=30,
        check_every=0.02,
        flush_every=0.05,
        channel_layer=layer,
        announce=lambda line: None,
    )
    return async_to_sync(feed.run)(source)


@pytest.mark.timeout(15)
def test_stored_candles_replay_through_the_sink_and_ticks_reach_the_channel_layer(universe):
    btc, eth = universe["BTC/USD"], universe["ETH/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=hourly(24, base=100), source=Candle.Source.KRAKEN_CSV)
    candles_upsert(instrument=eth, timeframe=60, rows=hourly(24, base=300), source=Candle.Source.KRAKEN_CSV)
    bars = load_stored_bars(instruments=[btc, eth], timeframe=60, since=T0 + 4 * HOUR)
    assert [len(rows) for rows in bars.values()] == [20, 20]
    source = ReplaySource(bars=bars, timeframe=60, speed=3600 / 0.005, store=False)

    layer = InMemoryChannelLayer()
    listener = async_to_sync(layer.new_channel)()
    async_to_sync(layer.group_add)(TICKS_GROUP, listener)
    started = time.monotonic()
    report = run_feed(source, [btc, eth], layer)
    assert time.monotonic() - started < 5  # 20 market hours

    messages = drain(layer, listener)
    assert len(messages) == 40
    assert all(message["type"] == "market.tick" and message["source"] == "replay" for message in messages)
    times = [datetime.fromisoformat(message["time"]) for message in messages]
    assert times == sorted(times)
    assert [m["price"] for m in messages if m["symbol"] == "BTC/USD"] == [
        str(100 + n + 1) for n in range(4, 24)
    ]
    assert (messages[-1]["bid"], messages[-1]["ask"]) == (None, None)

    assert report.bars_closed == 40
    assert report.published == 40
    assert report.bars_written == 0  # already stored: replaying them must not relabel Kraken's bars
    assert set(Candle.objects.values_list("source", flat=True)) == {Candle.Source.KRAKEN_CSV}
    assert FeedStatus.objects.get(instrument=btc).last_price == Decimal(124)
    assert FeedStatus.objects.get(instrument=eth).last_price == Decimal(324)
    assert AuditEvent.objects.filter(action="market.live").count() == 2


@pytest.mark.timeout(15)
@pytest.mark.skipif(
    not XBTUSD_60.exists(), reason=f"needs Kraken's OHLCVT file {XBTUSD_60} (shared data folder)"
)
def test_a_kraken_ohlcvt_file_replays_into_closed_replay_candles(universe):
    btc = universe["BTC/USD"]
    rows = rows_from_ohlcvt_csv(XBTUSD_60, timeframe=60, limit=48)
    assert len(rows) == 48
    source = ReplaySource(bars={"BTC/USD": rows}, timeframe=60, speed=3600 / 0.005)
    report = run_feed(source, [btc], InMemoryChannelLayer())

    assert report.bars_closed == 48
    stored = list(closed_candles(instrument=btc, timeframe=60))
    assert [candle.open_time for candle in stored] == [row.open_time for row in rows]
    assert all(candle.source == Candle.Source.REPLAY for candle in stored)
    assert [(c.open, c.high, c.low, c.close, c.volume) for c in stored] == [
        (r.open, r.high, r.low, r.close, r.volume) for r in rows
    ]
    assert not Candle.objects.filter(closed=False).exists()


def test_an_invalid_ohlcvt_line_is_an_error_naming_it(tmp_path):
    path = tmp_path / "bad.csv"
    path.write_text("1641168000,100,102,99,101,1.5,12\n1641171600,100,99,101,101,1.5,12\n")
    with pytest.raises(ValueError, match=r"bad\.csv: 1 invalid line\(s\), e\.g\. line 2: inconsistent OHLC"):
        rows_from_ohlcvt_csv(path, timeframe=60)


# --- The command --------------------------------------------------------------------------------------------


def test_command_names_pairs_outside_the_universe(universe):
    with pytest.raises(CommandError, match=r"DOGE/USD is not in the synced spot USD universe"):
        call_command("run_market_feed", "--pairs", "BTC/USD,DOGE/USD")
    with pytest.raises(CommandError, match="--timeframe"):
        call_command("run_market_feed", "--timeframe", "7")
    with pytest.raises(CommandError, match="nothing to replay for BTC/USD"):
        call_command("run_market_feed", "--source", "replay", "--pairs", "XBT/USD")


@pytest.mark.timeout(15)
def test_command_replays_stored_candles_and_prints_a_summary(audit_transactional_db, universe, settings):
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    btc = universe["BTC/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=hourly(5), source=Candle.Source.KRAKEN_CSV)
    out, err = StringIO(), StringIO()
    call_command(
        "run_market_feed",
        "--source",
        "replay",
        "--pairs",
        "XBT/USD",
        "--speed",
        "360000",
        stdout=out,
        stderr=err,
    )
    assert "note: XBT/USD is BTC/USD" in out.getvalue()
    summary = out.getvalue().strip().splitlines()[-1]
    assert summary.startswith("run_market_feed (replay): ")
    assert "5 ticks (5 published, 0 failed), 5 closed bars" in summary
    assert EMBEDDED_NOTICE in err.getvalue()
    status = FeedStatus.objects.get(instrument=btc)
    assert status.last_price == Decimal(105)
    assert status.stale  # the replay ended: nothing keeps the pair current


@pytest.mark.timeout(15)
def test_replaying_a_csv_over_kraken_bars_leaves_them_unchanged(universe, tmp_path):
    btc = universe["BTC/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=hourly(4, base=100), source=Candle.Source.KRAKEN_REST)
    live = make_row(
        open_time=T0 + 4 * HOUR, open=104, high=106, low=103, close=105, volume=1, minutes=60, closed=False
    )
    candles_upsert(instrument=btc, timeframe=60, rows=[live], source=Candle.Source.KRAKEN_WS)
    before = {c.open_time: (c.source, c.close, c.closed, c.updated_at) for c in Candle.objects.all()}

    # the file covers the stored hours at other prices, and three hours more
    path = tmp_path / "XBTUSD_60.csv"
    start = int(T0.timestamp())
    path.write_text(
        "".join(f"{start + n * 3600},{500 + n},{502 + n},{499 + n},{501 + n},2.5,{n + 1}\n" for n in range(8))
    )
    rows = rows_from_ohlcvt_csv(path, timeframe=60)
    report = run_feed(
        ReplaySource(bars={"BTC/USD": rows}, timeframe=60, speed=3600 / 0.005), [btc], InMemoryChannelLayer()
    )

    after = {c.open_time: c for c in Candle.objects.filter(instrument=btc, timeframe=60)}
    assert sorted(after) == [T0 + n * HOUR for n in range(8)]
    for moment, (source, close, closed, updated_at) in before.items():
        candle = after[moment]
        assert (candle.source, candle.close, candle.closed, candle.updated_at) == (
            source,
            close,
            closed,
            updated_at,
        )
    assert [after[T0 + n * HOUR].source for n in range(4)] == [Candle.Source.KRAKEN_REST] * 4
    assert [after[T0 + n * HOUR].close for n in range(4)] == [101, 102, 103, 104]
    assert after[T0 + 4 * HOUR].source == Candle.Source.KRAKEN_WS  # Kraken's forming bar is not removed
    assert [(after[T0 + n * HOUR].source, after[T0 + n * HOUR].close) for n in range(5, 8)] == [
        (Candle.Source.REPLAY, Decimal(501 + n)) for n in range(5, 8)
    ]
    assert (report.bars_closed, report.bars_written, report.bars_dropped) == (8, 3, 0)
