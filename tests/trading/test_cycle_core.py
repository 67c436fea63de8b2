"""decide(): skips, the hedge cap, sizing and checks, exits through the cycle. No database."""

from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import numpy as np
import pytest

from learning.features import FEATURES
from risk.engine import (
    Code,
    Mode,
    PriceQuote,
    RiskPolicy,
    Snapshot,
    Status,
    SwitchState,
    plan_exits,
    size_entry,
)
from trading.brokers.base import PairRules, Side
from trading.cycle_core import BarView, DeferredSnapshot, Purpose, Skip, decide
from trading.fees import published_rates
from trading.strategy import FLAT, Action, DefaultStrategy, Holding, MarketView, Signal

D = Decimal
FEES = published_rates()
POLICY = RiskPolicy()
# Kraken AssetPairs XXBTZUSD (trading/data/kraken_asset_pairs_2026-09-25.json).
BTC = PairRules(
    symbol="BTC/USD",
    kraken_pair="XXBTZUSD",
    base_asset="BTC",
    quote_asset="USD",
    ordermin=D("0.00005"),
    costmin=D("0.5"),
    tick_size=D("0.1"),
    pair_decimals=1,
    lot_decimals=8,
    cost_decimals=5,
    status="online",
)
OPENED = datetime(2022, 11, 3, 10, tzinfo=UTC)
CLOSED = OPENED + timedelta(hours=1)
BAR = BarView("BTC/USD", OPENED, CLOSED, high=D(20_100), low=D(19_900), close=D(20_000), atr=D(200))
HOUR = timedelta(hours=1)


class Fixed:
    """A strategy that always answers the same signal (the cycle's plumbing is under test)."""

    name = "fixed"

    def __init__(self, action=Action.ENTER, edge=None):
        edge = D(3) if edge is None else edge
        self.answer = Signal(action, self.name, f"always {action}", edge if action == Action.ENTER else None)

    def signal(self, *, market, holding, policy):
        return self.answer


ARMED = SwitchState()
ZERO = D(0)
EQUITY = D(100_000)


def snapshot(*, switch=ARMED, held=ZERO, equity=EQUITY, cash=None, now=CLOSED, enabled=True):
    cash = equity - held * D(20_000) if cash is None else cash
    return Snapshot(
        now=now,
        mode=Mode.SIMULATION,
        broker="sim",
        trading_enabled=enabled,
        switch=switch,
        pairs={"BTC/USD": BTC},
        prices={"BTC/USD": PriceQuote(D(20_000), CLOSED)},
        max_price_age=HOUR,
        equity=equity,
        available_usd=cash,
        held={"BTC/USD": held},
        fees=FEES,
        slippage_pct=D("0.05"),
        exposures={"BTC/USD": held * D(20_000)} if held else {},
        groups=(frozenset({"BTC/USD"}),),
    )


MARKET = MarketView(np.zeros(len(FEATURES)), "bullish", 0.7, "champion v1")


def run(*, snap=None, holding=FLAT, strategy=None, hedge=ZERO, bar=BAR, market=MARKET):
    return decide(
        policy=POLICY,
        pair=BTC,
        snapshot=snap or snapshot(),
        bar=bar,
        holding=holding,
        market=market,
        strategy=strategy or Fixed(),
        hedge_target=hedge,
        max_bar_age=HOUR,
    )


def planned(entry=None):
    entry = D(20_000) if entry is None else entry
    return plan_exits(
        policy=POLICY, pair=BTC, entry_price=entry, fees=FEES, slippage_pct=D("0.05"), atr=D(200)
    )


