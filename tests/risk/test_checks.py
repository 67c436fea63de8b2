"""One example per reason code of the pre-trade check, plus the accept path and the exit exemptions."""

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal as D

import pytest

from risk.engine import (
    Code,
    Mode,
    OrderIntent,
    PriceQuote,
    RiskPolicy,
    SwitchState,
    Verdict,
    check_order,
)
from risk.engine.killswitch import Status
from tests.risk.builders import NOW, PAIRS, pair, snapshot
from trading.brokers.base import Side

POLICY = RiskPolicy()
LATCHED = SwitchState(status=Status.TRIPPED, tripped_on=NOW.date(), tripped_at=NOW, reason="drawdown 3 %")
HALTED = SwitchState(halted=True, halt_reason="director's call")


def buy(quantity="0.05", symbol="BTC/USD", edge="2", **changes):
    return OrderIntent(
        symbol=symbol, side=Side.BUY, quantity=D(quantity), expected_edge_pct=D(edge), **changes
    )


def sell(quantity="0.05", symbol="BTC/USD"):
    return OrderIntent(symbol=symbol, side=Side.SELL, quantity=D(quantity))


def check(intent, policy=POLICY, **snapshot_changes):
    return check_order(policy=policy, snapshot=snapshot(**snapshot_changes), intent=intent)


def test_a_buy_within_every_limit_is_accepted():
    decision = check(buy())
    assert decision.verdict == Verdict.ACCEPT
    assert decision.quantity == D("0.05")
    assert decision.message == "Accepted buy 0.05 BTC/USD."


def test_a_sell_of_held_quantity_is_accepted():
    decision = check(sell(), held={"BTC/USD": D("0.05")})
    assert (decision.verdict, decision.quantity) == (Verdict.ACCEPT, D("0.05"))


#: (reason code, intent, snapshot changes, policy): each a rejection carrying exactly that code.
REJECTIONS = [
    (Code.POLICY_INVALID, buy(), {}, RiskPolicy(max_position_pct=D(50))),
    (Code.INVALID_INPUT, buy(limit_price=D("NaN")), {}, POLICY),
    (Code.INVALID_INPUT, buy(), {"slippage_pct": D("NaN")}, POLICY),
    (Code.INVALID_INPUT, buy(), {"exposures": {"ETH/USD": D("NaN")}}, POLICY),
    (Code.INVALID_QUANTITY, buy("NaN"), {}, POLICY),
    (Code.INVALID_QUANTITY, buy("0"), {}, POLICY),
    (Code.INVALID_QUANTITY, sell("-1"), {}, POLICY),
    (Code.TRADING_DISABLED, buy(), {"trading_enabled": False}, POLICY),
    (Code.MODE_MISMATCH, buy(), {"broker": "kraken"}, POLICY),
    (Code.MODE_MISMATCH, sell(), {"mode": Mode.LIVE, "held": {"BTC/USD": D(1)}}, POLICY),
    (Code.HALTED, buy(), {"switch": HALTED}, POLICY),
    (Code.KILL_SWITCH_LATCHED, buy(), {"switch": LATCHED}, POLICY),
    (Code.RATE_LIMIT, buy(), {"recent_orders": tuple(NOW - timedelta(seconds=s) for s in range(6))}, POLICY),
    (Code.RATE_LIMIT, buy(), {"recent_orders": tuple(NOW - timedelta(minutes=m) for m in range(60))}, POLICY),
    (Code.NOT_IN_UNIVERSE, buy(symbol="DOGE/USD"), {}, POLICY),
    (
        Code.NOT_IN_UNIVERSE,
        buy(symbol="BTC/EUR"),
        {"pairs": {**PAIRS, "BTC/EUR": pair("BTC/EUR", ordermin="0.0001", quote="EUR")}},
        POLICY,
    ),
    (Code.PRICE_MISSING, buy(), {"prices": {}}, POLICY),
    (Code.PRICE_MISSING, buy(), {"prices": {"BTC/USD": PriceQuote(D("NaN"), NOW)}}, POLICY),
    (Code.PRICE_MISSING, buy(), {"prices": {"BTC/USD": PriceQuote(D(0), NOW)}}, POLICY),
    (
        Code.PRICE_STALE,
        buy(),
        {"prices": {"BTC/USD": PriceQuote(D(20000), NOW - timedelta(minutes=6))}},
        POLICY,
    ),
    (Code.PRICE_STALE, buy(), {"prices": {"BTC/USD": PriceQuote(D(20000), None)}}, POLICY),
    (Code.EQUITY_MISSING, buy(), {"equity": None}, POLICY),
    (Code.EQUITY_MISSING, buy(), {"equity": D("NaN")}, POLICY),
    (Code.BALANCE_MISSING, buy(), {"available_usd": None}, POLICY),
    (Code.BALANCE_MISSING, sell(), {"held": None}, POLICY),
    (Code.EDGE_MISSING, buy(edge="NaN"), {}, POLICY),
    (Code.EDGE_MISSING, OrderIntent("BTC/USD", Side.BUY, D("0.05")), {}, POLICY),
    # 0.95 % expected - (2 x 0.40 % fees + 2 x 0.05 % slippage) = 0.05 % < 0.10 % minimum
    (Code.EDGE_TOO_SMALL, buy(edge="0.95"), {}, POLICY),
    (Code.BELOW_ORDERMIN, buy("0.00005"), {}, POLICY),
    (Code.BELOW_ORDERMIN, sell("0.00005"), {"held": {"BTC/USD": D(1)}}, POLICY),
    (
        Code.BELOW_COSTMIN,
        buy("0.0002"),
        {"pairs": {**PAIRS, "BTC/USD": pair("BTC/USD", ordermin="0.0001", costmin="5")}},
        POLICY,
    ),
]


