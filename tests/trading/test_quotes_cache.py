"""``DatabaseQuoteSource`` keeps the candle-derived figures (last close, volatility, bar notional) per series
while the window of recent closed candles it reads stays the same: every quote must equal the one computed
from scratch, through new candles, corrections (by the upsert or by any other write), deletions and ticks."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext

from trading import quotes as quotes_module
from trading.candles import CandleRow
from trading.matching import quote_from_bars
from trading.models import Candle, FeedStatus
from trading.quotes import DatabaseQuoteSource, candle_bar, candle_stats_clear
from trading.services.market import candles_upsert

NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
HOUR = timedelta(hours=1)


@pytest.fixture(autouse=True)
def fresh_stats():
    candle_stats_clear()
    yield
    candle_stats_clear()


@pytest.fixture
def btc(universe, settings):
    settings.AETHER_TIMEFRAME = 60
    settings.MARKET_STALE_SECONDS = 90
    return universe["BTC/USD"]


@pytest.fixture
def computed(monkeypatch) -> list[int]:
    """How many times the candle figures were computed (not taken from what the source kept)."""
    calls: list[int] = []
    real = quotes_module._stats_of

    def counting(timeframe, window):
        calls.append(len(window))
        return real(timeframe, window)

    monkeypatch.setattr(quotes_module, "_stats_of", counting)
    return calls


def row(open_time: datetime, close: str, volume: str = "2", *, closed: bool = True) -> CandleRow:
    price = D(close)
    return CandleRow(open_time, price, price + 10, price - 10, price, D(volume), closed=closed)


def upsert(instrument, rows, source: str = "kraken_rest") -> None:
    candles_upsert(instrument=instrument, timeframe=60, rows=rows, source=source)


def load(instrument, count: int = 30) -> None:
    """``count`` closed hourly candles, the last one closing at NOW, closes going up and down."""
    start = NOW - count * HOUR
    upsert(
        instrument,
        [
            row(start + index * HOUR, str(60000 + (index % 7) * 150 - (index % 3) * 90), str(1 + index % 4))
            for index in range(count)
        ],
    )


def from_scratch(instrument) -> object:
    """The quote with nothing kept: what the source computes on its first call."""
    candle_stats_clear()
    return DatabaseQuoteSource().quote(instrument)


def reference(instrument, stats_bars: int = 24):
    """The candle quote computed the long way (stored candles → bars → the matching core)."""
    candles = list(
        Candle.objects.filter(instrument=instrument, timeframe=60, closed=True).order_by("-open_time")[
            :stats_bars
        ]
    )
    bars = [candle_bar(candle) for candle in reversed(candles)]
    return quote_from_bars(bars, fresh_until=bars[-1].close_time + 2 * HOUR if bars else None)


def test_a_kept_quote_equals_the_one_computed_from_scratch(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    first = source.quote(btc)
    assert first == reference(btc)
    assert first.volatility is not None
    assert first.bar_notional is not None
    assert computed == [24]
    again = source.quote(btc)
    assert computed == [24]  # taken from what was kept
    assert again == first
    assert DatabaseQuoteSource().quote(btc) == first  # kept per process, not per source object
    assert computed == [24]
    assert from_scratch(btc) == first


def test_a_new_closed_candle_is_priced_at_once(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    before = source.quote(btc)
    upsert(btc, [row(NOW, "61234.5", "3")])
    after = source.quote(btc)
    assert after.last == D("61234.5")
    assert after.at == NOW + HOUR
    assert after != before
    assert after == reference(btc)
    assert after == from_scratch(btc)


def test_a_forming_candle_changes_nothing(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    before = source.quote(btc)
    upsert(btc, [row(NOW, "99999.0", closed=False)])
    assert source.quote(btc) == before
    assert len(computed) == 1


@pytest.mark.parametrize("hours_back", [1, 12, 24], ids=["newest", "middle", "oldest-in-window"])
def test_a_corrected_candle_anywhere_in_the_window_is_seen(btc, computed, hours_back):
    load(btc)
    source = DatabaseQuoteSource()
    before = source.quote(btc)
    upsert(btc, [row(NOW - hours_back * HOUR, "58000.0", "9")])  # Kraken's REST bar replaces the stored one
    after = source.quote(btc)
    assert after != before
    assert after == reference(btc)
    assert after == from_scratch(btc)


def test_a_correction_that_leaves_updated_at_alone_is_seen_too(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    before = source.quote(btc)
    stamp = Candle.objects.get(instrument=btc, open_time=NOW - 5 * HOUR).updated_at
    Candle.objects.filter(instrument=btc, open_time=NOW - 5 * HOUR).update(close=D("57000.0"))
    assert Candle.objects.get(instrument=btc, open_time=NOW - 5 * HOUR).updated_at == stamp
    after = source.quote(btc)
    assert after.volatility != before.volatility
    assert after == reference(btc)
    assert after == from_scratch(btc)


def test_a_deleted_candle_is_seen(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    before = source.quote(btc)
    Candle.objects.filter(instrument=btc, open_time=NOW - 3 * HOUR).delete()
    after = source.quote(btc)
    assert after != before
    assert after == reference(btc)
    assert after == from_scratch(btc)
    Candle.objects.filter(instrument=btc).delete()
    assert source.quote(btc) is None


def test_few_candles_and_quiet_bars(btc, computed):
    source = DatabaseQuoteSource()
    assert source.quote(btc) is None
    upsert(btc, [row(NOW - HOUR, "60000.0", "0")])
    one = source.quote(btc)
    assert (one.last, one.volatility, one.bar_notional) == (D("60000.0"), None, None)
    assert one == reference(btc) == from_scratch(btc)
    upsert(btc, [row(NOW - 2 * HOUR, "59000.0", "1"), row(NOW - 3 * HOUR, "59500.0", "0")])
    three = source.quote(btc)
    assert three.volatility is not None
    assert three.bar_notional == D("59000.0")  # the bar with no volume has no notional
    assert three == reference(btc) == from_scratch(btc)


def test_series_are_kept_apart(btc, universe, computed):
    eth = universe["ETH/USD"]
    load(btc)
    upsert(eth, [row(NOW - HOUR * (index + 1), str(3000 + index * 7)) for index in range(5)])
    source = DatabaseQuoteSource()
    btc_quote, eth_quote = source.quote(btc), source.quote(eth)
    assert btc_quote.last != eth_quote.last
    assert source.quote(btc) == btc_quote == reference(btc)
    assert source.quote(eth) == eth_quote == reference(eth)
    assert len(computed) == 2
    other_window = DatabaseQuoteSource(stats_bars=5).quote(btc)
    assert other_window == reference(btc, stats_bars=5)
    assert other_window.volatility != btc_quote.volatility
    assert source.quote(btc) == btc_quote


def test_the_tick_is_read_fresh_while_the_candle_figures_are_kept(btc, computed):
    load(btc)
    source = DatabaseQuoteSource()
    candles_only = source.quote(btc)
    tick_at = NOW + HOUR + timedelta(minutes=5)
    status = FeedStatus.objects.create(
        instrument=btc, last_price=D("60450.5"), last_message_at=tick_at, stale=False
    )
    tick = source.quote(btc)
    assert (tick.last, tick.at, tick.fresh_until) == (
        D("60450.5"),
        tick_at,
        tick_at + timedelta(seconds=90),
    )
    assert (tick.volatility, tick.bar_notional) == (candles_only.volatility, candles_only.bar_notional)
    FeedStatus.objects.filter(pk=status.pk).update(last_price=D("60500.0"))
    assert source.quote(btc).last == D("60500.0")
    FeedStatus.objects.filter(pk=status.pk).update(stale=True)
    assert source.quote(btc) == candles_only  # a stale feed yields to the candle
    assert len(computed) == 1
    assert from_scratch(btc) == candles_only


def test_a_quote_is_two_statements_kept_or_not(btc):
    load(btc)
    FeedStatus.objects.create(instrument=btc, last_price=D("60450.5"), last_message_at=NOW, stale=False)
    source = DatabaseQuoteSource()
    for _ in range(2):  # computed, then kept
        with CaptureQueriesContext(connection) as captured:
            source.quote(btc)
        assert len(captured.captured_queries) == 2