def test_entry_is_sized_by_the_risk_engine_and_checked():
    decision = run()
    assert decision.skip is None
    entry = decision.entry
    assert entry is not None
    assert entry.side == Side.BUY
    assert entry.purpose == Purpose.ENTRY
    expected = size_entry(
        policy=POLICY,
        pair=BTC,
        equity=D(100_000),
        price=D(20_000),
        fees=FEES,
        atr=D(200),
        buying_power=D(100_000),
    )
    assert decision.size.quantity == expected.quantity == D(1)  # 20 % of equity at the close
    # the pre-trade check prices the buy with slippage and cuts it to the pair limit: what is sent
    assert entry.check.verdict == "resize"
    assert entry.check.codes == (Code.PAIR_LIMIT,)
    assert entry.quantity == entry.check.quantity < expected.quantity
    assert entry.expected_edge_pct == D(3)
    assert decision.strategy == "fixed"
    assert any("entry: buy" in note for note in decision.notes)


def test_hedge_cap_limits_the_buy():
    free = run(hedge=D(0)).entry.quantity
    # 90 % hedged: 10,000 USD of buying power, 4,000 already exposed in another pair → 6,000 USD left
    flat = run(snap=replace(snapshot(), exposures={"ETH/USD": D(4_000)}), hedge=D("0.9"))
    assert flat.buying_power == D(6_000)
    assert flat.size.limited_by == Code.BUYING_POWER_LIMIT
    assert flat.entry.quantity * D(20_000) * (1 + FEES.taker_pct / 100) <= D(6_000)
    assert flat.entry.quantity < free
    assert any("hedge keeps 90 %" in note for note in flat.notes)


def test_fully_hedged_account_buys_nothing():
    decision = run(hedge=D(1))
    assert decision.entry is None
    assert decision.buying_power == 0
    assert not decision.size.tradable


def test_stale_bar_decides_nothing():
    decision = run(
        snap=snapshot(now=CLOSED + 2 * HOUR), holding=Holding(D(1), D(20_000), D(20_000), planned())
    )
    assert decision.skip == Skip.STALE
    assert decision.intents == ()
    assert decision.signal is None
    assert not decision.plan_changed
    assert "stale" in decision.skip_reason


def test_halted_account_enters_nothing_but_records_the_signal():
    decision = run(snap=snapshot(switch=SwitchState(halted=True, halt_reason="desk review")))
    assert decision.skip == Skip.HALTED
    assert decision.intents == ()
    assert decision.signal.action == Action.ENTER
    assert "desk review" in decision.skip_reason


def test_latched_kill_switch_blocks_entries():
    latched = SwitchState(status=Status.TRIPPED, tripped_on=date(2022, 11, 3), reason="drawdown 3 %")
    decision = run(snap=snapshot(switch=latched))
    assert decision.skip == Skip.KILL_SWITCH_LATCHED
    assert decision.intents == ()


def test_disabled_trading_blocks_entries():
    assert run(snap=snapshot(enabled=False)).skip == Skip.TRADING_DISABLED


def test_entry_below_the_edge_is_rejected_with_the_reason():
    decision = run(strategy=Fixed(edge=D("0.5")))
    assert decision.entry is None
    assert Code.EDGE_TOO_SMALL in decision.rejected.codes
    assert decision.rejected.message in decision.notes


def test_trailing_stop_ratchets_through_decide():
    plan = planned()
    holding = Holding(D("0.5"), D(20_080), D(20_000), plan)
    bar = replace(BAR, high=D(20_500), low=D(20_100), close=D(20_400))
    decision = run(snap=snapshot(held=D("0.5")), holding=holding, strategy=Fixed(Action.HOLD), bar=bar)
    assert decision.intents == ()
    assert decision.plan_changed
    assert decision.exit_plan.stop_price == D(20_500) - D("2.5") * D(200)
    assert decision.exit_plan.stop_price > plan.stop_price
    assert decision.exit_plan.high_water == D(20_500)


