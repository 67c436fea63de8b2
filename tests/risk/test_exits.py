from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk.engine import (
    Distance,
    ExitReason,
    ExitRule,
    RiskInputError,
    RiskPolicy,
    breakeven_price,
    evaluate_bar,
    plan_exits,
    ratchet,
)
from tests.risk.builders import BTC, FEES
from trading.matching import fee_for

SLIPPAGE = D("0.05")


def plan(policy=None, entry=D(20000), atr=D(300)):
    return plan_exits(
        policy=policy or RiskPolicy(), pair=BTC, entry_price=entry, fees=FEES, slippage_pct=SLIPPAGE, atr=atr
    )


def test_stop_and_take_profit_from_atr_multiples():
    levels = plan()
    assert levels.stop_price == D(19400)  # 20,000 - 2 x 300
    assert levels.take_profit_price == D(20900)  # 20,000 + 3 x 300, above the fee floor below
    assert levels.trail_distance == D(750)  # 2.5 x 300, fixed at entry


def test_a_take_profit_clears_round_trip_fees_and_the_minimum_edge():
    # A 0.5 % take-profit on 20,000 would be 20,100: below what the fees take.
    policy = RiskPolicy(
        stop_loss=ExitRule(Distance.PERCENT, D("0.25")), take_profit=ExitRule(Distance.PERCENT, D("0.5"))
    )
    levels = plan(policy)
    # buy 1 BTC at 20,000: cost 20,000 + 0.40 % fee 80 = 20,080
    # breakeven sell price P_b: P_b x (1 - 0.0040 fee - 0.0005 slippage) = 20,080 → P_b = 20,170.7685…
    assert breakeven_price(entry_price=D(20000), fees=FEES, slippage_pct=SLIPPAGE).quantize(D("0.0001")) == (
        D("20170.7685")
    )
    # with the 0.10 % minimum edge: 20,170.7685 x 1.001 = 20,190.9392 → up to the 0.1 tick: 20,191.0
    assert levels.take_profit_price == D("20191.0")
    # the arithmetic, with Kraken's fee rounding: sell 1 BTC at the take-profit minus slippage
    filled = levels.take_profit_price * (1 - SLIPPAGE / 100)  # 20,180.9045
    proceeds = filled - fee_for(filled, FEES.taker_pct)  # 20,180.9045 - 80.7237 = 20,100.1808
    cost = D(20000) + fee_for(D(20000), FEES.taker_pct)  # 20,080
    assert proceeds - cost == D("20.1808")
    assert proceeds - cost >= cost * D("0.001")  # ≥ 0.10 % of the cost: 20.08


def test_the_stop_rounds_towards_the_price():
    levels = plan(atr=D("123.456"))  # 20,000 - 246.912 = 19,753.088 → 19,753.1
    assert levels.stop_price == D("19753.1")


def test_bad_inputs_are_refused():
    with pytest.raises(RiskInputError, match="volatility"):
        plan(atr=D(0))
    with pytest.raises(RiskInputError, match="at or below zero"):
        plan(atr=D(20000))
    with pytest.raises(RiskInputError, match="entry price"):
        plan(entry=D("NaN"))


def test_stop_take_profit_and_trailing_signals():
    levels = plan()
    stopped = evaluate_bar(levels, low=D(19300), high=D(20100))
    assert stopped.signal.reason == ExitReason.STOP_LOSS
    assert stopped.signal.trigger_price == D(19400)
    assert "through the stop-loss at 19400" in stopped.signal.message

    both = evaluate_bar(levels, low=D(19000), high=D(21000))
    assert both.signal.reason == ExitReason.STOP_LOSS  # the worse case inside one bar

    taken = evaluate_bar(levels, low=D(20000), high=D(20950))
    assert taken.signal.reason == ExitReason.TAKE_PROFIT

    quiet = evaluate_bar(levels, low=D(20500), high=D(20800))
    assert quiet.signal is None
    assert quiet.plan.stop_price == D(20050)  # 20,800 - 750: ratcheted above the initial 19,400
    trailed = evaluate_bar(quiet.plan, low=D(20040), high=D(20100))
    assert trailed.signal.reason == ExitReason.TRAILING_STOP


def test_a_percent_trail_follows_the_high_water_mark():
    policy = RiskPolicy(trailing=ExitRule(Distance.PERCENT, D(1)))
    levels = ratchet(plan(policy), high=D(20500))
    assert levels.stop_price == D(20295)  # 20,500 x 0.99


def test_without_trailing_the_stop_stays():
    levels = ratchet(plan(RiskPolicy(trailing_enabled=False)), high=D(25000))
    assert levels.stop_price == D(19400)
    assert levels.high_water == D(25000)


prices = st.decimals(min_value=D(1000), max_value=D(40000), places=1)


@settings(max_examples=200, deadline=None)
@given(
    bars=st.lists(st.tuples(prices, prices), min_size=1, max_size=40),
    atr=st.decimals(min_value=D(1), max_value=D(900), places=2),
    percent_trail=st.booleans(),
)
def test_a_trailing_stop_never_loosens(bars, atr, percent_trail):
    trail = ExitRule(Distance.PERCENT, D(2)) if percent_trail else ExitRule(Distance.ATR, D("2.5"))
    levels = plan(RiskPolicy(trailing=trail), atr=atr)
    for a, b in bars:
        before = levels.stop_price
        levels = ratchet(levels, high=max(a, b))
        assert levels.stop_price >= before
        evaluation = evaluate_bar(levels, low=min(a, b), high=max(a, b))
        assert evaluation.plan.stop_price >= levels.stop_price
        levels = evaluation.plan
