from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from risk.engine import (
    Action,
    KillSwitchRefused,
    OrderIntent,
    RiskPolicy,
    Status,
    SwitchState,
    Verdict,
    check_order,
    entries_allowed,
    halt,
    observe_equity,
    on_day_change,
    on_equity,
    rearm,
    resume,
)
from tests.risk.builders import snapshot
from trading.brokers.base import Side

POLICY = RiskPolicy()  # 3 % daily drawdown
T0 = datetime(2026, 11, 21, 1, tzinfo=UTC)


def trip(policy=POLICY):
    day = observe_equity(None, equity=D(10000), at=T0)
    day = observe_equity(day, equity=D(10400), at=T0 + timedelta(hours=1))
    # 10,400 → 10,088 is 3 % below the day's high (and still above the day's start)
    day = observe_equity(day, equity=D(10088), at=T0 + timedelta(hours=2))
    return on_equity(SwitchState(), day=day, policy=policy)


def test_a_breach_from_the_high_water_mark_trips_and_lists_the_actions():
    transition = trip()
    assert transition.state.latched
    assert not entries_allowed(transition.state)
    assert transition.actions == (Action.BLOCK_ENTRIES, Action.CANCEL_ENTRY_ORDERS, Action.ALERT)
    assert "daily drawdown 3.00 %" in transition.state.reason
    assert trip(RiskPolicy(flatten_on_breach=True)).actions == (
        Action.BLOCK_ENTRIES,
        Action.CANCEL_ENTRY_ORDERS,
        Action.FLATTEN,
        Action.ALERT,
    )


def test_just_under_the_limit_stays_armed():
    day = observe_equity(None, equity=D(10000), at=T0)
    day = observe_equity(day, equity=D("9700.01"), at=T0 + timedelta(hours=1))
    assert on_equity(SwitchState(), day=day, policy=POLICY).actions == ()


def test_latched_until_the_next_utc_day_and_a_director():
    state = trip().state
    with pytest.raises(KillSwitchRefused, match="until the next UTC day"):
        rearm(state, now=T0.replace(hour=23, minute=59))
    next_day = T0 + timedelta(days=1)
    assert on_day_change(state, now=next_day, policy=POLICY).state.latched  # no auto re-arm by default
    transition = rearm(state, now=next_day)
    assert transition.actions == (Action.REARMED,)
    assert entries_allowed(transition.state)


def test_auto_rearm_at_day_change_when_the_policy_allows():
    policy = RiskPolicy(auto_rearm_at_day_change=True)
    state = trip(policy).state
    assert on_day_change(state, now=T0.replace(hour=23), policy=policy).state.latched
    transition = on_day_change(state, now=T0 + timedelta(days=1), policy=policy)
    assert transition.actions == (Action.REARMED,)
    assert entries_allowed(transition.state)


def test_manual_halt_and_resume_do_not_touch_the_latch():
    halted = halt(SwitchState(), reason="maintenance")
    assert halted.actions == (Action.BLOCK_ENTRIES, Action.CANCEL_ENTRY_ORDERS)
    assert not entries_allowed(halted.state)
    assert entries_allowed(resume(halted.state).state)
    latched_and_halted = halt(trip().state, reason="x").state
    assert not entries_allowed(resume(latched_and_halted).state)
    with pytest.raises(KillSwitchRefused):
        resume(SwitchState())
    with pytest.raises(KillSwitchRefused):
        rearm(SwitchState(), now=T0)


ENTRY = OrderIntent("BTC/USD", Side.BUY, D("0.01"), expected_edge_pct=D(2))

events = st.one_of(
    st.tuples(st.just("equity"), st.integers(min_value=8000, max_value=12000), st.integers(1, 240)),
    st.tuples(st.just("rearm"), st.just(0), st.integers(1, 240)),
    st.tuples(st.just("day"), st.just(0), st.integers(1, 240)),
    st.tuples(st.just("halt"), st.just(0), st.integers(1, 30)),
    st.tuples(st.just("resume"), st.just(0), st.integers(1, 30)),
)