def test_stop_loss_triggers_a_sell_of_the_whole_position_even_when_halted():
    plan = planned()
    holding = Holding(D("0.5"), D(20_080), D(20_000), plan)
    bar = replace(BAR, low=plan.stop_price - 1, high=D(20_000), close=plan.stop_price)
    halted = snapshot(held=D("0.5"), switch=SwitchState(halted=True, halt_reason="desk"))
    decision = run(snap=halted, holding=holding, strategy=Fixed(Action.HOLD), bar=bar)
    exit_ = decision.exit
    assert exit_ is not None
    assert exit_.purpose == Purpose.STOP_LOSS
    assert exit_.quantity == D("0.5")
    assert exit_.trigger_price == plan.stop_price
    assert decision.exit_signal.reason == "stop_loss"


def test_strategy_exit_and_flatten():
    holding = Holding(D("0.5"), D(20_080), D(20_000), planned())
    strategy_exit = run(snap=snapshot(held=D("0.5")), holding=holding, strategy=Fixed(Action.EXIT))
    assert strategy_exit.exit.purpose == Purpose.STRATEGY_EXIT
    latched = SwitchState(status=Status.TRIPPED, tripped_on=date(2022, 11, 3), reason="drawdown")
    flatten = decide(
        policy=replace(POLICY, flatten_on_breach=True),
        pair=BTC,
        snapshot=snapshot(held=D("0.5"), switch=latched),
        bar=BAR,
        holding=holding,
        market=MARKET,
        strategy=Fixed(Action.HOLD),
        hedge_target=D(0),
        max_bar_age=HOUR,
    )
    assert flatten.exit.purpose == Purpose.FLATTEN


def test_open_position_without_a_plan_gets_one():
    decision = run(snap=snapshot(held=D("0.5")), holding=Holding(D("0.5"), D(20_080), D(20_000), None))
    assert decision.plan_changed
    assert decision.exit_plan == planned()


def test_default_strategy_in_the_cycle_records_the_fallback():
    market = MarketView(np.zeros(len(FEATURES)), "bullish", None, "no champion model for BTC/USD 60m")
    decision = run(strategy=DefaultStrategy(), market=market)
    assert decision.strategy == "rule_trend"
    assert decision.notes[0].startswith("rule_trend: hold: no champion model for BTC/USD 60m: rule-based")


def deferred(snap, built):
    def build():
        built.append(snap)
        return snap

    return DeferredSnapshot(
        now=snap.now,
        switch=snap.switch,
        trading_enabled=snap.trading_enabled,
        fees=snap.fees,
        slippage_pct=snap.slippage_pct,
        build=build,
    )


def test_deferred_snapshot_is_built_only_to_size_or_check_an_order_and_decides_the_same():
    held = Holding(D("0.5"), D(20_080), D(20_000), planned())
    low = BarView("BTC/USD", OPENED, CLOSED, high=D(20_000), low=D(19_000), close=D(19_100), atr=D(200))
    halted = SwitchState(halted=True, halt_reason="desk")
    cases = [
        ({}, False),  # an entry: sized and checked
        ({"strategy": Fixed(Action.HOLD)}, False),  # nothing to check
        ({"snap": snapshot(switch=halted)}, False),  # halted: the gate reads the switch only
        ({"snap": snapshot(held=D("0.5")), "holding": held, "bar": low}, True),  # a stop-loss sell
        ({"snap": snapshot(held=D("0.5")), "holding": held, "strategy": Fixed(Action.HOLD)}, False),
    ]
    for kwargs, sells in cases:
        eager = run(**kwargs)
        built = []
        snap = kwargs.get("snap") or snapshot()
        lazy = run(**{**kwargs, "snap": deferred(snap, built)})
        assert lazy == eager
        assert len(built) == (1 if eager.intents or eager.size is not None else 0)
        assert (eager.exit is not None) == sells


def test_deferred_snapshot_refuses_a_builder_that_disagrees():
    snap = snapshot()
    lying = DeferredSnapshot(
        now=snap.now + HOUR,
        switch=snap.switch,
        trading_enabled=True,
        fees=FEES,
        slippage_pct=snap.slippage_pct,
        build=lambda: snap,
    )
    with pytest.raises(ValueError, match="disagrees"):
        run(snap=lying)


