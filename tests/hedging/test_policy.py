"""The hedge core's rules, one at a time, with hand-checked numbers."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import numpy as np
import pytest

from hedging.policy import (
    Action,
    HedgeInputError,
    HedgeInputs,
    HedgeParams,
    Mode,
    PerformanceStep,
    account_equity,
    buying_power_cap,
    decide_target,
    drawdown_pct,
    gross_to_sell,
    hedge_performance_of,
    killswitch_recommendation,
    realised_volatility,
    rebalance_plan,
    rolling_volatility,
    strategy_budget,
    target_pct,
    volatility_inputs,
)
from tests.hedging.builders import BTC, ETH, FEES, NOW, SOL, holding, wave

D = Decimal
P = HedgeParams()  # floor 10, ceiling 70, weights 0.6, calm 1.2, turmoil 3, drawdown 2..15, band 10


def plan(target="50", usd="10000", holdings=None, last=None, params=P, slippage="0"):
    return rebalance_plan(
        params=params,
        target_pct=D(target),
        usd=D(usd),
        holdings=holdings if holdings is not None else [holding(ETH, "20", "2000", vol=0.02)],
        fees=FEES,
        now=NOW,
        last_rebalance_at=last,
        slippage_pct=D(slippage),
    )


# --- Target ------------------------------------------------------------------------------------------------


def test_the_target_formula_by_hand():
    # ratio 2.1: s_v = (2.1 - 1.2) / 1.8 = 0.5; drawdown 8.5 %: s_d = (8.5 - 2) / 13 = 0.5;
    # s = 0.6 x 0.5 + 0.6 x 0.5 = 0.6; target = 10 + 60 x 0.6 = 46 %.
    assert target_pct(P, HedgeInputs(D("0.021"), D("0.01"), D("8.5"))) == D("46.00")
    assert target_pct(P, HedgeInputs(0.01, 0.01, D(0))) == D("10")  # calm, no drawdown: the floor
    assert target_pct(P, HedgeInputs(0.05, 0.01, D(50))) == D("70")  # both saturated: the ceiling
    assert target_pct(P, HedgeInputs(0.03, 0.01, D(0))) == D("46")  # volatility alone, full: 10 + 60 x 0.6


def test_bad_inputs_and_an_invalid_policy_are_refused_loudly():
    with pytest.raises(HedgeInputError, match="reference volatility"):
        target_pct(P, HedgeInputs(0.01, 0.0, D(0)))
    with pytest.raises(HedgeInputError, match="not a finite number"):
        target_pct(P, HedgeInputs(float("nan"), 0.01, D(0)))
    with pytest.raises(HedgeInputError, match="drawdown"):
        target_pct(P, HedgeInputs(0.01, 0.01, D(-1)))
    with pytest.raises(HedgeInputError, match=r"floor .* is above the ceiling"):
        target_pct(replace(P, floor_pct=D(80)), HedgeInputs(0.01, 0.01, D(0)))


def test_the_policy_lists_every_problem():
    problems = replace(
        P, vol_weight=D(2), vol_turmoil_ratio=D(1), band_pct=D(-1), vol_window=1, killswitch_warn_ratio=D(0)
    ).validate()
    assert len(problems) == 5
    assert HedgeParams().validate() == ()


# --- Manual override ---------------------------------------------------------------------------------------

INPUTS = HedgeInputs(0.03, 0.01, D(0))  # automatic target 46 %


def test_manual_wins_until_it_expires_then_auto_resumes():
    expiry = NOW + timedelta(hours=2)
    kwargs = dict(mode="manual", manual_target_pct=D("90"), manual_expires_at=expiry)
    before = decide_target(P, INPUTS, now=NOW, **kwargs)
    assert (before.target_pct, before.mode, before.auto_pct, before.expired) == (
        D("90"),
        Mode.MANUAL,
        D(46),
        False,
    )
    assert before.target == D("0.9")
    at = decide_target(P, INPUTS, now=expiry, **kwargs)
    assert (at.target_pct, at.mode, at.expired) == (D(46), Mode.AUTO, True)
    assert "expired" in at.reason


def test_a_manual_target_without_expiry_holds_and_may_leave_floor_and_ceiling():
    decision = decide_target(P, None, mode="manual", manual_target_pct=D(0), now=NOW)
    assert (decision.target_pct, decision.auto_pct) == (D(0), None)


def test_automatic_mode_needs_inputs_and_times_need_a_zone():
    with pytest.raises(HedgeInputError, match="needs volatility and drawdown inputs"):
        decide_target(P, None, mode="auto", now=NOW)
    with pytest.raises(HedgeInputError, match="aware"):
        decide_target(P, INPUTS, mode="auto", now=NOW.replace(tzinfo=None))


# --- Buying power ------------------------------------------------------------------------------------------


def test_buying_power_is_capped_by_the_target():
    assert buying_power_cap(D(100000), D("0.3")) == D(70000)
    assert buying_power_cap(D(-5), D("0.3")) == 0
    assert strategy_budget(equity=D(100000), target=D("0.3"), exposure=D(65000)) == D(5000)
    assert strategy_budget(equity=D(100000), target=D("0.3"), exposure=D(90000)) == 0
    with pytest.raises(HedgeInputError, match="not a fraction"):
        buying_power_cap(D(100000), D(30))  # a percent passed by mistake


# --- Rebalancing -------------------------------------------------------------------------------------------


def test_inside_the_band_nothing_is_traded():
    # 10,000 USD + 20 ETH x 2,000 (40,000 less 160 fee) = 49,840 equity; USD share 20.06 %.
    result = plan(target="30")
    assert result.equity == D("49840.0000")
    assert result.actual_pct == D("20.06")
    assert (result.action, result.orders) == (Action.HOLD, ())
    assert "within 10 points" in result.reason


def test_the_minimum_interval_suppresses_a_rebalance_until_it_has_passed():
    last = NOW - timedelta(hours=3)
    assert plan(target="50", last=last).action == Action.HOLD
    assert "less than 4:00:00 ago" in plan(target="50", last=last).reason
    assert plan(target="50", last=NOW - timedelta(hours=4)).action == Action.SELL


def test_below_the_band_crypto_is_sold_to_the_target_fee_and_slippage_aware():
    result = plan(target="50", slippage="0.05")
    # G = (0.5 x 49,840 - 10,000) / ((1 - 0.004) x (1 - 0.0005 + 0.5 x 0.0005)) = 14,983.67...
    gross = gross_to_sell(
        target=D("0.5"), equity=result.equity, usd=D(10000), fees=FEES, slippage_pct=D("0.05")
    )
    assert gross.quantize(D("0.01")) == D("14983.67")
    (order,) = result.orders
    assert result.action == Action.SELL
    assert order.quantity == (gross / 2000).quantize(D("1e-8"), rounding="ROUND_FLOOR")
    # After the sale at the price less slippage and the fee, the USD share is the target.
    proceeds = order.quantity * D(2000) * (1 - D("0.0005"))
    usd_after = D(10000) + proceeds - proceeds * D("0.004")
    equity_after = account_equity(
        usd=usd_after, holdings=[holding(ETH, str(20 - order.quantity), "2000")], fees=FEES
    )
    assert abs(usd_after / equity_after - D("0.5")) < D("0.0001")


def test_the_most_volatile_holding_is_sold_first_or_the_largest_when_asked():
    holdings = [holding(BTC, "1", "30000", vol=0.01), holding(SOL, "500", "20", vol=0.05)]  # 10,000 of SOL
    by_vol = plan(target="45", usd="0", holdings=holdings)
    assert [o.symbol for o in by_vol.orders] == ["SOL/USD", "BTC/USD"]  # all SOL, then BTC for the rest
    assert by_vol.orders[0].quantity == D("500")
    by_value = plan(target="45", usd="0", holdings=holdings, params=replace(P, order_by="value"))
    assert [o.symbol for o in by_value.orders] == ["BTC/USD"]


def test_a_sell_never_exceeds_the_free_quantity_and_skips_what_kraken_would_refuse():
    holdings = [
        holding(ETH, "20", "2000", free="1", vol=0.05),  # open sells hold 19 ETH
        holding(SOL, "0.01", "20", vol=0.04),  # below SOL's ordermin of 0.02
        holding(BTC, "1", "30000", vol=0.01),
    ]
    result = plan(target="80", usd="0", holdings=holdings)
    sold = {o.symbol: o.quantity for o in result.orders}
    assert sold["ETH/USD"] == D("1")
    assert "SOL/USD" not in sold
    assert any("SOL/USD" in line and "minimum order" in line for line in result.skipped)
    assert sold["BTC/USD"] <= D(1)


def test_no_unsellable_dust_is_left_behind():
    # The plan wants 0.99999 BTC of 1; the 0.00001 left would be below ordermin: the whole 1 BTC is sold.
    holdings = [holding(BTC, "1", "30000", vol=0.01)]
    equity = account_equity(usd=D(0), holdings=holdings, fees=FEES)
    result = plan(target="99.999", usd="0", holdings=holdings, params=replace(P, band_pct=D(0)))
    assert result.orders[0].quantity == D("1.00000000")
    assert equity > 0


def test_above_the_band_usd_is_released_without_any_order():
    result = plan(target="10", usd="40000", holdings=[holding(ETH, "5", "2000")])
    # equity 40,000 + 9,960 = 49,960; share 80.06 %; release 40,000 - 0.10 x 49,960 = 35,004.
    assert result.action == Action.RELEASE
    assert result.orders == ()
    assert result.release_usd == D("35004.0")


def test_nothing_to_hedge_without_equity_or_crypto():
    assert plan(usd="0", holdings=[]).action == Action.HOLD
    nothing = plan(target="90", usd="0", holdings=[holding(SOL, "0.01", "20")])
    assert nothing.action == Action.HOLD
    assert "nothing can be sold" in nothing.reason


# --- Kill switch recommendation ----------------------------------------------------------------------------


def test_the_killswitch_is_recommended_near_the_daily_limit_only():
    assert (
        killswitch_recommendation(day_drawdown_pct=D("2.3"), max_daily_drawdown_pct=D(3), warn_ratio=D("0.8"))
        is None
    )
    sentence = killswitch_recommendation(
        day_drawdown_pct=D("2.4"), max_daily_drawdown_pct=D(3), warn_ratio=D("0.8")
    )
    assert "80 % of the daily limit of 3 %" in sentence


# --- Measurements ------------------------------------------------------------------------------------------


def test_volatility_helpers_agree_and_see_no_future():
    closes = wave(100.0, bars=60, amplitude=0.01) + wave(90.0, bars=30, amplitude=0.03)
    rolling = rolling_volatility(closes, window=24)
    assert np.isnan(rolling[23])
    assert not np.isnan(rolling[24])
    assert rolling[-1] == pytest.approx(realised_volatility(closes[-25:]))
    # Element i uses closes up to i only: changing later closes leaves it alone.
    changed = rolling_volatility([*closes[:50], *(c * 2 for c in closes[50:])], window=24)
    assert np.allclose(rolling[:50], changed[:50], equal_nan=True)
    vol_now, reference = volatility_inputs(closes, window=24, lookback=60)
    assert vol_now == pytest.approx(rolling[-1])
    assert reference == pytest.approx(float(np.median(rolling[-60:][~np.isnan(rolling[-60:])])))
    assert vol_now / reference > 2
    assert volatility_inputs(closes[:10], window=24, lookback=60) is None


def test_drawdown_from_the_high_water_mark():
    assert drawdown_pct(equity=D(90), high_water=D(100)) == D(10)
    assert drawdown_pct(equity=D(110), high_water=D(100)) == 0
    assert drawdown_pct(equity=D(5), high_water=D(0)) == 0


def test_the_overlay_counterfactual_adds_back_the_hedge_above_the_floor_and_its_fees():
    # One step: 50 % USD, the sleeve falls 20 %: the account loses 10 % (plus 100 USD of hedge fees).
    step = PerformanceStep(
        equity_start=D(100000),
        equity_end=D(89900),
        usd_share=D("0.5"),
        sleeve_return=D("-0.2"),
        hedge_fees=D(100),
    )
    result = hedge_performance_of([step], floor_pct=D(10))
    # r_cf = -0.101 + (0.5 - 0.1) x -0.2 + 100 / 100,000 = -0.18
    assert result.counterfactual_end_equity == D("82000.0000")
    assert result.account_return_pct == D("-10.1000")
    assert result.counterfactual_return_pct == D("-18.0000")
    assert result.hedge_value_pct == D("7.9000")
    with pytest.raises(HedgeInputError):
        hedge_performance_of([], floor_pct=D(10))
