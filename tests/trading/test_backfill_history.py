"""backfill_history from CoinGecko, end to end through the command and the fake CoinGecko server."""

import pytest
from django.core.management import CommandError, call_command

from governance.models import AuditEvent


def test_backfill_history_from_coingecko_resumes_and_reports(universe, fake_coingecko, capsys, monkeypatch):
    monkeypatch.setattr("trading.marketdata.coingecko.time.sleep", lambda seconds: None)
    call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "30")
    first = capsys.readouterr().out
    assert first.startswith("backfill_history coingecko bitcoin:")
    stored = universe["BTC/USD"].candles.filter(timeframe=60, source="coingecko").count()
    assert stored >= 29 * 24
    call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "30")
    assert universe["BTC/USD"].candles.filter(timeframe=60, source="coingecko").count() == stored
    assert AuditEvent.objects.filter(action="history.backfilled").count() == 2
    with pytest.raises(CommandError, match="unknown coin; give it as ID:SYMBOL"):
        call_command("backfill_history", "--source", "coingecko", "--coin", "dogecoin")
    fake_coingecko.inject("malformed", times=1)
    with pytest.raises(CommandError, match=r"bitcoin: .*re-run to resume"):
        call_command("backfill_history", "--source", "coingecko", "--coin", "bitcoin", "--days", "60")
