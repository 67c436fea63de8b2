"""An account's own Kraken fee rates from TradeVolume, through real ccxt against the fake Kraken server."""

from decimal import Decimal

import pytest

from governance.actors import SystemActor
from governance.models import AuditEvent
from trading.fees import FeeRates, parse_trade_volume
from trading.selectors import fee_rates_for
from trading.services import fee_tier_record, fee_tier_refresh

SYSTEM = SystemActor("tests")


def test_published_schedule_applies_until_the_account_has_its_own_rates(firm, universe):
    assert fee_rates_for(account=firm.company, instrument=universe["BTC/USD"]) == FeeRates(
        Decimal("0.25"), Decimal("0.40")
    )


def test_trade_volume_from_kraken_replaces_the_default_for_that_account_only(
    firm, universe, fake_kraken, make_kraken_client
):
    creds = fake_kraken.add_account(balances={"ZUSD": "1000"}, thirty_day_volume=Decimal("60000"))
    tiers = fee_tier_refresh(actor=SYSTEM, account=firm.company, client=make_kraken_client(creds))
    assert len(tiers) == 3
    request = fake_kraken.requests(endpoint="TradeVolume")[0]
    assert set(request.params["pair"].split(",")) == {"XXBTZUSD", "XETHZUSD", "SOLUSD"}
    # 60k of 30-day volume is the 50k tier: 0.14 % maker, 0.24 % taker.
    assert fee_rates_for(account=firm.company, instrument=universe["BTC/USD"]) == FeeRates(
        Decimal("0.14"), Decimal("0.24")
    )
    assert fee_rates_for(account=firm.alice_account, instrument=universe["BTC/USD"]).taker_pct == Decimal(
        "0.40"
    )
    event = AuditEvent.objects.get(action="fees.updated")
    assert event.account == firm.company
    assert event.details["maker_taker_pct"]["BTC/USD"] == {"before": None, "after": ["0.1400", "0.2400"]}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ({"volume": "0", "fees": {"XXBTZUSD": {"fee": "abc"}}}, "no readable 'fee'"),
        ({"volume": "0", "fees": {"XXBTZUSD": {"fee": "12.5"}}}, "not a plausible rate"),
        ({"volume": "x"}, "not a number"),
        ([], "not an object"),
    ],
)
def test_unreadable_trade_volume_answers_are_refused(answer, message):
    with pytest.raises(ValueError, match=message):
        parse_trade_volume(answer)


def test_a_pair_without_a_maker_rate_pays_its_taker_rate():
    volume = parse_trade_volume({"volume": "5", "fees": {"XXBTZUSD": {"fee": "0.26"}}})
    assert volume.rates["XXBTZUSD"] == FeeRates(Decimal("0.26"), Decimal("0.26"))


def test_pairs_outside_the_universe_are_refused(firm, universe):
    with pytest.raises(ValueError, match="outside the universe: XETHXXBT"):
        fee_tier_record(actor=SYSTEM, account=firm.company, answer={"fees": {"XETHXXBT": {"fee": "0.2"}}})
    assert not AuditEvent.objects.filter(action="fees.updated").exists()
