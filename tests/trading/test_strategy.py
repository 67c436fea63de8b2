"""Strategies: champion vs rule-based, the bearish gate, and the recorded reason."""

from decimal import Decimal

import numpy as np
import pytest

from learning.features import FEATURES
from risk.engine import RiskPolicy
from trading.strategy import (
    FLAT,
    Action,
    ChampionStrategy,
    ChampionThresholds,
    DefaultStrategy,
    Holding,
    MarketView,
    RuleStrategy,
)

POLICY = RiskPolicy()
HELD = Holding(quantity=Decimal("0.5"), average_cost=Decimal(20_000), entry_price=Decimal(20_000))


def row(**values: float) -> np.ndarray:
    features = np.zeros(len(FEATURES))
    features[FEATURES.index("atr_14")] = 0.01
    features[FEATURES.index("rsi_14")] = 0.5
    for name, value in values.items():
        features[FEATURES.index(name)] = value
    return features


UPTREND = row(trend_48=0.001, trend_168=0.0005)
DOWNTREND = row(trend_48=-0.001, trend_168=-0.0005)


def test_champion_enters_above_threshold_with_edge_from_exits():
    signal = ChampionStrategy().signal(
        market=MarketView(UPTREND, "sideways", 0.70, "champion v3"), holding=FLAT, policy=POLICY
    )
    assert signal.action == Action.ENTER
    assert signal.strategy == "champion"
    # edge = p x take - (1 - p) x stop with the policy's 3 ATR take and 2 ATR stop at an ATR of 1 %
    assert signal.expected_edge_pct == Decimal("0.7") * 3 - Decimal("0.3") * 2
    assert "champion v3" in signal.reason


def test_champion_holds_below_threshold():
    signal = ChampionStrategy().signal(
        market=MarketView(UPTREND, "bullish", 0.52), holding=FLAT, policy=POLICY
    )
    assert signal.action == Action.HOLD
    assert "entry needs above 0.55" in signal.reason


@pytest.mark.parametrize(("probability", "action"), [(0.65, Action.HOLD), (0.75, Action.ENTER)])
def test_bearish_regime_needs_strong_confidence(probability, action):
    strategy = ChampionStrategy(ChampionThresholds(entry_probability=0.55, bearish_entry_probability=0.7))
    signal = strategy.signal(market=MarketView(UPTREND, "bearish", probability), holding=FLAT, policy=POLICY)
    assert signal.action == action
    if action == Action.HOLD:
        assert "bearish regime needs above 0.7" in signal.reason


def test_champion_exits_an_open_position_when_confidence_falls():
    strategy = ChampionStrategy()
    assert strategy.signal(
        market=MarketView(UPTREND, "bullish", 0.40), holding=HELD, policy=POLICY
    ).action == (Action.EXIT)
    assert strategy.signal(
        market=MarketView(UPTREND, "bullish", 0.50), holding=HELD, policy=POLICY
    ).action == (Action.HOLD)


def test_thresholds_must_be_ordered():
    with pytest.raises(ValueError, match="exit"):
        ChampionThresholds(entry_probability=0.5, exit_probability=0.6)


def test_rule_strategy_follows_the_trend():
    rule = RuleStrategy()
    entry = rule.signal(market=MarketView(UPTREND, "bullish"), holding=FLAT, policy=POLICY)
    assert entry.action == Action.ENTER
    assert entry.expected_edge_pct == Decimal("2.4000")  # 0.1 %/bar x 24 bars, below the 3 % take-profit
    assert (
        rule.signal(market=MarketView(DOWNTREND, "bullish"), holding=FLAT, policy=POLICY).action
        == Action.HOLD
    )
    assert (
        rule.signal(market=MarketView(UPTREND, "bearish"), holding=FLAT, policy=POLICY).action == Action.HOLD
    )
    assert (
        rule.signal(market=MarketView(DOWNTREND, "sideways"), holding=HELD, policy=POLICY).action
        == Action.EXIT
    )
    overbought = row(trend_48=0.001, trend_168=0.0005, rsi_14=0.8)
    assert (
        "overbought"
        in rule.signal(market=MarketView(overbought, "bullish"), holding=FLAT, policy=POLICY).reason
    )


def test_rule_strategy_refuses_incomplete_features():
    signal = RuleStrategy().signal(
        market=MarketView(row(trend_48=np.nan), "bullish"), holding=FLAT, policy=POLICY
    )
    assert signal.action == Action.HOLD
    assert "incomplete" in signal.reason


def test_default_strategy_says_which_strategy_ran_and_why():
    strategy = DefaultStrategy()
    without = strategy.signal(
        market=MarketView(UPTREND, "bullish", None, "no champion model for BTC/USD 60m"),
        holding=FLAT,
        policy=POLICY,
    )
    assert without.strategy == "rule_trend"
    assert without.reason.startswith("no champion model for BTC/USD 60m: rule-based; ")
    with_model = strategy.signal(
        market=MarketView(UPTREND, "bullish", 0.7, "champion v3"), holding=FLAT, policy=POLICY
    )
    assert with_model.strategy == "champion"


def test_default_fallback_says_the_rule_strategys_own_signal():
    """DefaultStrategy formats the rule strategy's reason once, behind its own prefix: the same signal as
    wrapping the rule strategy's answer, in every branch."""
    rule, default = RuleStrategy(), DefaultStrategy()
    rows = [UPTREND, DOWNTREND, row(trend_48=float("nan")), row(trend_48=0.001, trend_168=0.001, rsi_14=0.9)]
    for features in rows:
        for regime in ("bullish", "bearish", None):
            for holding in (FLAT, HELD):
                market = MarketView(features, regime, None, "no champion model for BTC/USD 60m")
                alone = rule.signal(market=market, holding=holding, policy=POLICY)
                combined = default.signal(market=market, holding=holding, policy=POLICY)
                assert combined.reason == f"no champion model for BTC/USD 60m: rule-based; {alone.reason}"
                assert (combined.action, combined.strategy, combined.expected_edge_pct) == (
                    alone.action,
                    alone.strategy,
                    alone.expected_edge_pct,
                )


def test_signal_init_is_the_dataclass_one():
    """The written-out ``__init__`` takes the fields in order with their defaults, and stays frozen."""
    import dataclasses
    import inspect

    from trading.strategy import Signal

    parameters = list(inspect.signature(Signal).parameters.values())
    fields = dataclasses.fields(Signal)
    assert [p.name for p in parameters] == [f.name for f in fields]
    assert [p.default for p in parameters] == [
        inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default for f in fields
    ]
    signal = Signal(Action.ENTER, "x", "why", Decimal(2))
    assert (signal.action, signal.strategy, signal.reason, signal.expected_edge_pct) == (
        Action.ENTER, "x", "why", Decimal(2),
    )  # fmt: skip
    assert Signal(Action.HOLD, "x", "why") == Signal(action=Action.HOLD, strategy="x", reason="why")
    assert Signal(Action.HOLD, "x", "why").expected_edge_pct is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        signal.reason = "other"
