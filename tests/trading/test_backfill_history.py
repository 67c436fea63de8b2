"""backfill_history from CoinGecko, end to end through the command and the fake CoinGecko server."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from django.core.management import CommandError, ManagementUtility, call_command

from governance.models import AuditEvent
from tests.fakes.coingecko import default_price, sample_offset_ms


@pytest.mark.parametrize(
    ("now", "expected"),
    [
        # window: bars opening from ceil(now - 30 days) = 08-26 13:00 to floor(now - 2 min) = 09-25 12:00
        # (exclusive): 30 * 24 - 1 = 719 hours. The fake serves one hourly sample per hour, no gaps, so
        # each bar gets exactly one sample, the one just after its end (its close): 719 bars.
        (datetime(2026, 9, 25, 12, 34, 56, tzinfo=UTC), 30 * 24 - 1),
        # 12:01:30 is within the 2-minute close grace: the 11:00-12:00 bar may still get its 12:00:xx
        # closing sample, so the window ends at 11:00 (and still starts at 08-26 13:00): 718 bars.
        (datetime(2026, 9, 25, 12, 1, 30, tzinfo=UTC), 30 * 24 - 2),
    ],
)
def test_backfill_history_from_coingecko_resumes_and_reports(
    universe, fake_coingecko, capsys, monkeypatch, settings, now, expected
):
    monkeypatch.setattr("trading.marketdata.coingecko.time.sleep", lambda seconds: None)
    monkeypatch.setattr("django.utils.timezone.now", lambda: now)
    fake_coingecko.set_now(now)
    settings.AETHER_TIMEFRAME = 60
    call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "30")
    first = capsys.readouterr().out
    assert first.startswith("backfill_history coingecko bitcoin:")
    assert f"{expected} inserted" in first
    candles = universe["BTC/USD"].candles.filter(timeframe=60, source="coingecko").order_by("open_time")
    stored = list(candles.values_list("open_time", "close"))
    assert len(stored) == expected
    start = datetime(2026, 8, 26, 13, tzinfo=UTC)
    assert [moment for moment, _ in stored] == [start + timedelta(hours=h) for h in range(expected)]
    for open_time, close in stored:
        grid = int((open_time + timedelta(hours=1)).timestamp())
        assert close == Decimal(str(default_price(grid * 1000 + sample_offset_ms(grid)))), open_time

    call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "30")
    assert candles.count() == expected
    assert AuditEvent.objects.filter(action="history.backfilled").count() == 2
    with pytest.raises(CommandError, match="unknown coin; give it as ID:SYMBOL"):
        call_command("backfill_history", "--source", "coingecko", "--coin", "dogecoin")
    fake_coingecko.inject("malformed", times=1)
    with pytest.raises(CommandError, match=r"bitcoin: .*re-run to resume"):
        call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "60")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "kraken", "--coin", "bitcoin"], "--coin is for --source coingecko"),
        (["--source", "coingecko", "--pair", "BTC/USD"], "--pair is for --source kraken"),
        (["--source", "coingecko", "--coin", "Ethereum:ETH/USD", "--days", "3"], "not a CoinGecko coin id"),
        (
            ["--source", "coingecko", "--coin", "bitcoin", "--timeframe", "5", "--days", "3"],
            "5-minute timeframe",
        ),
    ],
)
def test_arguments_that_do_not_fit_are_clear_errors(universe, args, message):
    with pytest.raises(CommandError, match=message):
        call_command("backfill_history", *args)


@pytest.mark.parametrize("days", ["0", "-3", "many"])
def test_days_must_be_a_positive_whole_number(universe, days, capsys):
    with pytest.raises(SystemExit):
        ManagementUtility(["manage.py", "backfill_history", "--source", "kraken", "--days", days]).execute()
    assert "argument --days" in capsys.readouterr().err
