"""Kraken OHLC backfill through real ccxt against the fake Kraken server."""

import functools
from datetime import UTC, datetime, timedelta

import ccxt
import pytest
from django.core.management import CommandError, call_command
from django.utils import timezone

from governance.models import AuditEvent
from tests.fakes.kraken_rest import Fault, KrakenError
from trading.candles import floor_time
from trading.marketdata.kraken_backfill import backfill_kraken
from trading.marketdata.kraken_rest import public_client
from trading.models import Candle

NOW = datetime(2026, 11, 21, 12, 30, tzinfo=UTC)
FORMING = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)


def hourly_rows(count: int, *, end: datetime = FORMING):
    rows = []
    for index in range(count):
        start = end - timedelta(hours=count - 1 - index)
        price = 80_000 + index
        rows.append([int(start.timestamp()), price, price + 50, price - 50, price + 10, price, "1.5", 7])
    return rows


@pytest.fixture
def kraken(fake_kraken, settings):
    settings.KRAKEN_API_URL = fake_kraken.url  # the endpoint setting is all it takes to point elsewhere
    fake_kraken.set_ohlc("XBTUSD", 60, hourly_rows(1000))
    return fake_kraken


def run(btc, **kwargs):
    sleeps = []
    kwargs.setdefault("days", 10)
    report = backfill_kraken(
        instrument=btc,
        timeframe=60,
        now=NOW,
        client=public_client(timeout_ms=2000, rate_limit=False),
        sleep=sleeps.append,
        **kwargs,
    )
    return report, sleeps


def test_backfill_stores_closed_bars_and_marks_the_forming_one(universe, kraken):
    btc = universe["BTC/USD"]
    report, _ = run(btc)
    stored = Candle.objects.filter(instrument=btc, timeframe=60)
    # Closed bars from 12:00 ten days ago (the window's first whole bar) to 11:00 today, plus the forming one.
    assert stored.count() == 10 * 24 + 1
    assert stored.filter(closed=False).get().open_time == FORMING
    newest_closed = stored.filter(closed=True).latest("open_time")
    assert newest_closed.open_time == FORMING - timedelta(hours=1)
    assert str(newest_closed.close) == "81008.000000000000"  # row 998: 80_000 + 998 + 10
    assert newest_closed.source == "kraken_rest"
    request = kraken.requests(endpoint="OHLC")[0]
    assert request.params["pair"] == "XBTUSD"
    assert request.params["interval"] == "60"
    assert (report.inserted, report.updated) == (241, 1)  # the second page re-reads only the forming bar
    assert AuditEvent.objects.filter(action="history.backfilled").count() == 1


def test_rerun_resumes_from_the_newest_stored_bar_and_adds_nothing_twice(universe, kraken):
    btc = universe["BTC/USD"]
    run(btc)
    before = Candle.objects.count()
    report, _ = run(btc)
    assert report.inserted == 0
    assert Candle.objects.count() == before
    since = int(Candle.objects.filter(closed=True).latest("open_time").open_time.timestamp())
    assert kraken.requests(endpoint="OHLC")[-2].params["since"] == str(since)
    # Three more hours pass on the exchange: only they are fetched; the old forming bar is now closed.
    kraken.set_ohlc("XBTUSD", 60, hourly_rows(1003, end=FORMING + timedelta(hours=3)))
    report, _ = run(btc)
    assert report.inserted == 3
    assert Candle.objects.filter(closed=False).get().open_time == FORMING + timedelta(hours=3)
    assert Candle.objects.get(open_time=FORMING).closed is True


def test_a_hole_left_by_a_feed_outage_is_filled(universe, kraken):
    btc = universe["BTC/USD"]
    run(btc)
    hole = Candle.objects.filter(
        instrument=btc,
        open_time__gte=FORMING - timedelta(hours=50),
        open_time__lt=FORMING - timedelta(hours=40),
    )
    assert hole.count() == 10
    hole.delete()
    report, _ = run(btc)
    assert report.inserted == 10
    assert Candle.objects.filter(instrument=btc).count() == 10 * 24 + 1
    since = int((FORMING - timedelta(hours=51)).timestamp())  # the last bar before the hole
    assert kraken.requests(endpoint="OHLC")[-2].params["since"] == str(since)


def test_history_beyond_krakens_window_is_reported_not_invented(universe, kraken):
    report, _ = run(universe["BTC/USD"], days=60)
    assert "only the latest 720 bars" in report.note
    assert Candle.objects.count() == 720  # what the fake serves: Kraken's window


def test_rate_limit_is_retried_with_backoff(universe, kraken):
    kraken.inject("OHLC", Fault.kraken_error(KrakenError.RATE_LIMIT), times=2)
    report, sleeps = run(universe["BTC/USD"])
    assert len(sleeps) == 2
    assert 0 <= sleeps[0] <= 1  # full jitter: up to 1 s, then up to 2 s
    assert 0 <= sleeps[1] <= 2
    assert report.inserted == 241


def test_persistent_outage_is_a_clear_error_and_stores_nothing_bad(universe, kraken):
    kraken.inject("OHLC", Fault.kraken_error(KrakenError.SERVICE_UNAVAILABLE), times=10)
    with pytest.raises(ccxt.ExchangeNotAvailable):
        run(universe["BTC/USD"])
    assert Candle.objects.count() == 0


def test_command_reports_faults_clearly(universe, kraken, monkeypatch):
    monkeypatch.setattr("trading.marketdata.kraken_backfill.time.sleep", lambda seconds: None)
    unthrottled = functools.partial(public_client, timeout_ms=2000, rate_limit=False)  # a local fake
    monkeypatch.setattr("trading.marketdata.kraken_backfill.public_client", unthrottled)
    current_hour = floor_time(timezone.now(), 60)  # the command works from the real clock
    kraken.set_ohlc("XBTUSD", 60, hourly_rows(1000, end=current_hour))
    kraken.inject("OHLC", Fault.malformed_json(), times=1)
    with pytest.raises(CommandError, match=r"BTC/USD: Kraken OHLC failed .*not a JSON object"):
        call_command("backfill_history", "--source", "kraken", "--pair", "BTC/USD", "--days", "2")
    assert Candle.objects.count() == 0
    with pytest.raises(CommandError, match="DOGE/USD is not in the synced spot USD universe"):
        call_command("backfill_history", "--source", "kraken", "--pair", "DOGE/USD")
    call_command("backfill_history", "--source", "kraken", "--pair", "BTC/USD", "--days", "2")
    # Two days of whole hours: from the hour two days ago up to the hour before the forming one.
    assert Candle.objects.filter(closed=True).count() == 48
    assert Candle.objects.filter(closed=False).get().open_time == current_hour


def test_jittered_backoff_bounds():
    from trading.marketdata.backoff import jittered_backoff

    assert jittered_backoff(0, base=1, cap=30, rng=lambda: 1.0) == 1
    assert jittered_backoff(3, base=1, cap=30, rng=lambda: 1.0) == 8
    assert jittered_backoff(10, base=1, cap=30, rng=lambda: 1.0) == 30  # capped
    assert jittered_backoff(3, base=1, cap=30, rng=lambda: 0.0) == 0  # full jitter may not wait at all
    assert jittered_backoff(3, base=1, cap=30, floor=0.5, rng=lambda: 0.0) == 4  # equal jitter: half at least
    assert jittered_backoff(10_000, base=1, cap=60, rng=lambda: 0.5) == 30  # huge attempts do not overflow
    with pytest.raises(ValueError, match="floor"):
        jittered_backoff(1, base=1, cap=2, floor=2)
