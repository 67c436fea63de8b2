"""Strategies: one closed bar's features, regime, model probability and position in; a signal out. Plain
Python, no Django (decision core).

A strategy answers :meth:`Strategy.signal` with a :class:`Signal`: ``ENTER`` (a new long, with the expected
edge in % that the pre-trade check's edge gate weighs against fees and slippage), ``EXIT`` (close the long)
or ``HOLD``, always with the strategy's name and a sentence saying why. Spot, long only: a strategy never
asks to add to an open position or to go short; sizing, limits and exits belong to the risk engine
(``risk.engine``), which :func:`trading.cycle_core.decide` runs after the strategy.

* :class:`ChampionStrategy` reads the champion model's probability that a long entered at this bar's
  close ends ``horizon`` bars later above the round-trip fee (``learning.features.labels``) and the rule
  regime (``learning.regime``): enter above ``entry_probability``; in a **bearish** regime only above
  ``bearish_entry_probability`` ("strongly confident"); exit below ``exit_probability``. Its thresholds are
  plain numbers (the shell reads them from the account's ``learning.StrategyThresholds``).
* :class:`RuleStrategy` is the transparent rule set used while no champion model exists: enter when the
  48-bar and 168-bar log-price trends both point up, the regime is not bearish and the 14-bar RSI is not
  overbought; exit when the 48-bar trend turns down or the regime turns bearish.
* :class:`DefaultStrategy` runs the champion when a probability is given and the rule strategy otherwise,
  and its reason says so (with the shell's note on why there is no probability): never silent.

**Expected edge** (what an entry claims, in %). The champion: with ``p`` the probability, and the policy's
take-profit and stop-loss distances at this bar (``T`` and ``S`` as % of the close; ATR rules use the
``atr_14`` feature)::

    edge = p x T - (1 - p) x S

i.e. a win is taken at the take-profit and a loss at the stop, weighted by the model's odds. The rule
strategy has no odds; it claims the move its 48-bar trend projects over ``horizon`` bars, capped at ``T``:
``edge = min(trend_48 x horizon x 100, T)``. Both are estimates before costs; the pre-trade check refuses an
entry whose edge does not clear ``2 x taker + 2 x slippage + min_edge_pct``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from decimal import Decimal
from enum import StrEnum
from typing import Protocol

import numpy as np

from learning.features import FEATURES
from learning.regime import BEARISH
from risk.engine.exits import ExitPlan
from risk.engine.policy import Distance, ExitRule, RiskPolicy

ZERO = Decimal(0)

# Column positions of the features the strategies read (rows are in ``learning.features.FEATURES`` order).
RET_24 = FEATURES.index("ret_24")
ATR_14 = FEATURES.index("atr_14")
TREND_48 = FEATURES.index("trend_48")
TREND_168 = FEATURES.index("trend_168")
RSI_14 = FEATURES.index("rsi_14")


class Action(StrEnum):
    ENTER = "enter"
    EXIT = "exit"
    HOLD = "hold"


@dataclass(frozen=True, slots=True)
class Holding:
    """The account's position in the pair. ``entry_price``: the round trip's average buy price before fees
    (what the exits are planned from); ``exit_plan``: the stored plan (``None``: none yet)."""

    quantity: Decimal = ZERO
    average_cost: Decimal = ZERO
    entry_price: Decimal | None = None
    exit_plan: ExitPlan | None = None

    @property
    def is_open(self) -> bool:
        return self.quantity > 0


FLAT = Holding()


@dataclass(frozen=True, slots=True)
class MarketView:
    """What the strategy knows of the pair at a closed bar. ``features``: that bar's row of
    :func:`learning.features.features_of` (``FEATURES`` order, floats, NaN where unknown); ``regime``:
    ``"bullish"``, ``"bearish"``, ``"sideways"`` or ``None`` (warm-up, gap); ``probability``: the champion's
    P(win) or ``None`` when there is no champion or it could not score this bar, ``model_note`` saying which
    model scored it or why none did."""

    features: np.ndarray
    regime: str | None
    probability: float | None = None
    model_note: str = ""


@dataclass(frozen=True, slots=True, init=False)
class Signal:
    """One per pair and bar: its ``__init__`` is the one ``dataclass`` would generate (same parameters,
    compared in ``tests/trading/test_strategy.py``), setting the frozen slots through their descriptors."""

    action: Action
    strategy: str
    reason: str
    expected_edge_pct: Decimal | None = None  # entries only

    def __init__(
        self, action: Action, strategy: str, reason: str, expected_edge_pct: Decimal | None = None
    ) -> None:
        s0, s1, s2, s3 = _SIGNAL_SLOTS
        s0(self, action)
        s1(self, strategy)
        s2(self, reason)
        s3(self, expected_edge_pct)


_SIGNAL_SLOTS = tuple(Signal.__dict__[f.name].__set__ for f in fields(Signal))


class Strategy(Protocol):
    name: str

    def signal(self, *, market: MarketView, holding: Holding, policy: RiskPolicy) -> Signal: ...


def _pct_distance(rule: ExitRule, atr_fraction: float) -> float:
    """An exit rule's distance as % of the price (ATR rules: ``value x atr_14 x 100``)."""
    if rule.kind == Distance.ATR:
        return float(rule.value) * atr_fraction * 100.0
    return float(rule.value)


