"""The spot USD universe from Kraken's AssetPairs: only USD spot pairs, facts stored, changes reported."""

import copy
import json
from decimal import Decimal
from pathlib import Path

import pytest
from django.core.management import CommandError, call_command

from governance.actors import SystemActor
from governance.models import AuditEvent
from trading.kraken_pairs import PairRejected, parse_asset_pairs, parse_pair
from trading.management.commands.sync_universe import SNAPSHOT
from trading.models import Instrument
from trading.selectors import UniverseError, traded_instruments
from trading.services import universe_sync

RECORDED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "kraken" / "recorded_2026-09.json"
needs_recording = pytest.mark.skipif(not RECORDED.is_file(), reason=f"needs {RECORDED}")
SYSTEM = SystemActor("tests")


def recorded_asset_pairs() -> dict:
    return json.loads(RECORDED.read_text())["rest"]["AssetPairs"]


@needs_recording
def test_recorded_answer_keeps_only_spot_usd_pairs():
    universe = parse_asset_pairs(recorded_asset_pairs())
    assert sorted(pair.symbol for pair in universe.pairs) == ["BTC/USD", "DOGE/USD", "ETH/USD", "SOL/USD"]
    rejected = dict(universe.rejected)
    assert rejected == {"ACAEUR": "quoted in EUR, not USD", "XETHXXBT": "quoted in XBT, not USD"}
    btc = next(pair for pair in universe.pairs if pair.symbol == "BTC/USD")
    assert (btc.kraken_pair, btc.altname, btc.wsname, btc.base_asset) == (
        "XXBTZUSD",
        "XBTUSD",
        "XBT/USD",
        "BTC",
    )
    assert (btc.ordermin, btc.costmin, btc.tick_size) == (Decimal("0.00005"), Decimal("0.5"), Decimal("0.1"))
    assert (btc.pair_decimals, btc.lot_decimals, btc.cost_decimals) == (1, 8, 5)
    assert not hasattr(btc, "leverage_buy")  # margin facts are never carried


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"wsname": None}, "wsname"),
        ({"tick_size": "abc"}, "not a number"),
        ({"tick_size": "0"}, "must be positive"),
        ({"ordermin": "NaN"}, "finite"),
        ({"pair_decimals": "1"}, "pair_decimals"),
        ({"status": "weird"}, "unknown or missing status"),
        ({"aclass_base": "forex"}, "not a spot currency pair"),
        ({"aclass_quote": None}, "not a spot currency pair"),
        ({"status": None}, "missing status"),
    ],
)
def test_malformed_entries_are_rejected_with_the_reason(change, reason):
    entry = json.loads(SNAPSHOT.read_text())["result"]["XXBTZUSD"]
    entry.update(change)
    with pytest.raises(PairRejected, match=reason):
        parse_pair("XXBTZUSD", entry)


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"error": ["EService:Unavailable"]}, "EService:Unavailable"),
        ({"error": [], "result": {}}, "no result"),
        ([], "not a JSON object"),
    ],
)
def test_unusable_answers_are_errors(answer, message):
    with pytest.raises(ValueError, match=message):
        parse_asset_pairs(answer)


def test_sync_from_snapshot_is_idempotent_and_audited(db, capsys):
    call_command("sync_universe", "--from-file")
    assert "3 created" in capsys.readouterr().out
    call_command("sync_universe", "--from-file")
    assert "0 created, 0 changed, 0 delisted, 3 unchanged" in capsys.readouterr().out
    assert sorted(Instrument.objects.values_list("symbol", flat=True)) == ["BTC/USD", "ETH/USD", "SOL/USD"]
    assert AuditEvent.objects.filter(action="universe.synced").count() == 2


