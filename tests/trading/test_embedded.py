"""Embedded mode's market data (history dir, backfill, or labelled synthetic history), the replay clock, and
the commands `make run` chains."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal as D
from itertools import pairwise
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.actors import SystemActor
from governance.models import AuditEvent
from trading.candles import CandleRow
from trading.clock import platform_now
from trading.marketdata.synthetic import synthetic_ohlcvt
from trading.models import Balance, Candle
from trading.services import candles_upsert
from trading.services.embedded import (
    BACKFILL,
    HISTORY_DIR,
    SYNTHETIC,
    EmbeddedDataError,
    embedded_market_data_prepare,
    synthetic_data_present,
)

ACTOR = SystemActor("embedded_setup")
NOW = datetime(2026, 11, 21, 14, 35, tzinfo=UTC)
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "market" / "kraken"


def test_synthetic_bars_are_seeded_well_formed_and_end_with_the_last_closed_bar():
    first = synthetic_ohlcvt(["BTC", "ETH"], end=NOW, bars=500)
    assert first == synthetic_ohlcvt(["BTC", "ETH"], end=NOW, bars=500)  # seeded
    assert first != synthetic_ohlcvt(["BTC", "ETH"], end=NOW, bars=500, seed=8)
    for lines in first.values():
        rows = [line.split(",") for line in lines]
        times = [int(row[0]) for row in rows]
        assert times[-1] == int(datetime(2026, 11, 21, 13, 0, tzinfo=UTC).timestamp())  # 14:00 still forms
        assert {b - a for a, b in pairwise(times)} == {3600}
        for _, o, h, lo, c, v, n in rows:
            assert float(h) >= max(float(o), float(c)) >= min(float(o), float(c)) >= float(lo) > 0
            assert float(v) > 0
            assert int(n) >= 1


def prepare(universe, tmp_path, **kwargs):
    values = {
        "actor": ACTOR,
        "instruments": [universe["BTC/USD"], universe["ETH/USD"]],
        "timeframe": 60,
        "work_dir": tmp_path / "embedded",
        "history_dir": None,
        "history_bars": 400,
        "replay_bars": 48,
        "now": NOW,
        "online": lambda: False,
    }
    return embedded_market_data_prepare(**(values | kwargs))


def test_offline_without_history_files_the_history_is_generated_and_labelled_synthetic(universe, tmp_path):
    data = prepare(universe, tmp_path)
    assert data.kind == SYNTHETIC
    assert data.synthetic
    assert "SYNTHETIC" in data.note
    btc = universe["BTC/USD"]
    stored = Candle.objects.filter(instrument=btc, timeframe=60)
    assert stored.count() == 400
    assert set(stored.values_list("source", flat=True)) == {Candle.Source.SYNTHETIC}
    assert synthetic_data_present() is True
    replay = data.replay_files["BTC/USD"].read_text().splitlines()
    assert len(replay) == data.replay_bars["BTC/USD"] == 48
    newest = stored.order_by("-open_time").first().open_time
    assert int(replay[0].split(",")[0]) == int((newest + timedelta(hours=1)).timestamp())  # continues it
    event = AuditEvent.objects.get(action="history.embedded_prepared")
    assert event.details["kind"] == SYNTHETIC
    # A second run keeps what is stored and the replay files.
    again = prepare(universe, tmp_path)
    assert again.kind == SYNTHETIC
    assert stored.count() == 400


def test_history_files_are_split_into_stored_history_and_the_replay(universe, tmp_path):
    history_dir = tmp_path / "kraken"
    history_dir.mkdir()
    for name in ("XBTUSD_60.csv", "ETHUSD_60.csv"):
        lines = (SHARED / name).read_text().splitlines()[-600:]
        (history_dir / name).write_text("\n".join(lines) + "\n")
    data = prepare(universe, tmp_path, history_dir=history_dir)
    assert data.kind == HISTORY_DIR
    assert not data.synthetic
    btc = Candle.objects.filter(instrument=universe["BTC/USD"], timeframe=60)
    assert btc.count() == 400
    assert set(btc.values_list("source", flat=True)) == {Candle.Source.KRAKEN_CSV}
    original = (history_dir / "XBTUSD_60.csv").read_text().splitlines()
    assert data.replay_files["BTC/USD"].read_text().splitlines() == original[-48:]
    assert synthetic_data_present() is False


def test_a_missing_history_file_is_named(universe, tmp_path):
    (tmp_path / "kraken").mkdir()
    (tmp_path / "kraken" / "XBTUSD_60.csv").write_text((SHARED / "XBTUSD_60.csv").read_text())
    with pytest.raises(EmbeddedDataError, match=r"has no ETHUSD_60\.csv"):
        prepare(universe, tmp_path, history_dir=tmp_path / "kraken")


def test_online_the_backfill_is_stored_and_its_newest_bars_moved_to_the_replay(universe, tmp_path):
    def backfill(*, instrument, coin_id, days, timeframe, now):
        start = now.replace(minute=0, second=0, microsecond=0) - timedelta(hours=200)
        rows = [
            CandleRow(start + timedelta(hours=i), D(100 + i), D(101 + i), D(99 + i), D(100 + i), D(5))
            for i in range(200)
        ]
        candles_upsert(instrument=instrument, timeframe=timeframe, rows=rows, source=Candle.Source.COINGECKO)
        return type("Report", (), {"complete": True})()

    data = prepare(universe, tmp_path, online=lambda: True, backfill=backfill)
    assert data.kind == BACKFILL
    assert data.history_bars == {"BTC/USD": 152, "ETH/USD": 152}
    replay = data.replay_files["ETH/USD"].read_text().splitlines()
    assert len(replay) == 48
    assert D(replay[-1].split(",")[4]) == 299  # the newest close, now held back for the replay
    newest = Candle.objects.filter(instrument=universe["ETH/USD"]).order_by("-open_time").first()
    assert int(replay[0].split(",")[0]) == int((newest.open_time + timedelta(hours=1)).timestamp())


def test_the_platform_clock_is_the_replays_in_replay_mode_and_the_wall_clock_live(universe, settings):
    opened = datetime(2024, 3, 1, 10, tzinfo=UTC)
    candles_upsert(
        instrument=universe["BTC/USD"],
        timeframe=60,
        rows=[CandleRow(opened, D(1), D(2), D(1), D(2), D(3))],
        source=Candle.Source.REPLAY,
    )
    settings.AETHER_MARKET_DATA = "replay"
    assert platform_now() == opened + timedelta(hours=1)
    settings.AETHER_MARKET_DATA = "live"
    from django.utils import timezone

    before = timezone.now()
    assert before <= platform_now() <= timezone.now()


def test_the_admin_header_says_when_the_market_data_is_synthetic(universe, firm, client, tmp_path):
    client.force_login(firm.owner)
    assert "SYNTHETIC market data" not in client.get("/admin/").content.decode()
    prepare(universe, tmp_path)
    from django.core.cache import cache

    cache.clear()
    assert "SYNTHETIC market data" in client.get("/admin/").content.decode()


def test_prepare_embedded_funds_each_simulated_account_once_and_writes_the_replay_plan(
    universe, firm, settings, tmp_path
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    settings.EMBEDDED_DIR = tmp_path / "embedded"
    settings.EMBEDDED_HISTORY_BARS = 400
    settings.EMBEDDED_REPLAY_BARS = 24
    settings.AETHER_HISTORY_DIR = None
    from trading.services import embedded

    embedded_online = embedded._coingecko_reachable
    embedded._coingecko_reachable = lambda: False
    try:
        out = io.StringIO()
        call_command("prepare_embedded", "--no-train", stdout=out)
        call_command("prepare_embedded", "--no-train", stdout=io.StringIO())
    finally:
        embedded._coingecko_reachable = embedded_online
    assert "SYNTHETIC" in out.getvalue()
    balances = Balance.objects.filter(broker="sim", asset="USD")
    assert sorted(balances.values_list("account__slug", "total")) == [
        (slug, settings.EMBEDDED_SIM_START_USD) for slug in ("alice", "bob", "firm")
    ]
    plan = json.loads((tmp_path / "embedded" / "plan.json").read_text())
    assert plan["synthetic"] is True
    assert set(plan["replay"]) == {"BTC/USD", "ETH/USD"}


def test_prepare_embedded_is_refused_in_production(settings):
    settings.PRODUCTION = True
    with pytest.raises(CommandError, match="refused with AETHER_ENV=production"):
        call_command("prepare_embedded", "--no-train")


def test_the_feed_resumes_the_replay_after_the_newest_stored_bar(universe, settings, tmp_path):
    from trading.management.commands.run_platform import Command

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    settings.AETHER_MARKET_DATA = "replay"
    settings.EMBEDDED_DIR = tmp_path / "embedded"
    data = prepare(universe, tmp_path)
    (tmp_path / "embedded" / "plan.json").write_text(
        json.dumps({"synthetic": True, "replay": {k: str(v) for k, v in data.replay_files.items()}})
    )
    arguments = Command(stdout=io.StringIO())._feed_arguments()
    newest = Candle.objects.order_by("-open_time").first().open_time
    assert arguments[arguments.index("--since") + 1] == (newest + timedelta(hours=1)).isoformat()
    assert arguments.count("--from-csv") == 2
    speed = float(arguments[arguments.index("--speed") + 1])
    assert speed == 3600 / float(settings.EMBEDDED_SECONDS_PER_BAR)


def test_a_failing_backfill_is_a_clear_error_naming_what_to_do(universe, tmp_path):
    from trading.marketdata.coingecko import CoinGeckoError

    def failing(**kwargs):
        raise CoinGeckoError("HTTP 401: invalid API key (test)")

    with pytest.raises(EmbeddedDataError, match="set AETHER_HISTORY_DIR"):
        prepare(universe, tmp_path, online=lambda: True, backfill=failing)
