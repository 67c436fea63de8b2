"""CoinGecko history: conversion, the httpx client against a real-HTTP fake, and the resumable backfill."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from governance.models import AuditEvent
from tests.fakes.coingecko import fake_coingecko, sample_offset_ms  # noqa: F401
from trading.candles import CandleRow
from trading.marketdata.coingecko import (
    DEFAULT_COINS,
    CoinGeckoClient,
    CoinGeckoError,
    CoinGeckoPlanLimit,
    RetryPolicy,
    backfill_coingecko,
    chunk_span,
    parse_retry_after,
    plan_chunks,
)
from trading.marketdata.coingecko_candles import (
    MalformedAnswer,
    clean_series,
    market_chart_to_candles,
    ohlc_interval_minutes,
    ohlc_to_candles,
)
from trading.models import Candle
from trading.services import candles_upsert

SAMPLES = Path(__file__).resolve().parents[3] / "shared" / "data" / "coingecko" / "samples.json"
needs_samples = pytest.mark.skipif(
    not SAMPLES.exists(),
    reason=f"{SAMPLES} is absent: CoinGecko's documented samples live in the shared folder beside the repo",
)

NOW = datetime(2026, 9, 25, 12, 34, 56, tzinfo=UTC)
HOUR_MS = 3_600_000


def hourly_price(ms: int) -> float:
    """Known series: each UTC day's hourly samples visit 1000, 1010, … 1230 in the order h*7 mod 24."""
    return 1000.0 + 10 * ((ms // HOUR_MS) * 7 % 24)


def sample_ms(grid: datetime) -> int:
    """Where the fake puts the sample for an hourly or 5-minute grid time."""
    seconds = int(grid.timestamp())
    return seconds * 1000 + sample_offset_ms(seconds)


def bars(instrument, timeframe=60):
    return list(
        Candle.objects.filter(instrument=instrument, timeframe=timeframe)
        .order_by("open_time")
        .values_list("open_time", "open", "high", "low", "close")
    )


@pytest.fixture
def fake(fake_coingecko):  # noqa: F811
    fake_coingecko.set_now(NOW)
    fake_coingecko.series("bitcoin", price=hourly_price)
    fake_coingecko.series("ethereum", price=hourly_price)
    return fake_coingecko


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def client(fake, sleeps):
    jitter = random.Random(7)  # noqa: S311 -- deterministic jitter
    with CoinGeckoClient(sleep=sleeps.append, rng=jitter) as client:
        yield client


@pytest.fixture
def btc(universe):
    return universe["BTC/USD"]


def run(instrument, client, *, days, timeframe=60, coin="bitcoin", now=NOW, **kwargs):
    return backfill_coingecko(
        instrument=instrument, coin_id=coin, days=days, timeframe=timeframe, now=now, client=client, **kwargs
    )


# --- pure conversion ------------------------------------------------------------------------------------


def test_bad_points_are_dropped_by_reason_duplicates_kept_last_and_points_sorted():
    series = [
        [3_000, 30.0],
        [1_000, 10.0],
        [2_000, None],
        [2_100, float("nan")],
        [2_200, float("inf")],
        [2_300, -1.0],
        [2_400, 0],
        [2_500, "abc"],
        [2_600, True],
        ["x", 1.0],
        [2_700],
        [1_000, 11.0],
    ]
    points, dropped, duplicates = clean_series(series)
    assert points == [(1_000, Decimal("11.0")), (3_000, Decimal("30.0"))]
    assert dropped == {
        "null": 1,
        "not finite": 2,
        "not positive": 2,
        "not a number": 2,
        "malformed point": 2,
    }
    assert duplicates == 1


def test_market_chart_buckets_clip_to_the_window_and_mark_the_forming_bar():
    base = int(datetime(2026, 1, 1, tzinfo=UTC).timestamp() * 1000)
    answer = {
        "prices": [
            [base + 2 * HOUR_MS + 5, 7.0],  # next hour, outside the window end
            [base + 50_000, 5.0],
            [base + 10_000, 4.0],
            [base + HOUR_MS + 1, 6.0],
            [base + 30_000, 9.0],
        ]
    }
    start = datetime(2026, 1, 1, tzinfo=UTC)
    result = market_chart_to_candles(
        answer, timeframe=60, now=start + timedelta(minutes=90), start=start, end=start + timedelta(hours=2)
    )
    assert [(r.open_time.hour, r.open, r.high, r.low, r.close, r.closed) for r in result.rows] == [
        (0, Decimal("4.0"), Decimal("9.0"), Decimal("4.0"), Decimal("5.0"), True),
        (1, Decimal("6.0"), Decimal("6.0"), Decimal("6.0"), Decimal("6.0"), False),
    ]
    assert (result.points, result.outside) == (4, 1)
    assert all(r.volume == 0 and r.trades is None for r in result.rows)
    assert result.closed_rows == result.rows[:1]


def test_market_chart_without_prices_is_malformed():
    with pytest.raises(MalformedAnswer, match="no 'prices'"):
        market_chart_to_candles({"total_volumes": []}, timeframe=60, now=NOW)
    with pytest.raises(MalformedAnswer, match="not a list"):
        market_chart_to_candles({"prices": {"a": 1}}, timeframe=60, now=NOW)


def test_ohlc_rows_mark_the_close_and_rows_off_the_grid_are_dropped():
    close = int(datetime(2026, 1, 1, 4, tzinfo=UTC).timestamp() * 1000)
    answer = [
        [close + 4 * HOUR_MS, 12, 13, 11, 12.5],
        [close, 10, 12, 9, 11],
        [close + 4 * HOUR_MS + 77_000, 12.5, 12.6, 12.4, 12.5],  # live sample, off the 4h grid
        [close + 8 * HOUR_MS, 1, 1, 2, 1],  # high below low
        [close + 12 * HOUR_MS, None, 1, 1, 1],
    ]
    result = ohlc_to_candles(answer, now=datetime(2026, 1, 1, 6, tzinfo=UTC), interval_minutes=240)
    assert [(r.open_time, r.open, r.close, r.closed) for r in result.rows] == [
        (datetime(2026, 1, 1, 0, tzinfo=UTC), Decimal(10), Decimal(11), True),
        (datetime(2026, 1, 1, 4, tzinfo=UTC), Decimal(12), Decimal("12.5"), False),
    ]
    assert result.dropped == {"unaligned close time": 1, "inconsistent ohlc": 1, "null": 1}
    assert [ohlc_interval_minutes(d) for d in (1, 2, 3, 30, 31, 365)] == [30, 30, 240, 240, 5760, 5760]


@needs_samples
def test_pycoingecko_five_minute_series_to_hourly_bars_by_hand():
    samples = json.loads(SAMPLES.read_text())
    answer = samples["pycoingecko_market_chart_days1"]["response"]
    # Points: 12:44:59 6756.94…, 12:49:43 6696.89…, 12:54:56 6689.99…, 12:59:39 6668.29…,
    #         13:05:02 6703.74…, 13:09:44 6706.89… (2018-08-27 UTC)
    now = datetime(2018, 8, 27, 13, 10, tzinfo=UTC)
    rows = market_chart_to_candles(answer, timeframe=60, now=now).rows
    assert rows == (
        CandleRow(
            open_time=datetime(2018, 8, 27, 12, tzinfo=UTC),
            open=Decimal("6756.942910425894"),
            high=Decimal("6756.942910425894"),
            low=Decimal("6668.291007556478"),
            close=Decimal("6668.291007556478"),
            volume=Decimal(0),
        ),
        CandleRow(
            open_time=datetime(2018, 8, 27, 13, tzinfo=UTC),
            open=Decimal("6703.7499879964"),
            high=Decimal("6706.898948451269"),
            low=Decimal("6703.7499879964"),
            close=Decimal("6706.898948451269"),
            volume=Decimal(0),
            closed=False,
        ),
    )
    five = market_chart_to_candles(answer, timeframe=5, now=now).rows
    # 13:00-13:05 had no sample: a real gap, not filled.
    assert [r.open_time.strftime("%H:%M") for r in five] == ["12:40", "12:45", "12:50", "12:55", "13:05"]
    assert (five[-1].open, five[-1].close) == (Decimal("6703.7499879964"), Decimal("6706.898948451269"))


@needs_samples
def test_documented_examples_convert_to_sane_candles():
    samples = json.loads(SAMPLES.read_text())
    hourly = market_chart_to_candles(
        samples["market_chart_range"]["response"], timeframe=60, now=datetime(2024, 1, 2, tzinfo=UTC)
    ).rows
    assert [r.open_time for r in hourly] == [datetime(2024, 1, 1, h, tzinfo=UTC) for h in range(3)]
    assert hourly[0].open == hourly[0].close == Decimal("42261.0406175669")

    daily = market_chart_to_candles(
        samples["market_chart"]["response"], timeframe=1440, now=datetime(2024, 4, 1, 15, 1, 22, tzinfo=UTC)
    ).rows
    assert [(r.open_time.day, r.closed) for r in daily] == [(31, True), (1, False)]
    assert (daily[1].open, daily[1].close) == (Decimal("71246.9514406015"), Decimal("68887.7495158568"))

    ohlc = ohlc_to_candles(samples["ohlc"]["response"], now=datetime(2024, 3, 3, tzinfo=UTC)).rows
    # 1709395200000 is 2024-03-02 16:00 UTC, the CLOSE of a 4-hour candle.
    assert [r.open_time for r in ohlc] == [datetime(2024, 3, 2, h, tzinfo=UTC) for h in (12, 16, 20)]
    assert (ohlc[0].open, ohlc[0].high, ohlc[0].low, ohlc[0].close) == tuple(
        map(Decimal, (61942, 62211, 61721, 61845))
    )
    assert all(r.closed for r in ohlc)


def test_chunks_are_aligned_contiguous_and_within_the_hourly_span():
    start, end = datetime(2025, 9, 25, 13, tzinfo=UTC), datetime(2026, 9, 25, 12, tzinfo=UTC)
    chunks = plan_chunks(start, end, 60)
    assert chunks[0][0] == start
    assert chunks[-1][1] == end
    assert all(b - a <= timedelta(days=90) for a, b in chunks)
    assert all(a[1] == b[0] for a, b in itertools.pairwise(chunks))
    assert len(chunks) == 5
    assert chunk_span(10080) == timedelta(weeks=12)
    assert parse_retry_after("7") == 7.0
    assert (
        parse_retry_after(
            "Fri, 25 Sep 2026 12:00:30 GMT", now=datetime(2026, 9, 25, 12, tzinfo=UTC).timestamp()
        )
        == 30
    )
    assert parse_retry_after("soon") is None


# --- the fake itself ------------------------------------------------------------------------------------


def test_fake_serves_coingecko_granularity_by_range(client):
    def spacing(days):
        answer = client.market_chart_range("bitcoin", start=NOW - timedelta(days=days), end=NOW)
        assert set(answer) == {"prices", "market_caps", "total_volumes"}
        times = [ms for ms, _ in answer["prices"]]
        return min(b - a for a, b in itertools.pairwise(times)) // 60_000

    assert spacing(1) <= 5
    assert 55 <= spacing(30) <= 65
    assert spacing(91) == 1440
    older = client.market_chart_range("bitcoin", start=NOW - timedelta(days=3), end=NOW - timedelta(days=2))
    assert len(older["prices"]) == 24  # a day that is not the last one comes back hourly


# --- backfill against the fake ----------------------------------------------------------------------------


def test_year_of_hourly_bars_from_a_known_series(btc, client, fake):
    progress = []
    report = run(btc, client, days=365, progress=lambda done, total: progress.append((done, total)))

    start, end = datetime(2025, 9, 25, 13, tzinfo=UTC), datetime(2026, 9, 25, 12, tzinfo=UTC)
    assert (report.start, report.end, report.complete) == (start, end, True)
    assert report.inserted == Candle.objects.filter(instrument=btc, timeframe=60).count() == 365 * 24 - 1
    assert progress == [(n, 5) for n in range(1, 6)]
    stored = bars(btc)
    assert stored[0][0] == start
    assert stored[-1][0] == end - timedelta(hours=1)
    for open_time, o, h, low, c in stored[:: 24 * 30] + stored[-1:]:
        expected = Decimal(str(hourly_price(sample_ms(open_time))))
        assert o == h == low == c == expected, open_time
    assert set(Candle.objects.values_list("source", "closed", "volume", "trades")) == {
        ("coingecko", True, Decimal(0), None)
    }
    requests = fake.calls("market_chart_range")
    assert len(requests) == 5
    spans = [(int(r.params["from"]), int(r.params["to"])) for r in requests]
    assert all(to - frm <= 90 * 86400 for frm, to in spans)
    assert spans[0][0] == int(start.timestamp())
    assert spans[-1][1] == int(end.timestamp())

    event = AuditEvent.objects.get(action="history.backfilled")
    assert event.actor == "system:backfill_history"
    assert event.details["source"] == "coingecko"
    assert event.details["coin"] == "bitcoin"
    assert event.details["symbol"] == "BTC/USD"
    assert event.details["timeframe"] == 60
    assert event.details["inserted"] == 365 * 24 - 1
    assert event.details["window"] == {
        "start": start.isoformat(timespec="microseconds"),
        "end": end.isoformat(timespec="microseconds"),
    }
    assert event.details["dropped"] == {}
    assert "0 = unknown" in event.details["volume"]


def test_daily_bars_aggregate_hourly_samples(btc, client):
    run(btc, client, days=30, timeframe=1440)
    stored = bars(btc, 1440)
    assert len(stored) == 29  # 2026-08-27 … 2026-09-24; today's bar is still forming
    # Each day's samples visit 1000 + 10*(h*7 mod 24): open h=0 → 1000, close h=23 → 1170.
    assert {row[1:] for row in stored} == {(Decimal(1000), Decimal(1230), Decimal(1000), Decimal(1170))}


def test_fifteen_minute_bars_from_the_last_day_of_five_minute_samples(btc, client, fake):
    fake.series("bitcoin", price=lambda ms: 200.0 + (ms // 300_000) % 7)
    run(btc, client, days=1, timeframe=15)
    stored = bars(btc, 15)
    assert len(stored) == 95
    open_time = stored[10][0]
    prices = [200.0 + (sample_ms(open_time + timedelta(minutes=m)) // 300_000) % 7 for m in (0, 5, 10)]
    assert stored[10][1:] == tuple(Decimal(str(p)) for p in (prices[0], max(prices), min(prices), prices[-1]))
    with pytest.raises(ValueError, match="5-minute samples for the last day only"):
        run(btc, client, days=2, timeframe=15)


def test_rerun_adds_nothing_and_a_later_run_adds_only_new_bars(btc, client, fake):
    first = run(btc, client, days=200)
    assert first.inserted == 200 * 24 - 1
    calls = len(fake.calls())

    again = run(btc, client, days=200)
    assert (again.inserted, again.chunks, again.resumed_from) == (0, 0, first.end)
    assert len(fake.calls()) == calls
    assert Candle.objects.filter(instrument=btc).count() == first.inserted

    tomorrow = NOW + timedelta(days=1)
    fake.set_now(tomorrow)
    later = run(btc, client, days=200, now=tomorrow)
    assert later.inserted == 24
    assert later.chunks == 1
    assert int(fake.calls()[-1].params["from"]) == int(first.end.timestamp())
    assert AuditEvent.objects.filter(action="history.backfilled").count() == 3


def test_interrupted_run_keeps_stored_chunks_and_a_rerun_completes(btc, client, fake, sleeps):
    fake.inject("status", status=503, times=RetryPolicy().attempts, after=1)
    with pytest.raises(CoinGeckoError, match=r"market_chart/range: gave up after 5 attempts; last: HTTP 503"):
        run(btc, client, days=200)
    assert Candle.objects.filter(instrument=btc).count() == 90 * 24
    assert len(sleeps) == 4
    interrupted = AuditEvent.objects.get(action="history.backfill_interrupted")
    assert interrupted.details["inserted"] == 90 * 24
    assert interrupted.details["chunks_done"] == 1
    assert "HTTP 503" in interrupted.details["error"]

    report = run(btc, client, days=200)
    assert report.resumed_from == report.start + timedelta(days=90)
    assert int(fake.calls()[-3].params["from"]) == int(report.resumed_from.timestamp())
    assert report.inserted == 200 * 24 - 1 - 90 * 24
    stored = bars(btc)
    assert len(stored) == len({row[0] for row in stored}) == 200 * 24 - 1
    assert stored[0][0] == report.start
    assert stored[-1][0] == report.end - timedelta(hours=1)


def test_rate_limit_honours_retry_after_then_succeeds(btc, client, fake, sleeps):
    fake.rate_limit(times=2, retry_after=7)
    report = run(btc, client, days=10)
    assert sleeps == [7.0, 7.0]
    assert [r.status for r in fake.calls()] == [429, 429, 200]
    assert report.complete
    assert report.inserted == 10 * 24 - 1


def test_rate_limit_without_retry_after_backs_off_with_jitter_and_respects_the_budget(client, fake, sleeps):
    fake.rate_limit(times=2, retry_after=None)
    client.market_chart_range("bitcoin", start=NOW - timedelta(days=2), end=NOW)
    assert 0.5 <= sleeps[0] <= 1.0
    assert 1.0 <= sleeps[1] <= 2.0

    sleeps.clear()
    fake.rate_limit(times=1, retry_after=3600)
    with pytest.raises(CoinGeckoError, match=r"HTTP 429 .*Retry-After: 3600.*300s wait budget"):
        client.market_chart_range("bitcoin", start=NOW - timedelta(days=2), end=NOW)
    assert sleeps == []


def test_transport_errors_are_retried_and_client_errors_are_not(client, fake, sleeps):
    fake.inject("disconnect")
    answer = client.market_chart_range("bitcoin", start=NOW - timedelta(days=2), end=NOW)
    assert len(answer["prices"]) == 48
    assert len(sleeps) == 1

    with pytest.raises(
        CoinGeckoError, match=r"GET /coins/dogecoin/market_chart/range: HTTP 404: coin not found"
    ) as error:
        client.market_chart_range("dogecoin", start=NOW - timedelta(days=2), end=NOW)
    assert (error.value.status, error.value.endpoint) == (404, "/coins/dogecoin/market_chart/range")
    assert [r.status for r in fake.calls()][-1:] == [404]
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("malformed", {}, "HTTP 200 with malformed JSON"),
        ("missing", {"keys": ("prices",)}, "HTTP 200 without a 'prices' list"),
    ],
)
def test_broken_answers_raise_and_store_nothing_from_that_chunk(btc, client, fake, kind, options, message):
    fake.inject(kind, after=1, **options)
    with pytest.raises(CoinGeckoError, match=rf"GET /coins/bitcoin/market_chart/range: {message}"):
        run(btc, client, days=200)
    assert Candle.objects.filter(instrument=btc).count() == 90 * 24
    assert len(fake.calls()) == 2  # not retried


def test_missing_volume_and_cap_series_are_not_needed(btc, client, fake):
    fake.inject("missing", keys=("market_caps", "total_volumes"))
    assert run(btc, client, days=5).inserted == 5 * 24 - 1


def test_bad_values_are_dropped_and_counted(btc, client, fake):
    base = datetime(2026, 9, 20, tzinfo=UTC)
    bad = [None, float("nan"), float("inf"), -5.0, 0, "abc"]
    overrides = {sample_ms(base + timedelta(hours=h)): value for h, value in enumerate(bad)}
    fake.series("bitcoin", price=hourly_price, overrides=overrides)
    report = run(btc, client, days=10)
    expected = {"not a number": 1, "not finite": 2, "not positive": 2, "null": 1}
    assert report.dropped == expected
    assert report.inserted == 10 * 24 - 1 - len(bad)
    stored_times = {row[0] for row in bars(btc)}
    assert not stored_times & {base + timedelta(hours=h) for h in range(len(bad))}
    assert base + timedelta(hours=len(bad)) in stored_times
    assert AuditEvent.objects.get(action="history.backfilled").details["dropped"] == expected


def test_duplicated_and_out_of_order_points_give_the_same_bars(universe, client, fake):
    fake.series("bitcoin", price=hourly_price, duplicate_every=3, shuffle=True)
    messy = run(universe["BTC/USD"], client, days=10, timeframe=240)
    clean = run(universe["ETH/USD"], client, days=10, timeframe=240, coin="ethereum")
    assert messy.duplicates > 0
    assert clean.duplicates == 0
    assert bars(universe["BTC/USD"], 240) == bars(universe["ETH/USD"], 240)
    # 4-hour bar from 00:00: samples h=0..3 → 1000, 1070, 1140, 1210 (h*7 mod 24).
    bar = Candle.objects.get(
        instrument=universe["BTC/USD"], timeframe=240, open_time=datetime(2026, 9, 20, tzinfo=UTC)
    )
    assert (bar.open, bar.high, bar.low, bar.close) == (
        Decimal(1000),
        Decimal(1210),
        Decimal(1000),
        Decimal(1210),
    )


def test_gaps_stay_gaps(btc, client, fake):
    gap_start = datetime(2026, 9, 21, 3, tzinfo=UTC)
    gap = (int(gap_start.timestamp() * 1000), int((gap_start + timedelta(hours=5)).timestamp() * 1000))
    fake.series("bitcoin", price=hourly_price, gaps=[gap])
    report = run(btc, client, days=10)
    assert report.inserted == 10 * 24 - 1 - 5
    assert not Candle.objects.filter(
        open_time__gte=gap_start, open_time__lt=gap_start + timedelta(hours=5)
    ).exists()


def test_kraken_bars_are_kept_and_do_not_hide_older_history(btc, client):
    def kraken_rows(first, count):
        return [
            CandleRow(first + timedelta(hours=h), Decimal(5), Decimal(6), Decimal(4), Decimal(5), Decimal(3))
            for h in range(count)
        ]

    recent = datetime(2026, 9, 23, 12, tzinfo=UTC)
    candles_upsert(
        instrument=btc, timeframe=60, rows=kraken_rows(recent, 48), source=Candle.Source.KRAKEN_REST
    )
    report = run(btc, client, days=10)
    assert report.resumed_from is None  # the live bars do not cover the window's start
    assert (report.inserted, report.kept) == (10 * 24 - 1 - 48, 48)
    assert Candle.objects.filter(source="kraken_rest", close=5).count() == 48


def test_stored_bars_at_the_window_start_are_resumed_after(universe, client, fake):
    sol = universe["SOL/USD"]
    fake.series("solana", price=hourly_price)
    start = datetime(2026, 9, 15, 13, tzinfo=UTC)
    rows = [
        CandleRow(start + timedelta(hours=h), Decimal(5), Decimal(6), Decimal(4), Decimal(5), Decimal(3))
        for h in range(30)
    ]
    candles_upsert(instrument=sol, timeframe=60, rows=rows, source=Candle.Source.KRAKEN_CSV)
    report = run(sol, client, days=10, coin="solana")
    assert report.resumed_from == start + timedelta(hours=30)
    assert report.inserted == 10 * 24 - 1 - 30
    assert report.kept == 0


# --- plans and keys ---------------------------------------------------------------------------------------


def test_demo_plan_refuses_more_than_365_days(btc, client, fake):
    with pytest.raises(
        CoinGeckoPlanLimit, match=r"plan serves only the last 365 days of history; 366 days were asked"
    ):
        run(btc, client, days=366)
    assert fake.calls() == []
    assert not AuditEvent.objects.filter(action__startswith="history.").exists()


def test_coingecko_own_history_limit_is_a_clear_error(client, fake):
    fake.history_limit_days = 365
    with pytest.raises(
        CoinGeckoError, match=r"HTTP 401: Your request exceeds the allowed time range"
    ) as error:
        client.market_chart_range("bitcoin", start=NOW - timedelta(days=400), end=NOW - timedelta(days=390))
    assert error.value.status == 401


def test_demo_key_header_is_sent_and_checked(btc, fake, settings, sleeps):
    fake.api_key = settings.COINGECKO_API_KEY = "CG-demo-key"
    with CoinGeckoClient(sleep=sleeps.append) as client:
        run(btc, client, days=3)
    assert {r.headers.get("x-cg-demo-api-key") for r in fake.calls()} == {"CG-demo-key"}
    assert all("x-cg-pro-api-key" not in r.headers for r in fake.calls())

    with (
        CoinGeckoClient(api_key="wrong", sleep=sleeps.append) as client,
        pytest.raises(CoinGeckoError, match="HTTP 401: Invalid API Key"),
    ):
        client.market_chart_range("bitcoin", start=NOW - timedelta(days=2), end=NOW)
    assert sleeps == []


def test_pro_plan_sends_its_header_and_may_go_past_365_days(btc, fake, settings, sleeps):
    settings.COINGECKO_PLAN = "pro"
    with pytest.raises(ImproperlyConfigured, match="COINGECKO_PLAN=pro needs COINGECKO_API_KEY"):
        CoinGeckoClient()
    fake.api_key, fake.key_header = "CG-pro-key", "x-cg-pro-api-key"
    settings.COINGECKO_API_KEY = "CG-pro-key"
    with CoinGeckoClient(sleep=sleeps.append) as client:
        report = run(btc, client, days=400, timeframe=1440)
    assert report.inserted == 399
    assert report.chunks == 5
    assert {r.headers.get("x-cg-pro-api-key") for r in fake.calls()} == {"CG-pro-key"}


# --- OHLC endpoint --------------------------------------------------------------------------------------


def test_ohlc_endpoint_close_time_convention(client, fake):
    rows = client.ohlc("bitcoin", days=7)
    assert all(b[0] - a[0] == 4 * HOUR_MS for a, b in itertools.pairwise(rows))
    candles = ohlc_to_candles(rows, now=NOW).rows
    assert len(candles) == len(rows) == 42
    first_close = datetime.fromtimestamp(rows[0][0] / 1000, tz=UTC)
    assert candles[0].open_time == first_close - timedelta(hours=4)
    assert candles[-1].open_time == datetime(2026, 9, 25, 8, tzinfo=UTC)  # closes at 12:00, before NOW
    opened_ms = int(candles[0].open_time.timestamp() * 1000)
    assert candles[0].open == Decimal(str(hourly_price(opened_ms)))
    assert candles[0].close == Decimal(str(hourly_price(opened_ms + 3 * HOUR_MS)))

    fake.inject("missing")
    cut = client.ohlc("bitcoin", days=7)
    assert ohlc_to_candles(cut, now=NOW, interval_minutes=240).dropped == {"malformed point": 42}


def test_default_coins_name_the_traded_pairs():
    assert DEFAULT_COINS == {"bitcoin": "BTC/USD", "ethereum": "ETH/USD", "solana": "SOL/USD"}
