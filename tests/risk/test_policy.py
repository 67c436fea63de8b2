from dataclasses import replace
from decimal import Decimal as D

import pytest

from risk.engine import Distance, ExitRule, RiskPolicy


def test_the_defaults_are_valid():
    assert RiskPolicy().validate() == ()


def test_every_contradiction_is_reported_at_once_with_the_numbers():
    policy = RiskPolicy(
        max_position_pct=D(40),
        max_group_exposure_pct=D(30),
        risk_per_trade_pct=D(4),
        max_daily_drawdown_pct=D(3),
        stop_loss=ExitRule(Distance.ATR, D(3)),
        take_profit=ExitRule(Distance.ATR, D(2)),
        max_orders_per_minute=10,
        max_orders_per_hour=5,
    )
    problems = policy.validate()
    assert len(problems) == 4
    assert (
        "maximum position per pair (40 %) is above the maximum exposure per correlated group (30 %)"
        in (problems[0])
    )
    assert "risk per trade (4 %) is not below the maximum daily drawdown (3 %)" in problems[1]
    assert "stop-loss distance (3 ATR) is not below the take-profit distance (2 ATR)" in problems[2]
    assert "maximum orders per minute (10) is above maximum orders per hour (5)" in problems[3]


@pytest.mark.parametrize(
    ("changes", "phrase"),
    [
        ({"risk_per_trade_pct": D(-1)}, "risk per trade must be above 0 %"),
        ({"max_position_pct": D("NaN")}, "maximum position per pair must be above 0 %"),
        ({"max_daily_drawdown_pct": D(0)}, "maximum daily drawdown must be above 0 %"),
        ({"volatility_target_pct": D(101)}, "volatility target must be above 0 %"),
        ({"min_edge_pct": D("-0.1")}, "minimum edge must be 0 % or more"),
        ({"stop_loss": ExitRule(Distance.PERCENT, D(-2))}, "stop-loss distance must be positive"),
        ({"take_profit": ExitRule(Distance.PERCENT, D(100))}, "take-profit of 100 % would put the price"),
        ({"trailing": ExitRule(Distance.ATR, D(0))}, "trailing stop distance must be positive"),
        ({"correlation_threshold": 1.5}, "correlation threshold must be in (0, 1]"),
        ({"correlation_window": 2}, "correlation window must be at least 3 bars"),
        ({"max_orders_per_minute": 0}, "maximum orders per minute must be at least 1"),
    ],
)
def test_a_bad_value_is_named(changes, phrase):
    problems = replace(RiskPolicy(), **changes).validate()
    assert any(phrase in problem for problem in problems), problems


def test_a_disabled_trailing_stop_is_not_validated_and_mixed_kinds_are_not_compared():
    policy = RiskPolicy(
        trailing_enabled=False,
        trailing=ExitRule(Distance.ATR, D(0)),
        stop_loss=ExitRule(Distance.PERCENT, D(5)),
        take_profit=ExitRule(Distance.ATR, D(1)),
    )
    assert policy.validate() == ()