@settings(max_examples=150, deadline=None)
@given(steps=st.lists(events, min_size=1, max_size=40), auto=st.booleans())
def test_once_tripped_no_entry_passes_until_rearmed(steps, auto):
    """Random equity, day changes, halts and re-arm attempts: between a trip and the REARMED action that
    ends it, every entry is rejected by the pre-trade check; and no re-arm happens on the trip's UTC day."""
    policy = RiskPolicy(auto_rearm_at_day_change=auto)
    state, day, now = SwitchState(), None, T0
    for kind, value, minutes in steps:
        now += timedelta(minutes=minutes * 10)
        was_latched = state.latched
        try:
            if kind == "equity":
                day = observe_equity(day, equity=D(value), at=now)
                transition = on_equity(state, day=day, policy=policy)
            elif kind == "rearm":
                transition = rearm(state, now=now)
            elif kind == "day":
                transition = on_day_change(state, now=now, policy=policy)
            elif kind == "halt":
                transition = halt(state, reason="test")
            else:
                transition = resume(state)
        except KillSwitchRefused:
            continue
        if was_latched and not transition.state.latched:
            assert Action.REARMED in transition.actions
            assert now.date() > state.tripped_on
        state = transition.state
        decision = check_order(policy=policy, snapshot=snapshot(switch=state), intent=ENTRY)
        if state.latched or state.halted:
            assert decision.verdict == Verdict.REJECT
        else:
            assert decision.verdict == Verdict.ACCEPT


def _on_equity_reference(state, *, day, policy):
    """``on_equity`` as it was written before its fast paths (the drawdown computed on every call)."""
    from dataclasses import replace as _replace

    from risk.engine.killswitch import Action as _Action
    from risk.engine.killswitch import Transition as _Transition

    drawdown = day.drawdown_pct
    if state.latched or drawdown < policy.max_daily_drawdown_pct:
        return _Transition(state)
    reason = (
        f"daily drawdown {drawdown:.2f} % from the UTC day's high of {day.high_water} USD to "
        f"{day.equity} USD reached the limit of {policy.max_daily_drawdown_pct} %"
    )
    actions = [_Action.BLOCK_ENTRIES, _Action.CANCEL_ENTRY_ORDERS]
    if policy.flatten_on_breach:
        actions.append(_Action.FLATTEN)
    actions.append(_Action.ALERT)
    tripped = _replace(state, status=Status.TRIPPED, tripped_on=day.day, tripped_at=day.at, reason=reason)
    return _Transition(tripped, tuple(actions))


_AMOUNTS = st.one_of(
    st.decimals(min_value=D(-1000), max_value=D(200_000), places=2),
    st.decimals(min_value=D(-1000), max_value=D(200_000), places=10),
    st.sampled_from([D(0), D("0.00"), D(100_000), D("100000.00"), D("97000"), D("97000.0000"), D(-5)]),
)


@settings(max_examples=600, deadline=None)
@given(
    high=_AMOUNTS,
    equity=_AMOUNTS,
    limit=st.sampled_from([D(3), D("0.5"), D(2), D("2.999999999999"), D(0), D(100)]),
    latched=st.booleans(),
    flatten=st.booleans(),
)
def test_on_equity_is_the_reference_transition(high, equity, limit, latched, flatten):
    """The fast paths (equity at or above the high, a latched switch, a reused unchanged transition) give
    the transition the straightforward computation gives, at and around the limit."""
    from dataclasses import replace as _replace

    from risk.engine.nav import DayEquity

    at = datetime(2022, 5, 12, 13, tzinfo=UTC)
    day = DayEquity(at.date(), high, equity, at)
    state = (
        SwitchState(status=Status.TRIPPED, tripped_on=at.date(), tripped_at=at, reason="earlier")
        if latched
        else SwitchState()
    )
    policy = _replace(RiskPolicy(), max_daily_drawdown_pct=limit, flatten_on_breach=flatten)
    fast = on_equity(state, day=day, policy=policy)
    assert fast == _on_equity_reference(state, day=day, policy=policy)
    if not fast.actions:
        assert fast.state is state
    # exactly at the limit: (100 - 97) / 100 x 100 = 3
    if high == D(100_000) and equity == D(97_000) and limit == D(3):
        assert fast.actions or latched
