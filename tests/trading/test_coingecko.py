"""CoinGecko history: conversion, the httpx client against a real-HTTP fake, and the resumable backfill."""

from __future__ import annotations

import itertools
import json
import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from django.core.exceptions import ImproperlyConfigured
from django.db.models import F

from governance.models import AuditEvent
from tests.fakes.coingecko import DAY, HOUR, fake_coingecko, sample_offset_ms  # noqa: F401
from trading.candles import CandleRow
from trading.marketdata.coingecko import (
    CoinGeckoClient,
    CoinGeckoError,
    CoinGeckoPlanLimit,
    RetryPolicy,
    backfill_coingecko,
    chunk_span,
    expected_spacing,
    parse_retry_after,
    plan_chunks,
)
from trading.marketdata.coingecko_candles import (
    CLOSE_GRACE,
    MalformedAnswer,
    bar_open_ms,
    clean_series,
    close_grace,
    market_chart_to_candles,
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


def close_price(open_time: datetime, timeframe=60) -> Decimal:
    """What a bar of a known hourly series must close at: the sample just after the bar's END."""
    return Decimal(str(hourly_price(sample_ms(open_time + timedelta(minutes=timeframe)))))


GRACE_S = int(CLOSE_GRACE.total_seconds())


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
    minute = 60_000
    answer = {
        "prices": [
            [base + 2 * HOUR_MS + 3 * minute, 1.0],  # opens the 02:00 bar: outside the window end
            [base + 30 * minute, 9.0],
            [base + 10 * minute, 4.0],
            [base + 30_000, 3.0],  # 00:00:30 closes the 23:00 bar: before the window start
            [base + HOUR_MS + 1, 6.0],  # 01:00:00.001: the close of the 00:00 bar
            [base + HOUR_MS + 2 * minute, 8.0],  # 01:02:00, the grace is over: opens the 01:00 bar
            [base + 50 * minute, 5.0],
            [base + 2 * HOUR_MS + 5, 7.0],  # 02:00:00.005: the close of the 01:00 bar
        ]
    }
    start = datetime(2026, 1, 1, tzinfo=UTC)
    result = market_chart_to_candles(
        answer,
        timeframe=60,
        now=start + timedelta(hours=2, minutes=1),
        start=start,
        end=start + timedelta(hours=2),
    )
    assert [(r.open_time.hour, r.open, r.high, r.low, r.close, r.closed) for r in result.rows] == [
        (0, Decimal("4.0"), Decimal("9.0"), Decimal("4.0"), Decimal("6.0"), True),
        # ended at 02:00, but its closing sample may come until 02:02: not closed at 02:01
        (1, Decimal("8.0"), Decimal("8.0"), Decimal("7.0"), Decimal("7.0"), False),
    ]
    assert (result.points, result.outside) == (6, 2)
    # gaps between the 8 sorted points: 9.5, 20, 20, 10 (+1 ms), 2 (-1 ms), 58 (+4 ms), 3 (-5 ms) minutes
    assert result.spacing == timedelta(minutes=10, milliseconds=1)
    assert all(r.volume == 0 and r.trades is None for r in result.rows)
    assert result.closed_rows == result.rows[:1]


def test_bucketing_rule_edges():
    hour = datetime(2026, 1, 1, 13, tzinfo=UTC)
    ms = int(hour.timestamp() * 1000)
    previous = int((hour - timedelta(hours=1)).timestamp() * 1000)
    assert close_grace(60) == close_grace(5) == CLOSE_GRACE == timedelta(minutes=2)
    assert close_grace(1) == timedelta(seconds=30)  # never a whole bar
    assert bar_open_ms(ms, 60) == previous  # exactly on the boundary: the price at 13:00 closes 12:00-13:00
    assert bar_open_ms(ms + 41_331, 60) == previous  # 13:00:41.331, CoinGecko's usual stamp
    assert bar_open_ms(ms + 119_999, 60) == previous
    assert bar_open_ms(ms + 120_000, 60) == ms  # 13:02:00 is inside 13:00-14:00
    assert bar_open_ms(ms + 3_599_999, 60) == ms


def test_market_chart_without_prices_is_malformed():
    with pytest.raises(MalformedAnswer, match="no 'prices'"):
        market_chart_to_candles({"total_volumes": []}, timeframe=60, now=NOW)
    with pytest.raises(MalformedAnswer, match="not a list"):
        market_chart_to_candles({"prices": {"a": 1}}, timeframe=60, now=NOW)


def test_hourly_samples_close_the_bar_that_ends_when_they_are_taken():
    """Hand-checked: each hourly sample (stamped HH:00:xx) is the close of the bar ENDING at HH:00, and the
    daily bar closes with the next day's 00:00:xx sample, not the 23:00 one."""
    day = datetime(2026, 3, 10, tzinfo=UTC)

    def at(hour, second):
        return int((day + timedelta(hours=hour, seconds=second)).timestamp() * 1000)

    prices = (
        [[at(0, 41), 50.0]]  # 03-10 00:00:41: the close of 03-09's last bar and of 03-09's day
        + [[at(h, 30 + h), 100.0 + h] for h in range(1, 24)]  # 01:00:31 → 101 … 23:00:53 → 123
        + [[at(24, 12), 99.0], [at(25, 40), 200.0]]  # 03-11 00:00:12 → 99, 01:00:40 → 200
    )
    answer = {"prices": prices}
    now = day + timedelta(days=1, hours=1, minutes=2)  # 03-11 01:02
    hourly = market_chart_to_candles(answer, timeframe=60, now=now).rows
    assert [(r.open_time, r.close, r.closed) for r in hourly] == (
        [(day - timedelta(hours=1), Decimal("50.0"), True)]
        + [(day + timedelta(hours=h - 1), Decimal(str(100.0 + h)), True) for h in range(1, 24)]
        + [
            (day + timedelta(hours=23), Decimal("99.0"), True),
            (day + timedelta(hours=24), Decimal("200.0"), True),
        ]
    )
    assert all(r.open == r.high == r.low == r.close for r in hourly)  # one sample each: its close
    bar_12 = next(r for r in hourly if r.open_time == day + timedelta(hours=12))
    assert bar_12.close == Decimal("113.0")  # the 13:00:43 sample closes 12:00-13:00

    daily = market_chart_to_candles(answer, timeframe=1440, now=now).rows
    assert [(r.open_time, r.open, r.high, r.low, r.close, r.closed) for r in daily] == [
        (day - timedelta(days=1), Decimal("50.0"), Decimal("50.0"), Decimal("50.0"), Decimal("50.0"), True),
        # 03-10: samples 01:00 … 23:00 (101 … 123), then 03-11 00:00:12 (99) closes it
        (day, Decimal("101.0"), Decimal("123.0"), Decimal("99.0"), Decimal("99.0"), True),
        (
            day + timedelta(days=1),
            Decimal("200.0"),
            Decimal("200.0"),
            Decimal("200.0"),
            Decimal("200.0"),
            False,
        ),
    ]
    # 03-10's day bar is closed only once its 00:00:xx close sample can no longer come (00:02).
    assert (
        not market_chart_to_candles(answer, timeframe=1440, now=day + timedelta(days=1, minutes=1))
        .rows[1]
        .closed
    )
    assert (
        market_chart_to_candles(answer, timeframe=1440, now=day + timedelta(days=1, minutes=2)).rows[1].closed
    )


@needs_samples
def test_pycoingecko_five_minute_series_to_hourly_bars_by_hand():
    samples = json.loads(SAMPLES.read_text())
    answer = samples["pycoingecko_market_chart_days1"]["response"]
    # Points: 12:44:59 6756.94…, 12:49:43 6696.89…, 12:54:56 6689.99…, 12:59:39 6668.29…,
    #         13:05:02 6703.74…, 13:09:44 6706.89… (2018-08-27 UTC). None lands within 2 minutes after
    #         13:00, so the 12:00 bar closes with 12:59:39; 13:05:02 is 2 s after 13:05.
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
    # Each 5-minute bar gets the one sample nearest its end: 12:44:59 closes 12:40-12:45, 13:05:02 closes
    # 13:00-13:05; 13:09:44 is in 13:05-13:10, still open at 13:10 (its close may come until 13:12).
    assert [r.open_time.strftime("%H:%M") for r in five] == [
        "12:40",
        "12:45",
        "12:50",
        "12:55",
        "13:00",
        "13:05",
    ]
    assert [r.close for r in five] == [
        Decimal(v)
        for v in (
            "6756.942910425894",
            "6696.894541693875",
            "6689.990513793263",
            "6668.291007556478",
            "6703.7499879964",
            "6706.898948451269",
        )
    ]
    assert [r.closed for r in five] == [True] * 5 + [False]


@needs_samples
def test_documented_examples_convert_to_sane_candles():
    samples = json.loads(SAMPLES.read_text())
    hourly = market_chart_to_candles(
        samples["market_chart_range"]["response"], timeframe=60, now=datetime(2024, 1, 2, tzinfo=UTC)
    ).rows
    # 00:00:41.331, 01:00:47.420, 02:00:43.652: each is the close of the hour that just ended.
    assert [r.open_time for r in hourly] == [
        datetime(2023, 12, 31, 23, tzinfo=UTC),
        datetime(2024, 1, 1, 0, tzinfo=UTC),
        datetime(2024, 1, 1, 1, tzinfo=UTC),
    ]
    assert [r.close for r in hourly] == [
        Decimal("42261.0406175669"),
        Decimal("42493.2764087546"),
        Decimal("42654.0731066594"),
    ]
    assert all(r.open == r.close for r in hourly)

    daily = market_chart_to_candles(
        samples["market_chart"]["response"], timeframe=1440, now=datetime(2024, 4, 1, 15, 1, 22, tzinfo=UTC)
    ).rows
    # Daily points sit at 00:00:00 exactly: each closes the day before; 15:01:22 is today's live price.
    assert [(r.open_time.day, r.closed) for r in daily] == [(30, True), (31, True), (1, False)]
    assert daily[1].close == Decimal("71246.9514406015")
    assert daily[2].open == daily[2].close == Decimal("68887.7495158568")


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
    stored = bars(btc)
    assert progress == [(n, 5) for n in range(1, 6)]
    stored = bars(btc)
    assert stored[0][0] == start
    assert stored[-1][0] == end - timedelta(hours=1)
    refined_from = datetime(2026, 9, 23, 13, tzinfo=UTC)  # the first whole bar /ohlc?days=2 covers
    for open_time, o, h, low, c in stored[:: 24 * 30]:
        # one sample per bar, taken just after the bar ENDS: its close, as Kraken's close for that bar
        assert open_time < refined_from
        assert o == h == low == c == close_price(open_time), open_time
    # The last two days come from /ohlc's 30-minute candles: a true open (the previous close) and range.
    assert report.refined == 47
    for open_time, o, h, low, c in [row for row in stored if row[0] >= refined_from]:
        assert (o, c) == (close_price(open_time - timedelta(hours=1)), close_price(open_time)), open_time
        assert (h, low) == (max(o, c), min(o, c)), open_time
    assert set(Candle.objects.values_list("source", "closed", "volume", "trades")) == {
        ("coingecko", True, Decimal(0), None)
    }
    requests = fake.calls("market_chart_range")
    assert len(requests) == 5
    spans = [(int(r.params["from"]), int(r.params["to"])) for r in requests]
    assert all(to - frm <= 90 * 86400 for frm, to in spans)
    # each chunk of bars [a, b) asks for the samples in [a + grace, b + grace]
    assert spans[0][0] == int(start.timestamp()) + GRACE_S
    assert spans[-1][1] == int(end.timestamp()) + GRACE_S
    assert all(a[1] == b[0] for a, b in itertools.pairwise(spans))

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
    run(btc, client, days=40, timeframe=1440)
    stored = bars(btc, 1440)
    assert len(stored) == 39  # 2026-08-17 … 2026-09-24; today's bar is still forming
    # Each day's samples visit 1000 + 10*(h*7 mod 24). A day's bar holds its samples h=1 … 23 and the next
    # day's h=0 one (00:00:xx, its close): open h=1 → 1070, high h=17 → 1230, low = close = h=0 → 1000.
    older = [row for row in stored if row[0] < datetime(2026, 8, 27, tzinfo=UTC)]
    assert {row[1:] for row in older} == {(Decimal(1070), Decimal(1230), Decimal(1000), Decimal(1000))}
    # The last 30 days come from /ohlc's 4-hour candles, which also hold the day's own h=0 price: open 1000.
    recent = [row for row in stored if row[0] >= datetime(2026, 8, 27, tzinfo=UTC)]
    assert {row[1:] for row in recent} == {(Decimal(1000), Decimal(1230), Decimal(1000), Decimal(1000))}
    # the last day's bar closes with the 09-25 00:00:xx sample, not the 09-24 23:00:xx one
    last_day = datetime(2026, 9, 24, tzinfo=UTC)
    assert stored[-1][0] == last_day
    assert stored[-1][4] == close_price(last_day, 1440) != close_price(last_day + timedelta(hours=22))


def test_fifteen_minute_bars_from_the_last_day_of_five_minute_samples(btc, client, fake):
    fake.series("bitcoin", price=lambda ms: 200.0 + (ms // 300_000) % 7)
    run(btc, client, days=1, timeframe=15)
    stored = bars(btc, 15)
    assert len(stored) == 95
    open_time = stored[10][0]
    # the samples at about +5, +10 and +15 minutes; the last one, just after the bar's end, is its close
    prices = [200.0 + (sample_ms(open_time + timedelta(minutes=m)) // 300_000) % 7 for m in (5, 10, 15)]
    assert stored[10][1:] == tuple(Decimal(str(p)) for p in (prices[0], max(prices), min(prices), prices[-1]))
    with pytest.raises(ValueError, match="5-minute samples for the last day only"):
        run(btc, client, days=2, timeframe=15)


def test_rerun_adds_nothing_and_a_later_run_adds_only_new_bars(btc, client, fake):
    first = run(btc, client, days=200)
    assert first.inserted == 200 * 24 - 1
    calls = len(fake.calls("market_chart_range"))

    again = run(btc, client, days=200)
    assert (again.inserted, again.chunks, again.resumed_from, again.refined) == (0, 0, first.end, 0)
    assert len(fake.calls("market_chart_range")) == calls
    assert Candle.objects.filter(instrument=btc).count() == first.inserted

    tomorrow = NOW + timedelta(days=1)
    fake.set_now(tomorrow)
    later = run(btc, client, days=200, now=tomorrow)
    assert later.inserted == 24
    assert later.chunks == 1
    assert int(fake.calls("market_chart_range")[-1].params["from"]) == int(first.end.timestamp()) + GRACE_S
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
    assert int(fake.calls()[-3].params["from"]) == int(report.resumed_from.timestamp()) + GRACE_S
    assert report.inserted == 200 * 24 - 1 - 90 * 24
    stored = bars(btc)
    assert len(stored) == len({row[0] for row in stored}) == 200 * 24 - 1
    assert stored[0][0] == report.start
    assert stored[-1][0] == report.end - timedelta(hours=1)


def test_rate_limit_honours_retry_after_then_succeeds(btc, client, fake, sleeps):
    fake.rate_limit(times=2, retry_after=7)
    report = run(btc, client, days=10)
    assert sleeps == [7.0, 7.0]
    assert [r.status for r in fake.calls()] == [429, 429, 200, 200]  # market_chart, then /ohlc
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
    # the sample at base + h is the close of the bar opening at base + h - 1
    assert not stored_times & {base + timedelta(hours=h - 1) for h in range(len(bad))}
    assert base + timedelta(hours=len(bad) - 1) in stored_times
    assert AuditEvent.objects.get(action="history.backfilled").details["dropped"] == expected


def test_duplicated_and_out_of_order_points_give_the_same_bars(universe, client, fake):
    fake.series("bitcoin", price=hourly_price, duplicate_every=3, shuffle=True)
    messy = run(universe["BTC/USD"], client, days=40, timeframe=240)
    clean = run(universe["ETH/USD"], client, days=40, timeframe=240, coin="ethereum")
    assert messy.duplicates > 0
    assert clean.duplicates == 0
    assert bars(universe["BTC/USD"], 240) == bars(universe["ETH/USD"], 240)
    # A 4-hour bar older than /ohlc's 30 days, built from samples: h=1..4 → 1070, 1140, 1210, 1040
    # (h*7 mod 24); 04:00:xx closes it.
    bar = Candle.objects.get(
        instrument=universe["BTC/USD"], timeframe=240, open_time=datetime(2026, 8, 20, tzinfo=UTC)
    )
    assert (bar.open, bar.high, bar.low, bar.close) == (
        Decimal(1070),
        Decimal(1210),
        Decimal(1040),
        Decimal(1040),
    )


def test_gaps_stay_gaps(btc, client, fake):
    gap_start = datetime(2026, 9, 21, 3, tzinfo=UTC)
    gap = (int(gap_start.timestamp() * 1000), int((gap_start + timedelta(hours=5)).timestamp() * 1000))
    fake.series("bitcoin", price=hourly_price, gaps=[gap])
    report = run(btc, client, days=10)
    assert report.inserted == 10 * 24 - 1 - 5
    # no samples stamped 03:00 … 07:00: the bars those would close (02:00 … 06:00) stay missing
    missing = (gap_start - timedelta(hours=1), gap_start + timedelta(hours=4))
    assert not Candle.objects.filter(open_time__gte=missing[0], open_time__lt=missing[1]).exists()
    assert Candle.objects.filter(open_time__in=[missing[0] - timedelta(hours=1), missing[1]]).count() == 2


def test_a_chunk_answered_daily_instead_of_hourly_fails_and_stores_nothing(btc, client, fake):
    fake.inject("coarse", step=DAY, after=1)  # the second 90-day chunk comes back daily
    with pytest.raises(CoinGeckoError, match=r"expected samples about 60 min apart, got 1440 min") as error:
        run(btc, client, days=200)
    assert "market_chart/range" in str(error.value)
    assert "nothing from this chunk was stored" in str(error.value)
    assert Candle.objects.filter(instrument=btc).count() == 90 * 24  # the first chunk only
    interrupted = AuditEvent.objects.get(action="history.backfill_interrupted")
    assert (interrupted.details["chunks_done"], interrupted.details["inserted"]) == (1, 90 * 24)
    assert "1440 min" in interrupted.details["error"]

    report = run(btc, client, days=200)  # the failed chunk is not counted complete: fetched again
    assert report.resumed_from == report.start + timedelta(days=90)
    assert report.inserted == 200 * 24 - 1 - 90 * 24
    assert Candle.objects.filter(instrument=btc).count() == 200 * 24 - 1


def test_a_last_day_chunk_answered_hourly_instead_of_five_minutely_fails(btc, client, fake):
    fake.inject("coarse", step=HOUR)
    with pytest.raises(
        CoinGeckoError, match=r"expected samples about 5 min apart, got 60\.1 min \(median of 24 points\)"
    ):
        run(btc, client, days=1, timeframe=15)
    assert not Candle.objects.filter(instrument=btc).exists()
    assert expected_spacing(15) == timedelta(minutes=5)
    assert expected_spacing(60) == expected_spacing(1440) == timedelta(hours=1)
    assert run(btc, client, days=1, timeframe=15).inserted == 95  # the next, proper answer is taken


def test_the_newest_bar_waits_for_its_closing_sample(btc, client, fake):
    just_after = datetime(2026, 9, 25, 12, 1, 30, tzinfo=UTC)  # 12:00:xx sample may not be there yet
    fake.set_now(just_after)
    report = run(btc, client, days=2, now=just_after)
    assert report.end == datetime(2026, 9, 25, 11, tzinfo=UTC)
    assert bars(btc)[-1][0] == datetime(2026, 9, 25, 10, tzinfo=UTC)  # closed by the 11:00:xx sample
    assert bars(btc)[-1][4] == close_price(datetime(2026, 9, 25, 10, tzinfo=UTC))
    later = datetime(2026, 9, 25, 12, 2, tzinfo=UTC)
    fake.set_now(later)
    assert run(btc, client, days=2, now=later).inserted == 1  # 11:00-12:00, closed by 12:00:xx
    assert bars(btc)[-1][4] == close_price(datetime(2026, 9, 25, 11, tzinfo=UTC))


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


# --- OHLC endpoint: not used in production (decision in trading.marketdata.coingecko) --------------------


def test_ohlc_refines_recent_coingecko_bars_but_never_kraken_ones(btc, client, fake):
    kraken_bar = datetime(2026, 9, 25, 5, tzinfo=UTC)
    candles_upsert(
        instrument=btc,
        timeframe=60,
        rows=[CandleRow(kraken_bar, Decimal(5), Decimal(6), Decimal(4), Decimal(5), Decimal(3))],
        source=Candle.Source.KRAKEN_REST,
    )
    report = run(btc, client, days=3)
    request = fake.calls("ohlc")[0]
    assert request.params == {"vs_currency": "usd", "days": "2"}  # CoinGecko: 1-2 days → 30-minute candles
    assert report.refined == 46  # 47 bars in the two days, less the Kraken one
    kept = Candle.objects.get(instrument=btc, timeframe=60, open_time=kraken_bar)
    assert (kept.source, kept.close) == ("kraken_rest", Decimal(5))
    refined = Candle.objects.get(
        instrument=btc, timeframe=60, open_time=datetime(2026, 9, 25, 10, tzinfo=UTC)
    )
    # Open at the previous close (10:00:xx), close at 11:00:xx, a true range over both.
    assert (refined.open, refined.close) == (
        close_price(refined.open_time - timedelta(hours=1)),
        close_price(refined.open_time),
    )
    assert refined.high == max(refined.open, refined.close)
    assert refined.low == min(refined.open, refined.close)
    untouched = Candle.objects.get(
        instrument=btc, timeframe=60, open_time=datetime(2026, 9, 23, 10, tzinfo=UTC)
    )
    assert untouched.open == untouched.close == close_price(untouched.open_time)  # older than /ohlc's 2 days
    assert run(btc, client, days=3).refined == 0  # nothing refined twice
    assert (
        AuditEvent.objects.filter(action="history.backfilled").latest("seq").details["refined_from_ohlc"] == 0
    )


def test_an_ohlc_answer_coarser_than_documented_fails_loudly(btc, client, fake):
    real = fake._ohlc

    def four_hourly(series, params):  # CoinGecko answering days=2 with 4-hour candles
        return real(series, {**params, "days": "7"})

    fake._ohlc = four_hourly
    with pytest.raises(CoinGeckoError, match="expected 30-minute candles, got 240 min apart"):
        run(btc, client, days=3)
    assert not Candle.objects.filter(instrument=btc).exclude(open=F("close")).exists()  # nothing refined


def test_fake_ohlc_endpoint_close_time_convention(fake):
    """The fake's /ohlc rows are ``[close_ms, o, h, l, c]``: a candle stamped T covers [T - interval, T],
    opening at the price at its open and closing at the price at T (samples just after those times)."""
    answer = httpx.get(f"{fake.url}/coins/bitcoin/ohlc", params={"vs_currency": "usd", "days": 7})
    rows = answer.json()
    assert answer.status_code == 200
    assert len(rows) == 42
    assert all(b[0] - a[0] == 4 * HOUR_MS for a, b in itertools.pairwise(rows))
    assert rows[-1][0] == int(datetime(2026, 9, 25, 12, tzinfo=UTC).timestamp() * 1000)  # last close ≤ NOW
    opened_ms = rows[0][0] - 4 * HOUR_MS
    assert rows[0][1] == hourly_price(opened_ms)
    assert rows[0][4] == hourly_price(rows[0][0])
    thirty = httpx.get(f"{fake.url}/coins/bitcoin/ohlc", params={"vs_currency": "usd", "days": 1}).json()
    assert {b[0] - a[0] for a, b in itertools.pairwise(thirty)} == {30 * 60_000}
