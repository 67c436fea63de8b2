"""Threshold adaptation: the rule, its bounds, its rate limit."""

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from learning.adaptation import AdaptationPolicy, Bounds, Thresholds, adapt

NOW = datetime(2026, 11, 21, 12, tzinfo=UTC)
CURRENT = Thresholds(D("0.55"), D("2.0"), D("3.0"))
BOUNDS = Bounds(low=Thresholds(D("0.50"), D("1.0"), D("1.5")), high=Thresholds(D("0.75"), D("4.0"), D("6.0")))
POLICY = AdaptationPolicy(window=20, min_trades=10, min_interval=timedelta(hours=24))


def trades(returns, *, end=NOW):
    """(closed_at, net_return) pairs, one an hour, the last closing at ``end``."""
    return [(end - timedelta(hours=len(returns) - 1 - i), value) for i, value in enumerate(returns)]


def run(returns, current=CURRENT, last=None):
    return adapt(
        current=current,
        bounds=BOUNDS,
        recent_trades=trades(returns),
        now=NOW,
        last_changed_at=last,
        policy=POLICY,
    )


def test_losing_trades_with_small_wins_raise_entry_tighten_stop_widen_take():
    outcome = run(["0.01", "-0.02"] * 6)  # expectancy -0.5 %, payoff 0.5
    assert outcome.changed
    assert outcome.after == Thresholds(D("0.56"), D("1.75"), D("3.25"))
    assert "entry probability up" in outcome.reason
    assert "stop tighter, take wider" in outcome.reason
    assert outcome.stats["trades"] == 12


def test_winning_trades_lower_the_entry_probability():
    outcome = run(["0.02", "0.015", "-0.01"] * 4)
    assert outcome.after.entry_probability == D("0.54")
    assert outcome.after.stop_atr_multiple == CURRENT.stop_atr_multiple


def test_values_are_clamped_to_the_policy_bounds():
    at_edge = Thresholds(D("0.75"), D("1.0"), D("6.0"))
    outcome = run(["0.01", "-0.02"] * 6, current=at_edge)
    assert not outcome.changed  # every move would leave the bounds
    assert "clamped to the policy bounds" in outcome.reason


def test_only_the_window_counts_and_too_few_trades_change_nothing():
    assert not run(["-0.05"] * 9).changed
    assert "only 9 trade(s) closed; need 10" in run(["-0.05"] * 9).reason
    # 20 recent winners after 100 old losers: the old ones are outside the window.
    assert run(["-0.05"] * 100 + ["0.02", "0.01"] * 10).after.entry_probability == D("0.54")


def test_changes_are_rate_limited():
    outcome = run(["0.01", "-0.02"] * 6, last=NOW - timedelta(hours=23))
    assert not outcome.changed
    assert outcome.reason.startswith(
        "rate limited: last change at 2026-11-20T13:00:00+00:00, next allowed at "
    )
    assert run(["0.01", "-0.02"] * 6, last=NOW - timedelta(hours=24)).changed


def test_only_trades_closed_after_the_last_adaptation_count():
    last = NOW - timedelta(hours=30)
    old = trades(["0.01", "-0.02"] * 6, end=last)  # closed by the last adaptation: already used
    new = trades(["0.01", "-0.02"] * 3, end=NOW)  # 6 fresh trades: fewer than min_trades
    outcome = adapt(
        current=CURRENT, bounds=BOUNDS, recent_trades=old + new, now=NOW, last_changed_at=last, policy=POLICY
    )
    assert not outcome.changed
    assert outcome.reason == (
        "only 6 trade(s) closed since the last adaptation at 2026-11-20T06:00:00+00:00; need 10"
    )
    enough = trades(["0.01", "-0.02"] * 5, end=NOW)
    outcome = adapt(
        current=CURRENT,
        bounds=BOUNDS,
        recent_trades=old + enough,
        now=NOW,
        last_changed_at=last,
        policy=POLICY,
    )
    assert outcome.changed
    assert outcome.stats["trades"] == 10  # the old ones are not counted again
    # Order does not matter; a trade closed after `now` is not counted yet.
    future = [(NOW + timedelta(hours=1), "-0.5")]
    again = adapt(
        current=CURRENT,
        bounds=BOUNDS,
        recent_trades=list(reversed(enough)) + future + old,
        now=NOW,
        last_changed_at=last,
        policy=POLICY,
    )
    assert again.stats == outcome.stats


def test_a_trade_needs_an_aware_close_time():
    with pytest.raises(ValueError, match="aware datetime"):
        adapt(
            current=CURRENT,
            bounds=BOUNDS,
            recent_trades=[(datetime(2026, 11, 21), "0.01")] * 10,
            now=NOW,
            last_changed_at=None,
            policy=POLICY,
        )


def test_non_finite_returns_are_refused():
    with pytest.raises(ValueError, match="finite"):
        run(["0.01"] * 10 + ["NaN"])