def _edge(value: float) -> Decimal:
    return Decimal(f"{value:.4f}")


@dataclass(frozen=True, slots=True)
class ChampionThresholds:
    """The champion's thresholds as plain numbers (``learning.StrategyThresholds.entry_probability`` and
    the walk-forward's exit probability). ``bearish_entry_probability``: the confidence a new long needs in
    a bearish regime."""

    entry_probability: float = 0.55
    exit_probability: float = 0.45
    bearish_entry_probability: float = 0.70

    def __post_init__(self) -> None:
        values = (self.exit_probability, self.entry_probability, self.bearish_entry_probability)
        if not all(isinstance(v, float | int) and 0.0 <= v <= 1.0 for v in values):
            raise ValueError(f"probability thresholds must be within [0, 1], not {values}")
        if not self.exit_probability <= self.entry_probability <= self.bearish_entry_probability:
            raise ValueError(
                f"need exit ({self.exit_probability}) <= entry ({self.entry_probability}) <= bearish entry "
                f"({self.bearish_entry_probability}) probability"
            )


@dataclass(frozen=True, slots=True)
class ChampionStrategy:
    """Model probability and regime (see the module docstring)."""

    thresholds: ChampionThresholds = ChampionThresholds()
    name: str = "champion"

    def signal(self, *, market: MarketView, holding: Holding, policy: RiskPolicy) -> Signal:
        p = market.probability
        note = f" ({market.model_note})" if market.model_note else ""
        if p is None or not math.isfinite(p):
            return Signal(Action.HOLD, self.name, f"no model probability for this bar{note}")
        t = self.thresholds
        if holding.is_open:
            if p < t.exit_probability:
                return Signal(
                    Action.EXIT, self.name, f"model probability {p:.3f} fell below {t.exit_probability}{note}"
                )
            return Signal(Action.HOLD, self.name, f"holding: probability {p:.3f}{note}")
        regime = market.regime
        if regime is None:
            return Signal(Action.HOLD, self.name, "no regime for this bar (warm-up or gap): no entry")
        needed = t.bearish_entry_probability if regime == BEARISH else t.entry_probability
        if p <= needed:
            why = (
                f"{regime} regime needs above {needed}"
                if regime == BEARISH
                else f"entry needs above {needed}"
            )
            return Signal(Action.HOLD, self.name, f"probability {p:.3f}: {why}{note}")
        atr = float(market.features[ATR_14])
        if not math.isfinite(atr) or atr <= 0:
            return Signal(
                Action.HOLD, self.name, f"probability {p:.3f} but no ATR to price the edge: no entry"
            )
        take = _pct_distance(policy.take_profit, atr)
        stop = _pct_distance(policy.stop_loss, atr)
        edge = p * take - (1.0 - p) * stop
        return Signal(
            Action.ENTER,
            self.name,
            f"probability {p:.3f} above {needed} in a {regime} regime; edge {p:.3f} x {take:.2f} % "
            f"- {1 - p:.3f} x {stop:.2f} % = {edge:.2f} %{note}",
            _edge(edge),
        )


