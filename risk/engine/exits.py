"""Stop-loss, take-profit and trailing stop of a long spot position: planned at entry, evaluated per bar.

At an entry fill at price ``P`` with per-bar price volatility ``V`` (ATR, see :mod:`~risk.engine.sizing`),
taker fee rate ``f = taker_pct / 100`` and expected exit slippage ``s = slippage_pct / 100``::

    stop          = ceil_to_tick(P - D_stop)                 D_stop = stop_loss distance
    breakeven     = P x (1 + f) / (1 - f - s)                sell proceeds after fee and slippage = cost + fee
                                                             (1 - f - s < (1 - s)(1 - f): never optimistic)
    fee floor     = ceil_to_tick(breakeven x (1 + min_edge_pct / 100))
    take_profit   = max(ceil_to_tick(P + D_take), fee floor)
    trail         = D_trail fixed at entry (ATR rule) or trailing.value % of the high-water price

so a take-profit always clears the round-trip fees plus the policy's minimum edge, and the stop is rounded
towards the price (never a larger loss than planned). Each bar, with the stop *before* the bar:

1. ``low <= stop`` → exit ``STOP_LOSS`` (or ``TRAILING_STOP`` once the stop has ratcheted above the initial
   stop); a bar that reaches both stop and take-profit exits at the stop (the order inside a bar is unknown,
   so the worse is assumed);
2. else ``high >= take_profit`` → exit ``TAKE_PROFIT``;
3. else the trailing stop ratchets: ``stop = max(stop, ceil_to_tick(high_water - trail))`` — it only rises.

A tick is a bar with ``low = high = price``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from decimal import Decimal
from enum import StrEnum

from risk.engine.policy import HUNDRED, Distance, RiskPolicy
from risk.engine.reasons import RiskInputError, is_number
from risk.engine.sizing import price_volatility
from trading.brokers.base import PairRules
from trading.fees import FeeRates
from trading.matching import plain, round_to_step, tick_of


class ExitReason(StrEnum):
    STOP_LOSS = "stop_loss"
    TRAILING_STOP = "trailing_stop"
    TAKE_PROFIT = "take_profit"


@dataclass(frozen=True, slots=True)
class ExitPlan:
    """The protective levels of one open long position (stored on the position by the shell)."""

    entry_price: Decimal
    initial_stop: Decimal
    stop_price: Decimal
    take_profit_price: Decimal
    high_water: Decimal  # highest price seen since entry (trailing reference)
    trailing: bool
    trail_distance: Decimal | None  # price units (ATR rule); None with a percent trail
    trail_pct: Decimal | None  # percent of the high-water price; None with an ATR trail
    tick: Decimal


@dataclass(frozen=True, slots=True)
class ExitSignal:
    reason: ExitReason
    trigger_price: Decimal
    message: str


@dataclass(frozen=True, slots=True)
class ExitEvaluation:
    plan: ExitPlan
    signal: ExitSignal | None = None


def breakeven_price(*, entry_price: Decimal, fees: FeeRates, slippage_pct: Decimal) -> Decimal:
    """The sell price whose proceeds after the taker fee and slippage repay the entry cost and its fee:
    ``P x (1 + f) / (1 - f - s)``."""
    f = fees.taker_pct / HUNDRED
    return entry_price * (1 + f) / (1 - f - slippage_pct / HUNDRED)


def plan_exits(
    *,
    policy: RiskPolicy,
    pair: PairRules,
    entry_price: Decimal,
    fees: FeeRates,
    slippage_pct: Decimal,
    atr: Decimal | None = None,
    realised_volatility: Decimal | None = None,
) -> ExitPlan:
    """Stop-loss, fee-aware take-profit and trailing parameters at entry (formulas in the module docstring).
    Raises :class:`RiskInputError` when the inputs cannot give a stop above zero."""
    if not is_number(entry_price) or entry_price <= 0:
        raise RiskInputError(f"entry price {entry_price} is not a positive number")
    if not is_number(slippage_pct) or slippage_pct < 0:
        raise RiskInputError(f"slippage {slippage_pct} % is not a non-negative number")
    volatility = price_volatility(price=entry_price, atr=atr, realised_volatility=realised_volatility)
    rules = [policy.stop_loss, policy.take_profit] + ([policy.trailing] if policy.trailing_enabled else [])
    needs_volatility = any(rule.kind == Distance.ATR for rule in rules)
    if volatility is None and needs_volatility:
        raise RiskInputError(f"volatility (ATR {atr}, realised {realised_volatility}) is not usable")
    volatility = volatility or Decimal(0)
    tick = tick_of(pair)
    stop = round_to_step(
        entry_price - policy.stop_loss.distance(price=entry_price, atr=volatility), tick, up=True
    )
    if stop <= 0:
        raise RiskInputError(f"a stop-loss of {policy.stop_loss.describe()} puts the stop at or below zero")
    raw_take = round_to_step(
        entry_price + policy.take_profit.distance(price=entry_price, atr=volatility), tick, up=True
    )
    floor = round_to_step(
        breakeven_price(entry_price=entry_price, fees=fees, slippage_pct=slippage_pct)
        * (1 + policy.min_edge_pct / HUNDRED),
        tick,
        up=True,
    )
    atr_trail = policy.trailing.kind == Distance.ATR
    return ExitPlan(
        entry_price=entry_price,
        initial_stop=stop,
        stop_price=stop,
        take_profit_price=max(raw_take, floor),
        high_water=entry_price,
        trailing=policy.trailing_enabled,
        trail_distance=policy.trailing.value * volatility if atr_trail else None,
        trail_pct=None if atr_trail else policy.trailing.value,
        tick=tick,
    )


def ratchet(plan: ExitPlan, *, high: Decimal) -> ExitPlan:
    """The plan after prices reached ``high``: the high-water mark rises, and the trailing stop with it;
    ``stop_price`` is ``max(old stop, ceil_to_tick(high_water - trail))`` so it never falls."""
    high_water = max(plan.high_water, high)
    if not plan.trailing:
        return replace(plan, high_water=high_water)
    trail = plan.trail_distance if plan.trail_distance is not None else high_water * plan.trail_pct / HUNDRED
    candidate = round_to_step(high_water - trail, plan.tick, up=True)
    return replace(plan, high_water=high_water, stop_price=max(plan.stop_price, candidate))


def evaluate_bar(plan: ExitPlan, *, low: Decimal, high: Decimal) -> ExitEvaluation:
    """Check one bar (or a tick: ``low = high``) against the plan; the order of the rules is in the module
    docstring. After an exit signal the plan is returned unchanged (the position is being closed)."""
    if not (is_number(low) and is_number(high)) or low <= 0 or high < low:
        raise RiskInputError(f"bar with low {low} and high {high} is not valid")
    if low <= plan.stop_price:
        trailing = plan.stop_price > plan.initial_stop
        reason = ExitReason.TRAILING_STOP if trailing else ExitReason.STOP_LOSS
        label = "trailing stop" if trailing else "stop-loss"
        message = f"price fell to {plain(low)}, through the {label} at {plain(plan.stop_price)}"
        return ExitEvaluation(plan, ExitSignal(reason, plan.stop_price, message))
    if high >= plan.take_profit_price:
        message = f"price rose to {plain(high)}, through the take-profit at {plain(plan.take_profit_price)}"
        return ExitEvaluation(plan, ExitSignal(ExitReason.TAKE_PROFIT, plan.take_profit_price, message))
    return ExitEvaluation(ratchet(plan, high=high))