def test_a_live_sync_reports_changes_and_delists_what_kraken_dropped(universe):
    answer = json.loads(SNAPSHOT.read_text())
    changed = copy.deepcopy(answer)
    changed["result"]["XXBTZUSD"]["ordermin"] = "0.0001"
    changed["result"]["XETHZUSD"]["status"] = "cancel_only"
    del changed["result"]["SOLUSD"]
    report = universe_sync(actor=SYSTEM, answer=changed, source="kraken_api", delist_missing=True)
    assert report.changed == {
        "BTC/USD": {"ordermin": ["0.000050000000", "0.0001"]},
        "ETH/USD": {"status": ["online", "cancel_only"]},
    }
    assert report.delisted == ["SOL/USD"]
    assert Instrument.objects.get(symbol="SOL/USD").status == "delisted"
    event = AuditEvent.objects.filter(action="universe.synced").latest("seq")
    assert event.details["delisted"] == ["SOL/USD"]
    assert Instrument.objects.get(symbol="BTC/USD").history.count() == 2


def test_an_older_snapshot_never_replaces_newer_live_facts(db, capsys):
    live = json.loads(SNAPSHOT.read_text())
    live["result"]["XXBTZUSD"]["ordermin"] = "0.0001"  # what a live sync after the snapshot said
    universe_sync(actor=SYSTEM, answer=live, source="kraken_api", delist_missing=True)
    call_command("sync_universe", "--from-file")
    out = capsys.readouterr().out
    assert "kept BTC/USD: the facts on record are newer" in out
    assert "3 kept (newer facts on record)" in out
    assert Instrument.objects.get(symbol="BTC/USD").ordermin == Decimal("0.0001")
    assert Instrument.objects.get(symbol="BTC/USD").source == "kraken_api"


def test_a_partial_live_answer_does_not_delist_everything(universe):
    answer = json.loads(SNAPSHOT.read_text())
    del answer["result"]["XETHZUSD"]
    del answer["result"]["SOLUSD"]
    with pytest.raises(ValueError, match="omits 2 of 3 known pairs"):
        universe_sync(actor=SYSTEM, answer=answer, source="kraken_api", delist_missing=True)
    assert not Instrument.objects.filter(status="delisted").exists()


def test_a_snapshot_must_say_when_it_was_recorded(db, tmp_path):
    undated = json.loads(SNAPSHOT.read_text())
    del undated["recorded_at"]
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(undated))
    with pytest.raises(CommandError, match="no recorded_at date"):
        call_command("sync_universe", "--from-file", str(path))
    assert not Instrument.objects.exists()


def test_live_sync_against_kraken_reports_status_changes(universe, fake_kraken, settings, capsys):
    settings.KRAKEN_API_URL = fake_kraken.url
    fake_kraken.set_pair_status("XETHZUSD", "cancel_only")
    call_command("sync_universe")
    out = capsys.readouterr().out
    assert "changed ETH/USD: status online → cancel_only" in out
    assert "created DOGE/USD" in out  # the recording lists DOGE/USD too
    assert "left out XETHXXBT: quoted in XBT, not USD" in out
    assert fake_kraken.requests(endpoint="AssetPairs")
    assert Instrument.objects.get(symbol="ETH/USD").source == "kraken_api"
    with pytest.raises(UniverseError, match="ETH/USD is cancel_only"):
        traded_instruments()


def test_traded_pairs_are_checked_against_the_universe(universe, settings):
    assert [i.symbol for i in traded_instruments()] == ["BTC/USD", "ETH/USD", "SOL/USD"]
    Instrument.objects.filter(symbol="ETH/USD").update(status="cancel_only")
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD", "ETH/BTC", "XBT/USD"]
    with pytest.raises(UniverseError) as excinfo:
        traded_instruments()
    message = str(excinfo.value)
    assert "ETH/USD is cancel_only" in message
    assert "ETH/BTC is not quoted in USD" in message
    assert "XBT/USD is Kraken's legacy name: use BTC/USD" in message


def test_bad_snapshot_file_is_a_clear_error(db, tmp_path):
    bad = tmp_path / "pairs.json"
    bad.write_text("{not json")
    with pytest.raises(CommandError, match="not a JSON AssetPairs answer"):
        call_command("sync_universe", "--from-file", str(bad))
    with pytest.raises(CommandError, match="file not found"):
        call_command("sync_universe", "--from-file", str(tmp_path / "missing.json"))
