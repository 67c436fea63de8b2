"""The risk policy of one account as plain values, its defaults and its validation.

The Django ``RiskPolicy`` model (history-tracked, edited by directors) stores these fields and builds a
:class:`RiskPolicy` to hand to the engine; :meth:`RiskPolicy.validate` is what its form and service call to
refuse a contradictory policy, and what :func:`~risk.engine.checks.check_order` calls to fail closed on one.

Units: every ``*_pct`` is a percent (``Decimal("0.5")`` = 0.5 %). An :class:`ExitRule` is a distance from
the entry price, either a multiple of the ATR (``ATR``) or a percent of the price (``PERCENT``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from enum import StrEnum

from risk.engine.reasons import is_number

HUNDRED = Decimal(100)


class Distance(StrEnum):
    ATR = "atr"  # a multiple of the average true range (in price units)
    PERCENT = "percent"  # a percent of the reference price


@dataclass(frozen=True, slots=True)
class ExitRule:
    """A price distance: ``value`` ATRs, or ``value`` % of the reference price."""

    kind: Distance
    value: Decimal

    def distance(self, *, price: Decimal, atr: Decimal) -> Decimal:
        """``value x atr`` (ATR) or ``price x value / 100`` (PERCENT), in price units."""
        if self.kind == Distance.ATR:
            return self.value * atr
        return price * self.value / HUNDRED

    def describe(self) -> str:
        return f"{self.value} ATR" if self.kind == Distance.ATR else f"{self.value} %"


@dataclass(frozen=True, slots=True)
class RiskPolicy:
    """One account's risk limits. The defaults are a cautious start for a small spot account.

    * ``risk_per_trade_pct``: the loss at the stop, as % of equity, that one entry may risk.
    * ``volatility_target_pct``: the largest one-bar standard deviation of a position's value, as % of
      equity (``quantity x price x sigma_bar <= equity x target / 100``); ``None`` disables the cap.
    * ``max_position_pct`` / ``max_group_exposure_pct``: USD exposure of one pair / one correlated group
      (open buy orders included) as % of equity.
    * ``correlation_threshold`` / ``correlation_window``: assets whose rolling correlation of bar log
      returns over the last ``correlation_window`` bars is above the threshold form one group.
    * ``max_daily_drawdown_pct``: the kill switch trips when equity falls this far below the UTC day's
      high-water mark.
    * ``stop_loss`` / ``take_profit`` / ``trailing`` (when ``trailing_enabled``): exit distances.
    * ``min_edge_pct``: the expected return an entry must keep after round-trip taker fees and slippage.
    * ``max_orders_per_minute`` / ``max_orders_per_hour``: entry order rate.
    * ``flatten_on_breach``: a kill-switch trip also sells every position.
    * ``auto_rearm_at_day_change``: a tripped kill switch re-arms itself at the next UTC day.
    """

    risk_per_trade_pct: Decimal = Decimal("0.5")
    volatility_target_pct: Decimal | None = Decimal("0.25")
    max_position_pct: Decimal = Decimal(20)
    max_group_exposure_pct: Decimal = Decimal(35)
    correlation_threshold: float = 0.7
    correlation_window: int = 720  # bars: 30 days of hourly bars
    max_daily_drawdown_pct: Decimal = Decimal(3)
    stop_loss: ExitRule = field(default_factory=lambda: ExitRule(Distance.ATR, Decimal(2)))
    take_profit: ExitRule = field(default_factory=lambda: ExitRule(Distance.ATR, Decimal(3)))
    trailing_enabled: bool = True
    trailing: ExitRule = field(default_factory=lambda: ExitRule(Distance.ATR, Decimal("2.5")))
    min_edge_pct: Decimal = Decimal("0.10")
    max_orders_per_minute: int = 6
    max_orders_per_hour: int = 60
    flatten_on_breach: bool = False
    auto_rearm_at_day_change: bool = False

    def validate(self) -> tuple[str, ...]:
        """Every problem with this policy at once, each a sentence naming the fields; empty when valid."""
        problems: list[str] = []
        percents = {
            "risk per trade": self.risk_per_trade_pct,
            "maximum position per pair": self.max_position_pct,
            "maximum exposure per correlated group": self.max_group_exposure_pct,
            "maximum daily drawdown": self.max_daily_drawdown_pct,
        }
        if self.volatility_target_pct is not None:
            percents["volatility target"] = self.volatility_target_pct
        for label, value in percents.items():
            if not is_number(value) or not Decimal(0) < value <= HUNDRED:
                problems.append(f"{label} must be above 0 % and at most 100 %, not {value}")
        if not is_number(self.min_edge_pct) or self.min_edge_pct < 0:
            problems.append(f"minimum edge must be 0 % or more, not {self.min_edge_pct}")
        rules = {"stop-loss": self.stop_loss, "take-profit": self.take_profit}
        if self.trailing_enabled:
            rules["trailing stop"] = self.trailing
        for label, rule in rules.items():
            if not is_number(rule.value) or rule.value <= 0:
                problems.append(f"{label} distance must be positive, not {rule.describe()}")
            elif rule.kind == Distance.PERCENT and rule.value >= HUNDRED:
                problems.append(f"{label} of {rule.describe()} would put the price at or below zero")
        if not problems:
            problems += self._contradictions()
        if not (isinstance(self.correlation_threshold, float | int) and 0 < self.correlation_threshold <= 1):
            problems.append(f"correlation threshold must be in (0, 1], not {self.correlation_threshold}")
        if not isinstance(self.correlation_window, int) or self.correlation_window < 3:
            problems.append(f"correlation window must be at least 3 bars, not {self.correlation_window}")
        for label, rate in (("minute", self.max_orders_per_minute), ("hour", self.max_orders_per_hour)):
            if not isinstance(rate, int) or rate < 1:
                problems.append(f"maximum orders per {label} must be at least 1, not {rate}")
        if (
            isinstance(self.max_orders_per_minute, int)
            and isinstance(self.max_orders_per_hour, int)
            and self.max_orders_per_minute > self.max_orders_per_hour
        ):
            problems.append(
                f"maximum orders per minute ({self.max_orders_per_minute}) is above maximum orders per hour "
                f"({self.max_orders_per_hour}): the per-minute limit could never be reached"
            )
        return tuple(problems)

    def _contradictions(self) -> list[str]:
        """Limits that are each valid but cannot hold together (only checked once every value is valid)."""
        problems = []
        if self.max_position_pct > self.max_group_exposure_pct:
            problems.append(
                f"maximum position per pair ({self.max_position_pct} %) is above the maximum exposure per "
                f"correlated group ({self.max_group_exposure_pct} %): a single pair could never use its limit"
            )
        if self.risk_per_trade_pct >= self.max_daily_drawdown_pct:
            problems.append(
                f"risk per trade ({self.risk_per_trade_pct} %) is not below the maximum daily drawdown "
                f"({self.max_daily_drawdown_pct} %): one stopped-out trade would trip the kill switch"
            )
        stop, take = self.stop_loss, self.take_profit
        if stop.kind == take.kind and stop.value >= take.value:
            problems.append(
                f"stop-loss distance ({stop.describe()}) is not below the take-profit distance "
                f"({take.describe()}): every trade would risk more than it aims to win"
            )
        return problems
