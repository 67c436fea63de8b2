"""Candle validation, the upsert rules and Kraken's OHLC answers."""

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trading.candles import BadCandle, floor_time, make_row
from trading.fees import FeeRates, published_rates
from trading.marketdata.kraken_ohlc import OhlcAnswerError, fetch_pages, parse_ohlc_answer
from trading.models import Candle
from trading.selectors import closed_candles
from trading.services import candles_upsert

RECORDED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kraken" / "recorded_2026-09.json"
T0 = datetime(2026, 11, 21, 0, 0, tzinfo=UTC)


def bar(hours: int, close="100", *, closed=True, high=None):
    return make_row(
        open_time=T0 + timedelta(hours=hours),
        open="100",
        high=high or max(Decimal(close), Decimal(100)),
        low=min(Decimal(close), Decimal(100)),
        close=close,
        volume="1.5",
        trades=3,
        closed=closed,
        minutes=60,
    )


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"high": "90"}, "inconsistent OHLC"),
        ({"open": "nan"}, "not finite"),
        ({"low": "0"}, "positive"),
        ({"volume": "-1"}, "negative"),
        ({"open_time": T0 + timedelta(minutes=30)}, "not aligned"),
        ({"open_time": datetime(2026, 11, 21)}, "time zone"),
        ({"close": "abc"}, "not a number"),
        ({"high": "1e25"}, "too large"),
        ({"low": "1e-13", "open": "1e-13", "close": "1e-13", "high": "1e-13"}, "positive"),
        ({"trades": 2**31}, "trade count"),
        ({"trades": float("inf")}, "whole number"),
        ({"trades": "1.5"}, "whole number"),
        ({"trades": "1E+999999999999"}, "too large"),
        ({"high": "1E+999999999999"}, "too large"),
        ({"volume": "-1e30"}, "too large"),
    ],
)
def test_bad_candles_are_refused(fields, message):
    values = {"open_time": T0, "open": "100", "high": "110", "low": "95", "close": "105", "volume": "1"}
    values.update(fields)
    with pytest.raises(BadCandle, match=message):
        make_row(**values, minutes=60)


def test_values_are_rounded_to_the_stored_precision():
    row = make_row(
        open_time=T0,
        open="1.0000000000004",
        high="2",
        low="1",
        close="1.5",
        volume="0.1234567890123456",
        minutes=60,
    )
    assert row.open == Decimal("1.000000000000")
    assert row.volume == Decimal("0.123456789012")


def test_floor_time():
    assert floor_time(datetime(2026, 11, 21, 13, 59, 59, tzinfo=UTC), 60) == datetime(
        2026, 11, 21, 13, tzinfo=UTC
    )
    assert floor_time(datetime(2026, 11, 21, 13, 59, tzinfo=UTC), 1440) == T0


def test_upsert_is_idempotent_dedupes_and_sorts(universe):
    btc = universe["BTC/USD"]
    rows = [bar(2, "101"), bar(0, "99"), bar(1, "100"), bar(2, "102")]  # out of order, duplicate hour 2
    first = candles_upsert(instrument=btc, timeframe=60, rows=rows, source=Candle.Source.KRAKEN_CSV)
    assert (first.inserted, first.updated, first.kept) == (3, 0, 0)
    again = candles_upsert(instrument=btc, timeframe=60, rows=rows, source=Candle.Source.KRAKEN_CSV)
    assert (again.inserted, again.updated) == (0, 3)
    stored = list(Candle.objects.filter(instrument=btc).order_by("open_time").values_list("close", flat=True))
    assert stored == [Decimal("99"), Decimal("100"), Decimal("102")]  # the later duplicate wins