def test_deferred_snapshot_calls_its_builder_with_its_args_once():
    snap = snapshot()
    calls = []

    def build(*args):
        calls.append(args)
        return snap

    lazy = DeferredSnapshot(
        now=snap.now,
        switch=snap.switch,
        trading_enabled=True,
        fees=FEES,
        slippage_pct=snap.slippage_pct,
        build=build,
        args=(1, "two"),
    )
    assert run(snap=lazy) == run()
    assert lazy.full() is snap
    assert calls == [(1, "two")]


def test_cycle_decision_init_is_the_dataclass_one():
    """The written-out ``__init__`` takes the fields in order with their defaults, and stays frozen."""
    import dataclasses
    import inspect

    from trading.cycle_core import CycleDecision

    parameters = list(inspect.signature(CycleDecision).parameters.values())
    fields = dataclasses.fields(CycleDecision)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    decision = CycleDecision("BTC/USD", OPENED, notes=("a",))
    assert decision == CycleDecision(
        "BTC/USD", OPENED, "", None, (), None, "", None, False, None, None, None, None, ("a",)
    )
    assert [getattr(decision, f.name) for f in fields] == [
        "BTC/USD",
        OPENED,
        "",
        None,
        (),
        None,
        "",
        None,
        False,
        None,
        None,
        None,
        None,
        ("a",),
    ]
    assert dataclasses.replace(decision, strategy="x").strategy == "x"
    with pytest.raises(dataclasses.FrozenInstanceError):
        decision.symbol = "ETH/USD"


@pytest.mark.parametrize("action", [Action.HOLD, Action.EXIT, Action.ENTER])
@pytest.mark.parametrize("gate", ["open", "halted", "tripped", "disabled"])
@pytest.mark.parametrize("stale_plan", [False, True])
@pytest.mark.parametrize("evaluate_exits", [True, False])
def test_flat_decisions_record_the_signal_then_the_gate(action, gate, stale_plan, evaluate_exits):
    """Flat: the signal's note first, then a stale plan's clearing, then the gate; the common bar (no entry
    signal, nothing to clear, entries open) is the signal alone."""
    switch = {
        "open": ARMED,
        "halted": SwitchState(halted=True, halt_reason="desk"),
        "tripped": SwitchState(status=Status.TRIPPED, tripped_on=date(2022, 11, 3), reason="drawdown"),
        "disabled": ARMED,
    }[gate]
    snap = snapshot(switch=switch, enabled=gate != "disabled")
    plan = planned() if stale_plan else None
    strategy = Fixed(action)
    decision = decide(
        policy=POLICY, pair=BTC, snapshot=deferred(snap, []), bar=BAR, holding=Holding(exit_plan=plan),
        market=MARKET, strategy=strategy, hedge_target=ZERO, max_bar_age=HOUR,
        evaluate_exits=evaluate_exits,
    )  # fmt: skip
    said = f"fixed: {action}: always {action}"
    assert decision.notes[0] == said
    assert decision.signal is strategy.answer
    assert decision.strategy == "fixed"
    cleared = stale_plan and evaluate_exits
    assert decision.plan_changed is cleared
    assert decision.exit_plan is (None if cleared else plan)
    assert ("the position is flat: its exit plan is cleared" in decision.notes) is cleared
    skip = {"open": None, "halted": Skip.HALTED, "tripped": Skip.KILL_SWITCH_LATCHED}.get(
        gate, Skip.TRADING_DISABLED
    )
    assert decision.skip == skip
    if skip is not None:
        assert decision.notes[-1] == decision.skip_reason
        assert len(decision.notes) == 2 + cleared
    elif action != Action.ENTER:
        assert decision.notes == (
            said,
            *(("the position is flat: its exit plan is cleared",) if cleared else ()),
        )
        assert (decision.intents, decision.size, decision.rejected, decision.buying_power) == (
            (),
            None,
            None,
            None,
        )
        assert decision.exit_signal is None
        assert decision.skip_reason == ""
    else:
        assert decision.entry is not None
