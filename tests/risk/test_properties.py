"""No sequence of accepted (or resized) orders drives cash negative, sells more than is held, or takes a
pair or a correlated group above its limit. The simulation applies each decision to the snapshot the way a
fill would: a buy at the checked price (market + slippage) pays the notional and the fee rounded up."""

from dataclasses import replace
from decimal import Decimal as D

from hypothesis import event, given, settings
from hypothesis import strategies as st

from risk.engine import OrderIntent, RiskPolicy, Verdict, check_order, group_exposures
from tests.risk.builders import FEES, GROUPS, PRICES, snapshot
from trading.brokers.base import Side
from trading.matching import fee_for

POLICY = RiskPolicy()


@st.composite
def intents(draw) -> OrderIntent:
    """An order worth 0.50 to 8,000 USD (so every verdict occurs), with a quantity of up to 9 decimals."""
    symbol = draw(st.sampled_from(sorted(PRICES)))
    usd = draw(st.decimals(min_value=D("0.5"), max_value=D(8000), places=2))
    return OrderIntent(
        symbol=symbol,
        side=draw(st.sampled_from([Side.BUY, Side.SELL])),
        quantity=(usd / PRICES[symbol]).quantize(D(draw(st.sampled_from(["1e-8", "1e-9"])))),
        expected_edge_pct=draw(st.sampled_from([D(2), D(2), D(2), D("0.5"), None])),
    )


@settings(max_examples=400, deadline=None)
@given(
    orders=st.lists(intents(), min_size=1, max_size=25),
    cash=st.decimals(min_value=D(0), max_value=D(20000), places=4),
    equity=st.decimals(min_value=D(100), max_value=D(50000), places=2),
)
def test_accepted_orders_keep_balances_and_exposures_within_limits(orders, cash, equity):
    state = snapshot(equity=equity, available_usd=cash, held={}, exposures={})
    pair_limit = equity * POLICY.max_position_pct / 100
    group_limit = equity * POLICY.max_group_exposure_pct / 100
    for intent in orders:
        decision = check_order(policy=POLICY, snapshot=state, intent=intent)
        event(f"{intent.side} {decision.verdict}")
        if decision.verdict == Verdict.REJECT:
            assert decision.quantity == 0
            continue
        quantity, symbol = decision.quantity, intent.symbol
        assert 0 < quantity <= intent.quantity
        held, exposures, available = dict(state.held), dict(state.exposures), state.available_usd
        if intent.side == Side.BUY:
            price = PRICES[symbol] * (1 + state.slippage_pct / 100)
            notional = quantity * price
            available -= notional + fee_for(notional, FEES.taker_pct)
            held[symbol] = held.get(symbol, D(0)) + quantity
            exposures[symbol] = exposures.get(symbol, D(0)) + notional
        else:
            assert quantity <= held.get(symbol, D(0))
            held[symbol] -= quantity
            notional = quantity * PRICES[symbol]
            available += notional - fee_for(notional, FEES.taker_pct)
            exposures[symbol] = max(D(0), exposures.get(symbol, D(0)) - notional)
        state = replace(state, held=held, exposures=exposures, available_usd=available)

        assert state.available_usd >= 0
        assert all(value >= 0 for value in state.held.values())
        assert all(value <= pair_limit for value in state.exposures.values())
        assert all(value <= group_limit for value in group_exposures(state.exposures, GROUPS).values())