@pytest.mark.parametrize(("code", "intent", "changes", "policy"), REJECTIONS)
def test_each_rejection_carries_its_code_and_a_sentence(code, intent, changes, policy):
    decision = check(intent, policy, **changes)
    assert decision.verdict == Verdict.REJECT
    assert decision.quantity == 0
    assert code in decision.codes
    assert decision.message.startswith(f"Rejected {intent.side}")
    assert all(finding.message in decision.message for finding in decision.reasons)


def test_all_entry_problems_are_reported_together():
    decision = check(buy(edge="0.1"), switch=LATCHED, prices={}, available_usd=None)
    assert set(decision.codes) == {
        Code.KILL_SWITCH_LATCHED,
        Code.PRICE_MISSING,
        Code.BALANCE_MISSING,
        Code.EDGE_TOO_SMALL,
    }


def test_lot_precision_is_a_resize_down():
    decision = check(buy("0.123456789"), exposures={}, policy=RiskPolicy(max_position_pct=D(30)))
    assert decision.verdict == Verdict.RESIZE
    assert decision.quantity == D("0.12345678")
    assert decision.codes == (Code.LOT_PRECISION,)


def test_insufficient_funds_resizes_to_what_the_cash_pays_with_the_fee():
    # price with slippage 20,000 x 1.0005 = 20,010; (500 - 0.0001) / (20,010 x 1.004) = 0.02488794 BTC
    decision = check(buy(), available_usd=D(500))
    assert decision.verdict == Verdict.RESIZE
    assert decision.codes == (Code.INSUFFICIENT_FUNDS,)
    assert decision.quantity == D("0.02488794")
    notional = decision.quantity * D(20010)
    assert notional + (notional * D("0.004")).quantize(D("0.0001"), rounding="ROUND_CEILING") <= D(500)


def test_pair_limit_resizes_to_the_room_left():
    # 20 % of 10,000 = 2,000; 1,900 held → 100 USD room at 20,010 = 0.00499750 BTC
    decision = check(buy(), exposures={"BTC/USD": D(1900)})
    assert decision.verdict == Verdict.RESIZE
    assert decision.codes == (Code.PAIR_LIMIT,)
    assert decision.quantity == D("0.00499750")


def test_group_limit_counts_correlated_pairs_together():
    # group BTC+ETH: 35 % of 10,000 = 3,500; ETH holds 3,000 → 500 USD room at 20,010 = 0.02498750 BTC
    decision = check(buy(), exposures={"ETH/USD": D(3000)})
    assert decision.verdict == Verdict.RESIZE
    assert decision.codes == (Code.GROUP_LIMIT,)
    assert decision.quantity == D("0.02498750")
    # SOL is in its own group: the ETH exposure does not constrain it
    assert check(buy("10", symbol="SOL/USD"), exposures={"ETH/USD": D(3000)}).verdict == Verdict.ACCEPT


def test_a_full_pair_is_a_reject_not_a_zero_order():
    decision = check(buy(), exposures={"BTC/USD": D(2000)})
    assert decision.verdict == Verdict.REJECT
    assert decision.codes == (Code.PAIR_LIMIT, Code.BELOW_ORDERMIN, Code.BELOW_COSTMIN)


def test_a_sell_never_exceeds_the_held_quantity():
    decision = check(sell("1"), held={"BTC/USD": D("0.3")})
    assert (decision.verdict, decision.quantity, decision.codes) == (
        Verdict.RESIZE,
        D("0.3"),
        (Code.SELL_EXCEEDS_HOLDING,),
    )
    nothing_held = check(sell("1"), held={})
    assert nothing_held.verdict == Verdict.REJECT
    assert nothing_held.codes == (Code.SELL_EXCEEDS_HOLDING, Code.BELOW_ORDERMIN, Code.BELOW_COSTMIN)


@pytest.mark.parametrize(
    "changes",
    [
        {"switch": LATCHED},
        {"switch": HALTED},
        {"prices": {}},
        {"prices": {"BTC/USD": PriceQuote(D(20000), NOW - timedelta(hours=3))}},
        {"recent_orders": tuple(NOW - timedelta(seconds=s) for s in range(10))},
        {"equity": None, "available_usd": None},
        {"trading_enabled": False},
    ],
    ids=["latched", "halted", "no-price", "stale-price", "rate", "no-equity", "trading-disabled"],
)
def test_exits_are_allowed_when_entries_are_not(changes):
    held = {"BTC/USD": D("0.05")}
    policy = replace(POLICY, max_position_pct=D(50))  # even an invalid policy does not trap a position
    decision = check(sell(), policy, held=held, **changes)
    assert decision.verdict == Verdict.ACCEPT


def test_every_code_has_an_example():
    shown = {code for code, *_ in REJECTIONS} | {
        Code.LOT_PRECISION,
        Code.INSUFFICIENT_FUNDS,
        Code.PAIR_LIMIT,
        Code.GROUP_LIMIT,
        Code.SELL_EXCEEDS_HOLDING,
        Code.VOLATILITY_INVALID,  # test_sizing.test_bad_inputs_fail_closed
        Code.VOLATILITY_LIMIT,  # test_sizing.test_the_volatility_target_caps_the_position
        Code.BUYING_POWER_LIMIT,  # test_sizing.test_the_buying_power_cap_includes_the_taker_fee
    }
    assert shown == set(Code)
