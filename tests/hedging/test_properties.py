"""Properties of the hedge core: the target is monotone and bounded; a sell never exceeds what is free."""

from __future__ import annotations

from dataclasses import replace
from decimal import Decimal

from hypothesis import assume, given, settings
from hypothesis import strategies as st

from hedging.policy import Action, HedgeInputs, HedgeParams, rebalance_plan, target_pct
from tests.hedging.builders import BTC, ETH, FEES, NOW, SOL, holding

D = Decimal
vols = st.floats(min_value=0.0, max_value=0.5, allow_nan=False, allow_infinity=False)
references = st.floats(min_value=1e-5, max_value=0.2, allow_nan=False, allow_infinity=False)
drawdowns = st.decimals(min_value=0, max_value=100, places=4, allow_nan=False, allow_infinity=False)
fractions = st.decimals(min_value=0, max_value=1, places=2, allow_nan=False, allow_infinity=False)


@st.composite
def params(draw) -> HedgeParams:
    floor = draw(st.decimals(min_value=0, max_value=100, places=2))
    ceiling = draw(st.decimals(min_value=floor, max_value=100, places=2))
    calm = draw(st.decimals(min_value=0, max_value=5, places=2))
    turmoil = calm + draw(st.decimals(min_value=D("0.01"), max_value=10, places=2))
    start = draw(st.decimals(min_value=0, max_value=50, places=2))
    full = start + draw(st.decimals(min_value=D("0.01"), max_value=100 - start, places=2))
    result = HedgeParams(
        floor_pct=floor,
        ceiling_pct=ceiling,
        vol_weight=draw(fractions),
        vol_calm_ratio=calm,
        vol_turmoil_ratio=turmoil,
        drawdown_weight=draw(fractions),
        drawdown_start_pct=start,
        drawdown_full_pct=full,
    )
    assert result.validate() == ()
    return result


@settings(max_examples=500, deadline=None)
@given(params(), vols, vols, references, drawdowns, drawdowns)
def test_more_volatility_or_a_deeper_drawdown_never_lowers_the_target(p, v1, v2, ref, d1, d2):
    low_vol, high_vol = sorted((v1, v2))
    shallow, deep = sorted((d1, d2))
    base = target_pct(p, HedgeInputs(low_vol, ref, shallow))
    assert target_pct(p, HedgeInputs(high_vol, ref, shallow)) >= base
    assert target_pct(p, HedgeInputs(low_vol, ref, deep)) >= base
    assert target_pct(p, HedgeInputs(high_vol, ref, deep)) >= base


@settings(max_examples=500, deadline=None)
@given(params(), vols, references, drawdowns)
def test_the_target_stays_within_floor_and_ceiling(p, vol, ref, drawdown):
    target = target_pct(p, HedgeInputs(vol, ref, drawdown))
    assert p.floor_pct <= target <= p.ceiling_pct


@settings(max_examples=200, deadline=None)
@given(vols, references)
def test_full_weights_reach_the_ceiling_in_turmoil_and_calm_gives_the_floor(vol, ref):
    p = HedgeParams(vol_weight=D(1), drawdown_weight=D(1))
    ratio = D(repr(vol)) / D(repr(ref))
    target = target_pct(p, HedgeInputs(vol, ref, D(0)))
    if ratio >= p.vol_turmoil_ratio:
        assert target == p.ceiling_pct
    if ratio <= p.vol_calm_ratio:
        assert target == p.floor_pct
    assert target_pct(p, HedgeInputs(vol, ref, p.drawdown_full_pct)) == p.ceiling_pct


quantities = st.decimals(min_value=D("0.001"), max_value=1000, places=8)
ratios = st.decimals(min_value=0, max_value=1, places=3)


@settings(max_examples=300, deadline=None)
@given(
    st.decimals(min_value=0, max_value=100, places=2),
    st.decimals(min_value=0, max_value=100000, places=4),
    quantities,
    ratios,
    quantities,
    ratios,
    st.sampled_from(["volatility", "value"]),
)
def test_a_hedge_sell_never_exceeds_the_free_quantity(target, usd, q_eth, f_eth, q_sol, f_sol, order_by):
    holdings = [
        holding(ETH, str(q_eth), "2000", free=str(q_eth * f_eth), vol=0.02),
        holding(SOL, str(q_sol), "20", free=str(q_sol * f_sol), vol=0.03),
        holding(BTC, "0.5", "30000", free="0", vol=0.01),
    ]
    assume(usd + q_eth + q_sol > 0)
    plan = rebalance_plan(
        params=replace(HedgeParams(), order_by=order_by),
        target_pct=target,
        usd=usd,
        holdings=holdings,
        fees=FEES,
        now=NOW,
        last_rebalance_at=None,
        slippage_pct=D("0.05"),
    )
    free = {h.symbol: h.free for h in holdings}
    for order in plan.orders:
        assert plan.action == Action.SELL
        assert 0 < order.quantity <= free[order.symbol]
        assert order.quantity == order.quantity.quantize(D("1e-8"))
    if plan.action == Action.SELL:
        # Never past the target by more than the rounding to lots and the no-dust rule can add.
        assert plan.actual_pct < target - HedgeParams().band_pct
