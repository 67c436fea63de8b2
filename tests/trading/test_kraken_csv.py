"""Kraken OHLCVT import: bad lines never stored; the real hourly file resamples to the real daily file."""

from collections import defaultdict
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.models import AuditEvent
from trading.candles import floor_time
from trading.marketdata.kraken_csv import CsvReport, parse_lines
from trading.models import Candle

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "market" / "kraken"
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"needs the shared market data at {SHARED}")


def test_parse_lines_skips_and_counts_bad_lines():
    lines = [
        "1381093200,122.0,122.0,122.0,122.0,0.1,1",
        "1381093200,122.0,121.0,122.0,122.0,0.1,1",  # high below low
        "1381096800,NaN,123,121,122,0.1,1",
        "1381100400,122,123,121,122,0.1",  # 6 fields
        "1381100401,122,123,121,122,0.1,1",  # not on the hour
        "",
        "1381104000,-5,123,121,122,0.1,1",
        "1381107600,122.5,123,121,122,0.5,3",
    ]
    report = CsvReport()
    rows = list(parse_lines(lines, minutes=60, report=report))
    assert [row.open_time.isoformat() for row in rows] == [
        "2013-10-06T21:00:00+00:00",
        "2013-10-07T01:00:00+00:00",
    ]
    assert rows[1].open == Decimal("122.5")
    assert rows[1].trades == 3
    assert report.rows == 2
    assert sum(report.skipped.values()) == 5
    assert report.skipped["expected … fields, found …"] == 1
    assert report.examples[0].startswith("line 2: inconsistent OHLC")


def test_import_is_idempotent_and_audited(universe, tmp_path, capsys):
    path = tmp_path / "XBTUSD_60.csv"
    path.write_text("1381093200,122.0,122.0,122.0,122.0,0.1,1\n1381096800,123,124,121,122,2.5,4\nbad line\n")
    call_command("import_kraken_csv", str(path), "--pair", "XBTUSD", "--timeframe", "60")
    first = capsys.readouterr().out
    assert "2 rows, 2 inserted, 0 updated, 1 skipped" in first
    call_command("import_kraken_csv", str(path), "--pair", "XBTUSD", "--timeframe", "60")
    assert "2 rows, 0 inserted, 2 updated, 1 skipped" in capsys.readouterr().out
    assert Candle.objects.filter(instrument=universe["BTC/USD"], timeframe=60).count() == 2
    assert AuditEvent.objects.filter(action="history.imported").count() == 2


def test_unknown_pair_is_a_clear_error(universe, tmp_path):
    path = tmp_path / "EURUSD_60.csv"
    path.write_text("")
    with pytest.raises(CommandError, match=r"not in the spot USD universe; known: .*XBTUSD"):
        call_command("import_kraken_csv", str(path), "--pair", "EURUSD", "--timeframe", "60")


@needs_shared
def test_hourly_import_resamples_to_krakens_daily_bars(universe):
    call_command("import_kraken_csv", str(SHARED / "XBTUSD_60.csv"), "--pair", "XBTUSD", "--timeframe", "60")
    days = defaultdict(list)
    rows = Candle.objects.filter(instrument=universe["BTC/USD"], timeframe=60).order_by("open_time")
    assert rows.count() == 70_253
    for bar in rows.values_list("open_time", "open", "high", "low", "close", "volume", "trades").iterator(
        2000
    ):
        days[floor_time(bar[0], 1440)].append(bar)

    compared = 0
    for line in (SHARED / "XBTUSD_1440.csv").read_text().splitlines():
        fields = line.split(",")
        day = datetime.fromtimestamp(int(fields[0]), tz=UTC)
        bars = days.get(day, [])
        if len(bars) != 24:
            continue  # hours without trades are absent from the hourly file: only full days compare
        daily = [Decimal(value) for value in fields[1:6]]
        assert bars[0][1] == daily[0], day
        assert max(bar[2] for bar in bars) == daily[1], day
        assert min(bar[3] for bar in bars) == daily[2], day
        assert bars[-1][4] == daily[3], day
        # Hourly volumes are rounded to 8 decimals; the daily file keeps 10.
        assert abs(sum(bar[5] for bar in bars) - daily[4]) <= Decimal("0.000001"), day
        assert sum(bar[6] for bar in bars) == int(fields[6]), day
        compared += 1
    assert compared >= 1816  # the README's cross-check: every full day of 2018-2022, and more


def test_a_file_of_another_timeframe_is_refused_before_anything_is_stored(universe, tmp_path):
    daily = tmp_path / "SOLUSD_1440.csv"
    daily.write_text("1640995200,170,180,160,175,10,5\n1641081600,175,185,165,170,11,6\n")
    with pytest.raises(
        CommandError, match=r"holds 1440-minute bars .*not 60-minute ones; nothing was imported"
    ):
        call_command("import_kraken_csv", str(daily), "--pair", "SOLUSD", "--timeframe", "60")
    unnamed = tmp_path / "sol.csv"  # no Kraken file name to go by: the data itself gives it away
    unnamed.write_text(daily.read_text())
    with pytest.raises(CommandError, match=r"closest two bars in sol.csv are 1440 minutes apart"):
        call_command("import_kraken_csv", str(unnamed), "--pair", "SOLUSD", "--timeframe", "60")
    hourly = tmp_path / "hours.csv"
    hourly.write_text("1640995200,1,1,1,1,1,1\n1640998800,1,1,1,1,1,1\n1641002400,1,1,1,1,1,1\n")
    with pytest.raises(CommandError, match=r"2 of 3 bars in hours.csv are not aligned to 1440 minutes"):
        call_command("import_kraken_csv", str(hourly), "--pair", "SOLUSD", "--timeframe", "1440")
    assert not Candle.objects.exists()


def test_repeated_times_are_reported_and_the_last_line_kept(universe, tmp_path, capsys):
    path = tmp_path / "XBTUSD_60.csv"
    path.write_text(
        "1381093200,122,122,122,122,0.1,1\n1381096800,123,124,121,122,2.5,4\n1381093200,130,131,129,130,1,2\n"
    )
    call_command("import_kraken_csv", str(path), "--pair", "XBTUSD", "--timeframe", "60")
    assert "1 repeated times (the last line kept)" in capsys.readouterr().out
    assert Candle.objects.get(open_time=datetime.fromtimestamp(1381093200, tz=UTC)).close == Decimal(130)
    assert AuditEvent.objects.get(action="history.imported").details["duplicates"] == 1