@dataclass(frozen=True, slots=True)
class RuleStrategy:
    """Trend following on the features alone (see the module docstring)."""

    horizon: int = 24
    overbought_rsi: float = 0.70
    name: str = "rule_trend"

    def signal(self, *, market: MarketView, holding: Holding, policy: RiskPolicy) -> Signal:
        return Signal(*self.answer(market, holding, policy, ""))

    def answer(
        self, market: MarketView, holding: Holding, policy: RiskPolicy, prefix: str
    ) -> tuple[Action, str, str, Decimal | None]:
        """The signal's fields, ``prefix`` before the reason (what :class:`DefaultStrategy` says first)."""
        row = market.features
        trend, long_trend = float(row[TREND_48]), float(row[TREND_168])
        rsi, atr = float(row[RSI_14]), float(row[ATR_14])
        regime = market.regime
        if not (math.isfinite(trend) and math.isfinite(long_trend) and math.isfinite(rsi)):
            return (
                Action.HOLD,
                self.name,
                f"{prefix}trend features incomplete (warm-up or gap): no decision",
                None,
            )
        if holding.is_open:
            if trend < 0:
                return (
                    Action.EXIT,
                    self.name,
                    f"{prefix}48-bar trend turned down ({trend * 100:.3f} %/bar)",
                    None,
                )
            if regime == BEARISH:
                return Action.EXIT, self.name, f"{prefix}regime turned bearish", None
            return Action.HOLD, self.name, f"{prefix}holding: 48-bar trend {trend * 100:.3f} %/bar", None
        if regime is None or regime == BEARISH:
            return Action.HOLD, self.name, f"{prefix}regime {regime or 'unknown'}: no new long", None
        if trend <= 0 or long_trend <= 0:
            return (
                Action.HOLD,
                self.name,
                f"{prefix}no uptrend (48-bar {trend * 100:.3f} %/bar, 168-bar {long_trend * 100:.3f} %/bar)",
                None,
            )
        if rsi >= self.overbought_rsi:
            return Action.HOLD, self.name, f"{prefix}uptrend but RSI {rsi:.2f} is overbought", None
        projected = trend * self.horizon * 100.0
        take = _pct_distance(policy.take_profit, atr) if math.isfinite(atr) and atr > 0 else projected
        edge = min(projected, take)
        return (
            Action.ENTER,
            self.name,
            f"{prefix}uptrend in a {regime} regime (48-bar {trend * 100:.3f} %/bar, 168-bar "
            f"{long_trend * 100:.3f} %/bar, RSI {rsi:.2f}); projected {projected:.2f} % over "
            f"{self.horizon} bars, edge {edge:.2f} %",
            _edge(edge),
        )


@dataclass(frozen=True, slots=True)
class DefaultStrategy:
    """The champion when the bar has a model probability, else the rule strategy, saying so."""

    champion: ChampionStrategy = ChampionStrategy()
    fallback: RuleStrategy = RuleStrategy()
    name: str = "default"

    def signal(self, *, market: MarketView, holding: Holding, policy: RiskPolicy) -> Signal:
        p = market.probability
        if p is not None and math.isfinite(p):
            return self.champion.signal(market=market, holding=holding, policy=policy)
        why = market.model_note or "no champion model"
        fallback = self.fallback
        if type(fallback) is RuleStrategy:  # one Signal, its reason said once
            return Signal(*fallback.answer(market, holding, policy, f"{why}: rule-based; "))
        signal = fallback.signal(market=market, holding=holding, policy=policy)
        return Signal(
            signal.action, signal.strategy, f"{why}: rule-based; {signal.reason}", signal.expected_edge_pct
        )