def test_a_forming_bar_never_overwrites_a_closed_one(universe):
    btc = universe["BTC/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=[bar(0, "105")], source=Candle.Source.KRAKEN_REST)
    result = candles_upsert(
        instrument=btc,
        timeframe=60,
        rows=[bar(0, "90", closed=False), bar(1, "95", closed=False)],
        source="kraken_ws",
    )
    assert (result.inserted, result.kept) == (1, 1)
    assert Candle.objects.get(instrument=btc, open_time=T0).close == Decimal("105")
    # The forming bar is stored, marked, and never read as final.
    assert Candle.objects.get(instrument=btc, open_time=T0 + timedelta(hours=1)).closed is False
    assert [c.open_time for c in closed_candles(instrument=btc, timeframe=60)] == [T0]
    # When it closes, it is replaced.
    candles_upsert(instrument=btc, timeframe=60, rows=[bar(1, "96")], source="kraken_ws")
    assert len(closed_candles(instrument=btc, timeframe=60)) == 2


def test_replay_never_overwrites_real_bars(universe):
    btc = universe["BTC/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=[bar(0, "105")], source=Candle.Source.KRAKEN_REST)
    result = candles_upsert(instrument=btc, timeframe=60, rows=[bar(0, "1"), bar(1, "2")], source="replay")
    assert (result.inserted, result.kept) == (1, 1)
    kept = Candle.objects.get(instrument=btc, open_time=T0)
    assert (kept.source, kept.close) == ("kraken_rest", Decimal("105"))


def test_coingecko_never_overwrites_kraken(universe):
    btc = universe["BTC/USD"]
    candles_upsert(instrument=btc, timeframe=60, rows=[bar(0, "105")], source=Candle.Source.KRAKEN_CSV)
    result = candles_upsert(
        instrument=btc, timeframe=60, rows=[bar(0, "99"), bar(1, "98")], source=Candle.Source.COINGECKO
    )
    assert (result.inserted, result.updated, result.kept) == (1, 0, 1)
    assert Candle.objects.get(instrument=btc, open_time=T0).source == "kraken_csv"


@pytest.mark.skipif(not RECORDED.is_file(), reason=f"needs {RECORDED}")
def test_recorded_ohlc_answer_marks_the_forming_bar():
    answer = json.loads(RECORDED.read_text())["rest"]["OHLC_BTCUSD_60"]
    page = parse_ohlc_answer(answer, minutes=60)
    assert [row.closed for row in page.rows] == [True, True, True, False]
    assert page.rows[0].open == Decimal("84001.9")
    assert page.rows[0].volume == Decimal("159.04484404")  # volume, not vwap
    assert page.rows[0].trades == 9205
    assert page.last == int(
        page.rows[-2].open_time.timestamp()
    )  # 'last' is one interval before the forming bar


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"error": ["EQuery:Unknown asset pair"], "result": None}, "Unknown asset pair"),
        ({"error": [], "result": {"XXBTZUSD": []}}, "no 'last'"),
        ({"error": [], "result": {"last": "soon", "XXBTZUSD": []}}, "not a timestamp"),
        ({"error": [], "result": {"last": 1, "A": [], "B": []}}, "exactly one pair"),
    ],
)
def test_unusable_ohlc_answers(answer, message):
    with pytest.raises(OhlcAnswerError, match=message):
        parse_ohlc_answer(answer, minutes=60)


def test_bad_ohlc_rows_are_skipped_not_stored():
    answer = {
        "error": [],
        "result": {
            "XXBTZUSD": [
                [1790348400, "84001.9", "84075.9", "83351.5", "83777.5", "83714.6", "159.0", 9205],
                [1790352000, "NaN", "84097.0", "83706.0", "83732.6", "83909.9", "177.1", 7919],
                [1790355600, "83732.7"],
                [1790359200, "83765.3", "84050.3", "83765.3", "84030.6", "83921.9", "53.7", 2375],
            ],
            "last": 1790355600,
        },
    }
    page = parse_ohlc_answer(answer, minutes=60)
    assert len(page.rows) == 2
    assert len(page.bad) == 2


def test_fetch_pages_follows_the_last_cursor_until_nothing_new():
    calls = []
    pages = [
        {
            "error": [],
            "result": {
                "P": [[3600, "1", "1", "1", "1", "1", "1", 1], [7200, "1", "1", "1", "1", "1", "1", 1]],
                "last": 3600,
            },
        },
        {"error": [], "result": {"P": [[7200, "1", "1", "1", "1", "1", "1", 1]], "last": 3600}},
    ]

    def fetch(since):
        calls.append(since)
        return pages[len(calls) - 1]

    assert len(list(fetch_pages(fetch, minutes=60, since=None))) == 2
    assert calls == [None, 3600]


def test_published_fee_schedule_tiers():
    assert published_rates() == FeeRates(Decimal("0.25"), Decimal("0.40"))
    assert published_rates(Decimal("49999.99")) == FeeRates(Decimal("0.20"), Decimal("0.35"))
    assert published_rates(Decimal("50000")) == FeeRates(Decimal("0.14"), Decimal("0.24"))
    assert published_rates(Decimal("25000000")) == FeeRates(Decimal("0.00"), Decimal("0.10"))
    with pytest.raises(ValueError, match="negative"):
        published_rates(Decimal(-1))


def test_migrate_says_which_candle_store_it_gives(db, capsys):
    from django.core.management import call_command

    call_command("migrate", verbosity=1)
    out = capsys.readouterr().out
    assert "candle store: plain indexed table" in out
