"""The hedge decision core: target USD share, rebalance plan, buying-power cap, performance. No Django.

Aether hedges without derivatives: each account keeps a **target share of its equity in USD**. The services
(``hedging/services.py``) load the account's state, call these functions, persist and audit; the backtest and
``hedging/replay.py`` call the very same functions over arrays.

Units: every ``*_pct`` is a percent (``Decimal("12.5")`` = 12.5 %); a bare ``target`` (as taken by
:func:`buying_power_cap` and returned by ``hedging.selectors.hedge_target_for``) is a **fraction** 0..1.

**Inputs** (:class:`HedgeInputs`), measured on closed bars:

* ``vol_now``: the realised volatility now, the sample standard deviation of the last ``vol_window`` bar log
  returns (:func:`realised_volatility`);
* ``vol_reference``: its own history, the median of that rolling volatility over the last ``vol_lookback``
  bars (:func:`volatility_inputs`); the ratio ``rho = vol_now / vol_reference`` says how turbulent the market
  is compared with its normal (1 = normal, 3 = three times as volatile as usual);
* ``drawdown_pct``: how far the account's equity is below its high-water mark,
  ``(high_water - equity) / high_water x 100`` (:func:`drawdown_pct`).

**Target** (:func:`target_pct`), with ``clip(x) = min(1, max(0, x))``::

    vol score        s_v = clip((rho - vol_calm_ratio) / (vol_turmoil_ratio - vol_calm_ratio))
    drawdown score   s_d = clip((drawdown_pct - drawdown_start_pct)
                                / (drawdown_full_pct - drawdown_start_pct))
    score            s   = clip(vol_weight x s_v + drawdown_weight x s_d)
    target_pct           = floor_pct + (ceiling_pct - floor_pct) x s        rounded down to 0.01 %

Every step is non-decreasing in ``vol_now`` (at a fixed reference) and in ``drawdown_pct`` (the weights are
not negative, ``clip`` and rounding down are monotone), so **more volatility or a deeper drawdown never lowers
the target**, and ``floor_pct <= target_pct <= ceiling_pct`` always. Calm markets and no drawdown give the
floor; either input alone can reach the ceiling when its weight is 1.

**Manual override** (:func:`decide_target`): a director's target wins until its expiry (if any); at or after
the expiry the automatic target resumes (the shell records and audits the lapse). A manual target may be
anywhere in 0..100 %: floor and ceiling bound the automatic target only.

**Rebalancing** (:func:`rebalance_plan`): nothing happens while the actual USD share is within ``band_pct``
percentage points of the target (fees are saved) or while the last rebalance is younger than
``min_interval``. Below the band, crypto is sold for USD up to the target, fee- and slippage-aware::

    gross notional to sell  G = (t x E - U) / ((1 - f) x (1 - s + t x s))

(``t`` target fraction, ``E`` equity, ``U`` USD, ``f`` taker fee and ``s`` slippage as fractions: after the
sale ``U' = t x E'`` exactly, before lot rounding). ``G`` is taken from the holdings in ``order_by`` order
(most volatile first, or largest first), each sell rounded down to the pair's lot, never more than the free
(sellable) quantity, skipped when below Kraken's ``ordermin`` / ``costmin``; a remainder that would be left
below ``ordermin`` (dust that could never be sold) is sold with it. Above the band, USD is **released** to the
strategy's budget: no order, the buying-power cap rises (:func:`buying_power_cap`).

Equity here is the risk engine's marked equity (``risk.engine.nav``): USD plus every holding at its price
less the taker fee to sell it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_FLOOR, Decimal
from enum import StrEnum

import numpy as np

from risk.engine.reasons import is_number
from risk.engine.sizing import floor_to_lot, minimum_findings
from trading.brokers.base import PairRules, Side
from trading.fees import FeeRates
from trading.matching import fee_for, plain

ZERO = Decimal(0)
ONE = Decimal(1)
HUNDRED = Decimal(100)
#: Targets and shares are stated to 0.01 %.
PCT_PLACES = Decimal("0.01")


class HedgeInputError(ValueError):
    """A value the hedge core cannot compute with (NaN, a negative volatility, a naive time, a missing
    input for the automatic target). The message says which; nothing is decided on it."""


class Mode(StrEnum):
    AUTO = "auto"
    MANUAL = "manual"


class Action(StrEnum):
    HOLD = "hold"  # nothing to do (inside the band, too soon, nothing sellable)
    SELL = "sell"  # sell crypto for USD
    RELEASE = "release"  # USD above the target goes back to the strategy's budget (no order)


class Ordering(StrEnum):
    VOLATILITY = "volatility"  # most volatile holding first (then largest)
    VALUE = "value"  # largest holding first


# --- Parameters and inputs ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HedgeParams:
    """One account's hedge rules (the Django ``HedgePolicy`` stores these and builds this value).

    * ``floor_pct`` / ``ceiling_pct``: bounds of the automatic target, % of equity in USD.
    * ``vol_weight``, ``vol_calm_ratio``, ``vol_turmoil_ratio``: the volatility score is 0 at or below the
      calm ratio of ``vol_now / vol_reference`` and 1 at or above the turmoil ratio.
    * ``drawdown_weight``, ``drawdown_start_pct``, ``drawdown_full_pct``: the drawdown score is 0 at or below
      the start and 1 at or beyond the full drawdown from the high-water mark.
    * ``vol_window``: bars in the current realised volatility; ``vol_lookback``: bars of its history the
      reference (median) is taken over; ``drawdown_lookback_days``: the high-water mark's look-back.
    * ``band_pct``: percentage points around the target inside which nothing is traded.
    * ``min_interval``: the least time between two rebalances.
    * ``order_by``: which holdings are sold first.
    * ``killswitch_warn_ratio``: recommend the kill switch when the UTC day's drawdown reaches this share of
      the risk policy's ``max_daily_drawdown_pct``.
    """

    floor_pct: Decimal = Decimal(10)
    ceiling_pct: Decimal = Decimal(70)
    vol_weight: Decimal = Decimal("0.6")
    vol_calm_ratio: Decimal = Decimal("1.2")
    vol_turmoil_ratio: Decimal = Decimal("3")
    drawdown_weight: Decimal = Decimal("0.6")
    drawdown_start_pct: Decimal = Decimal(2)
    drawdown_full_pct: Decimal = Decimal(15)
    vol_window: int = 24
    vol_lookback: int = 2160  # 90 days of hourly bars
    drawdown_lookback_days: int = 30
    band_pct: Decimal = Decimal(10)
    min_interval: timedelta = timedelta(hours=4)
    order_by: Ordering = Ordering.VOLATILITY
    killswitch_warn_ratio: Decimal = Decimal("0.8")

    def validate(self) -> tuple[str, ...]:
        """Every problem at once, each a sentence naming the fields; empty when valid."""
        problems: list[str] = []
        for label, value in (("floor", self.floor_pct), ("ceiling", self.ceiling_pct)):
            if not is_number(value) or not ZERO <= value <= HUNDRED:
                problems.append(f"{label} must be between 0 % and 100 %, not {value}")
        if not problems and self.floor_pct > self.ceiling_pct:
            problems.append(f"floor ({self.floor_pct} %) is above the ceiling ({self.ceiling_pct} %)")
        for label, value in (
            ("volatility weight", self.vol_weight),
            ("drawdown weight", self.drawdown_weight),
        ):
            if not is_number(value) or not ZERO <= value <= ONE:
                problems.append(f"{label} must be between 0 and 1, not {value}")
        if not (is_number(self.vol_calm_ratio) and self.vol_calm_ratio >= 0):
            problems.append(f"calm volatility ratio must be 0 or more, not {self.vol_calm_ratio}")
        elif not (is_number(self.vol_turmoil_ratio) and self.vol_turmoil_ratio > self.vol_calm_ratio):
            problems.append(
                f"turmoil volatility ratio ({self.vol_turmoil_ratio}) must be above the calm ratio "
                f"({self.vol_calm_ratio})"
            )
        if not (is_number(self.drawdown_start_pct) and ZERO <= self.drawdown_start_pct < HUNDRED):
            problems.append(f"drawdown start must be in [0 %, 100 %), not {self.drawdown_start_pct}")
        elif not (
            is_number(self.drawdown_full_pct) and self.drawdown_start_pct < self.drawdown_full_pct <= HUNDRED
        ):
            problems.append(
                f"full drawdown ({self.drawdown_full_pct} %) must be above the drawdown start "
                f"({self.drawdown_start_pct} %) and at most 100 %"
            )
        for label, value, least in (
            ("volatility window", self.vol_window, 2),
            ("volatility look-back", self.vol_lookback, 2),
            ("drawdown look-back", self.drawdown_lookback_days, 1),
        ):
            if not isinstance(value, int) or isinstance(value, bool) or value < least:
                problems.append(f"{label} must be a whole number of at least {least}, not {value}")
        if (
            not problems
            and isinstance(self.vol_window, int)
            and isinstance(self.vol_lookback, int)
            and self.vol_lookback < self.vol_window
        ):
            problems.append(
                f"volatility look-back ({self.vol_lookback} bars) is shorter than its window "
                f"({self.vol_window})"
            )
        if not is_number(self.band_pct) or not ZERO <= self.band_pct < HUNDRED:
            problems.append(f"band must be in [0, 100) percentage points, not {self.band_pct}")
        if not isinstance(self.min_interval, timedelta) or self.min_interval < timedelta(0):
            problems.append(f"minimum interval must be a non-negative duration, not {self.min_interval}")
        if not is_number(self.killswitch_warn_ratio) or not ZERO < self.killswitch_warn_ratio <= ONE:
            problems.append(f"kill-switch warning ratio must be in (0, 1], not {self.killswitch_warn_ratio}")
        try:
            Ordering(self.order_by)
        except ValueError:
            problems.append(f"order of sells must be one of {', '.join(Ordering)}, not {self.order_by}")
        return tuple(problems)


@dataclass(frozen=True, slots=True)
class HedgeInputs:
    """What the target is computed from (see the module docstring). ``vol_now`` and ``vol_reference`` are
    per-bar standard deviations of log returns (floats or Decimals: analytics); ``drawdown_pct`` is a
    percent below the high-water mark."""

    vol_now: float | Decimal
    vol_reference: float | Decimal
    drawdown_pct: Decimal

    @property
    def vol_ratio(self) -> Decimal:
        """``vol_now / vol_reference`` (raises :class:`HedgeInputError` on unusable values)."""
        now, reference = (
            _decimal(self.vol_now, "current volatility"),
            _decimal(self.vol_reference, "reference volatility"),
        )
        if now < 0:
            raise HedgeInputError(f"current volatility {self.vol_now} is negative")
        if reference <= 0:
            raise HedgeInputError(f"reference volatility {self.vol_reference} is not positive")
        return now / reference

    def as_dict(self) -> dict[str, str]:
        """JSON-ready, for snapshots and audit rows."""
        return {
            "vol_now": str(self.vol_now),
            "vol_reference": str(self.vol_reference),
            "vol_ratio": str(self.vol_ratio.quantize(Decimal("0.0001"))),
            "drawdown_pct": str(self.drawdown_pct),
        }


def _decimal(value, label: str) -> Decimal:
    if not is_number(value):
        raise HedgeInputError(f"{label} {value!r} is not a finite number")
    # repr() of a float is its shortest round-tripping decimal: 0.03 / 0.01 is 3, and the conversion is
    # monotone (a larger float never gives a smaller Decimal), which the target's monotonicity needs.
    return value if isinstance(value, Decimal) else Decimal(repr(float(value)))


def _clip(value: Decimal) -> Decimal:
    return min(ONE, max(ZERO, value))


def _pct(value: Decimal) -> Decimal:
    return value.quantize(PCT_PLACES, rounding=ROUND_FLOOR)


# --- Target ------------------------------------------------------------------------------------------------


def scores(params: HedgeParams, inputs: HedgeInputs) -> tuple[Decimal, Decimal]:
    """``(s_v, s_d)``: the volatility and drawdown scores, each in 0..1 (module docstring)."""
    ratio = inputs.vol_ratio
    drawdown = _decimal(inputs.drawdown_pct, "drawdown")
    if drawdown < 0:
        raise HedgeInputError(f"drawdown {inputs.drawdown_pct} % is negative")
    s_v = _clip((ratio - params.vol_calm_ratio) / (params.vol_turmoil_ratio - params.vol_calm_ratio))
    s_d = _clip(
        (drawdown - params.drawdown_start_pct) / (params.drawdown_full_pct - params.drawdown_start_pct)
    )
    return s_v, s_d


def target_pct(params: HedgeParams, inputs: HedgeInputs) -> Decimal:
    """The automatic target USD share, % of equity, in ``[floor_pct, ceiling_pct]``, to 0.01 %: monotone
    non-decreasing in ``vol_now`` and ``drawdown_pct`` (formula in the module docstring). Raises
    :class:`HedgeInputError` for an invalid policy or unusable inputs."""
    problems = params.validate()
    if problems:
        raise HedgeInputError("invalid hedge policy: " + "; ".join(problems))
    s_v, s_d = scores(params, inputs)
    score = _clip(params.vol_weight * s_v + params.drawdown_weight * s_d)
    target = params.floor_pct + (params.ceiling_pct - params.floor_pct) * score
    return min(params.ceiling_pct, max(params.floor_pct, _pct(target)))


@dataclass(frozen=True, slots=True)
class TargetDecision:
    """The target in force and why. ``auto_pct`` is the automatic target (``None`` when its inputs are
    unknown and a manual target is in force); ``expired`` says a manual override lapsed just now."""

    target_pct: Decimal
    mode: Mode
    auto_pct: Decimal | None
    expired: bool
    reason: str

    @property
    def target(self) -> Decimal:
        """The target as a fraction 0..1."""
        return self.target_pct / HUNDRED


def decide_target(
    params: HedgeParams,
    inputs: HedgeInputs | None,
    *,
    mode: Mode | str,
    manual_target_pct: Decimal | None = None,
    manual_expires_at: datetime | None = None,
    now: datetime,
) -> TargetDecision:
    """The target in force at ``now``: the manual one while ``mode`` is manual and not expired
    (``now < manual_expires_at``, or no expiry), else the automatic :func:`target_pct`."""
    _aware(now, "now")
    mode = Mode(mode)
    auto = target_pct(params, inputs) if inputs is not None else None
    if mode == Mode.MANUAL:
        if manual_target_pct is None or not is_number(manual_target_pct):
            raise HedgeInputError(f"manual mode without a usable manual target ({manual_target_pct})")
        if not ZERO <= manual_target_pct <= HUNDRED:
            raise HedgeInputError(f"manual target {manual_target_pct} % is not in 0..100 %")
        if manual_expires_at is None or now < _aware(manual_expires_at, "manual expiry"):
            until = f" until {manual_expires_at.isoformat()}" if manual_expires_at else ""
            return TargetDecision(
                _pct(manual_target_pct), Mode.MANUAL, auto, False, f"manual override{until}"
            )
        expired = True
        reason = f"manual override expired at {manual_expires_at.isoformat()}: automatic target resumes"
    else:
        expired = False
        reason = "automatic target"
    if auto is None:
        raise HedgeInputError("the automatic target needs volatility and drawdown inputs; none were given")
    return TargetDecision(auto, Mode.AUTO, auto, expired, reason)


def _aware(at: datetime, label: str) -> datetime:
    if not isinstance(at, datetime) or at.tzinfo is None:
        raise HedgeInputError(f"{label} {at!r} must be an aware datetime (UTC)")
    return at


# --- Buying power ------------------------------------------------------------------------------------------


def buying_power_cap(equity: Decimal, target: Decimal) -> Decimal:
    """The most the strategy may hold in crypto: ``equity x (1 - target)``, ``target`` a **fraction** 0..1
    (0 when equity is not positive). A target above 1 (a percent passed by mistake) is refused."""
    if not is_number(equity):
        raise HedgeInputError(f"equity {equity} is not a number")
    if not is_number(target) or not ZERO <= Decimal(target) <= ONE:
        raise HedgeInputError(f"hedge target {target} is not a fraction in 0..1")
    if equity <= 0:
        return ZERO
    return equity * (ONE - Decimal(target))


def strategy_budget(*, equity: Decimal, target: Decimal, exposure: Decimal) -> Decimal:
    """What the strategy may still spend on new entries: ``max(0, buying_power_cap - exposure)``, with
    ``exposure`` its crypto held (marked) plus USD reserved by its open buys."""
    if not is_number(exposure):
        raise HedgeInputError(f"exposure {exposure} is not a number")
    return max(ZERO, buying_power_cap(equity, target) - exposure)


# --- Rebalancing -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Holding:
    """One crypto holding. ``quantity``: all of it (marked into equity); ``free``: what may be sold now
    (minus what open sells reserve); ``price``: the price it is marked and sold at (a bid or last trade);
    ``volatility``: its per-bar realised volatility, for ``Ordering.VOLATILITY`` (``None``: unknown, last)."""

    symbol: str
    pair: PairRules
    quantity: Decimal
    free: Decimal
    price: Decimal
    volatility: float | None = None

    @property
    def value(self) -> Decimal:
        return self.quantity * self.price


@dataclass(frozen=True, slots=True)
class HedgeOrder:
    """A market sell for the hedge: ``quantity`` at about ``price`` (before slippage)."""

    symbol: str
    side: Side
    quantity: Decimal
    price: Decimal
    expected_fee: Decimal  # taker fee on the expected proceeds, rounded up

    @property
    def notional(self) -> Decimal:
        return self.quantity * self.price


@dataclass(frozen=True, slots=True)
class RebalancePlan:
    action: Action
    reason: str
    equity: Decimal
    usd: Decimal
    actual_pct: Decimal  # USD share now, % of equity (0 when equity is not positive)
    target_pct: Decimal
    orders: tuple[HedgeOrder, ...] = ()
    release_usd: Decimal = ZERO  # USD above the target, back to the strategy's budget
    skipped: tuple[str, ...] = field(default=())  # holdings not sold, and why
    expected_fees: Decimal = ZERO

    @property
    def expected_pct(self) -> Decimal:
        """The USD share expected after the orders fill at their reference price less the expected fees
        (slippage not counted: the plan's sizing already allows for it)."""
        if not self.orders or self.equity <= 0:
            return self.actual_pct
        proceeds = sum((order.notional - order.expected_fee for order in self.orders), ZERO)
        return _pct((self.usd + proceeds) / self.equity * HUNDRED)


def account_equity(*, usd: Decimal, holdings: Sequence[Holding], fees: FeeRates) -> Decimal:
    """USD plus each holding at its price, less the taker fee to sell it (``risk.engine.nav``'s formula)."""
    equity = usd
    for holding in holdings:
        if not is_number(holding.quantity) or holding.quantity < 0:
            raise HedgeInputError(f"{holding.symbol}: held quantity {holding.quantity} is not valid")
        if holding.quantity == 0:
            continue
        if not is_number(holding.price) or holding.price <= 0:
            raise HedgeInputError(f"{holding.symbol}: no usable price ({holding.price})")
        value = holding.quantity * holding.price
        equity += value - fee_for(value, fees.taker_pct)
    return equity


def usd_share_pct(*, usd: Decimal, equity: Decimal) -> Decimal:
    """``usd / equity x 100`` to 0.01 % (0 when equity is not positive)."""
    return _pct(usd / equity * HUNDRED) if equity > 0 else ZERO


def gross_to_sell(
    *, target: Decimal, equity: Decimal, usd: Decimal, fees: FeeRates, slippage_pct: Decimal
) -> Decimal:
    """``G`` of the module docstring: the gross notional (at the marks) whose sale brings the USD share to
    ``target`` (a fraction) after the taker fee and slippage; 0 when the share is already there."""
    f, s = fees.taker_pct / HUNDRED, slippage_pct / HUNDRED
    need = target * equity - usd
    if need <= 0:
        return ZERO
    return need / ((ONE - f) * (ONE - s + target * s))


def rebalance_plan(
    *,
    params: HedgeParams,
    target_pct: Decimal,
    usd: Decimal,
    holdings: Sequence[Holding],
    fees: FeeRates,
    now: datetime,
    last_rebalance_at: datetime | None,
    slippage_pct: Decimal = ZERO,
) -> RebalancePlan:
    """What to do to bring the USD share to ``target_pct`` (rules in the module docstring). ``usd`` is the
    whole USD balance; ``holdings`` every crypto holding with its price. Never raises for a merely
    unsellable holding (it is reported in ``skipped``); raises :class:`HedgeInputError` for unusable
    numbers."""
    _aware(now, "now")
    if not is_number(usd) or usd < 0:
        raise HedgeInputError(f"USD balance {usd} is not valid")
    if not is_number(target_pct) or not ZERO <= target_pct <= HUNDRED:
        raise HedgeInputError(f"target {target_pct} % is not in 0..100 %")
    if not is_number(slippage_pct) or slippage_pct < 0:
        raise HedgeInputError(f"slippage {slippage_pct} % is not valid")
    equity = account_equity(usd=usd, holdings=holdings, fees=fees)
    actual = usd_share_pct(usd=usd, equity=equity)

    def plan(action: Action, reason: str, **extra) -> RebalancePlan:
        return RebalancePlan(action, reason, equity, usd, actual, target_pct, **extra)

    if equity <= 0:
        return plan(Action.HOLD, "no equity to hedge")
    gap = actual - target_pct
    if abs(gap) <= params.band_pct:
        return plan(
            Action.HOLD,
            f"USD share {plain(actual)} % is within {plain(params.band_pct)} points of the target "
            f"{plain(target_pct)} %",
        )
    if (
        last_rebalance_at is not None
        and now - _aware(last_rebalance_at, "last rebalance") < params.min_interval
    ):
        return plan(
            Action.HOLD,
            f"USD share {plain(actual)} % is off the target {plain(target_pct)} % but the last rebalance at "
            f"{last_rebalance_at.isoformat()} is less than {params.min_interval} ago",
        )
    if gap > 0:
        release = usd - target_pct / HUNDRED * equity
        return plan(
            Action.RELEASE,
            f"USD share {plain(actual)} % is above the target {plain(target_pct)} %: "
            f"{plain(release.quantize(PCT_PLACES))} USD released to the strategy's budget",
            release_usd=release,
        )
    orders, skipped = _sells(
        gross=gross_to_sell(
            target=target_pct / HUNDRED, equity=equity, usd=usd, fees=fees, slippage_pct=slippage_pct
        ),
        holdings=holdings,
        order_by=Ordering(params.order_by),
        fees=fees,
        slippage_pct=slippage_pct,
    )
    if not orders:
        why = "; ".join(skipped) or "no crypto held"
        return plan(
            Action.HOLD,
            f"USD share {plain(actual)} % is below the target {plain(target_pct)} % but nothing can be "
            f"sold: {why}",
            skipped=skipped,
        )
    fees_total = sum((order.expected_fee for order in orders), ZERO)
    sold = ", ".join(f"{plain(order.quantity)} {order.symbol}" for order in orders)
    return plan(
        Action.SELL,
        f"USD share {plain(actual)} % is below the target {plain(target_pct)} % by more than "
        f"{plain(params.band_pct)} points: sell {sold}",
        orders=orders,
        skipped=skipped,
        expected_fees=fees_total,
    )


def _sell_order(holdings: Sequence[Holding], order_by: Ordering) -> list[Holding]:
    if order_by == Ordering.VALUE:
        return sorted(holdings, key=lambda h: (-h.value, h.symbol))
    return sorted(
        holdings,
        key=lambda h: (
            h.volatility is None or not math.isfinite(h.volatility),
            -(h.volatility or 0.0) if h.volatility is not None and math.isfinite(h.volatility) else 0.0,
            -h.value,
            h.symbol,
        ),
    )


def _sells(
    *, gross: Decimal, holdings: Sequence[Holding], order_by: Ordering, fees: FeeRates, slippage_pct: Decimal
) -> tuple[tuple[HedgeOrder, ...], tuple[str, ...]]:
    orders: list[HedgeOrder] = []
    skipped: list[str] = []
    remaining = gross
    for holding in _sell_order([h for h in holdings if h.quantity > 0], order_by):
        if remaining <= 0:
            break
        pair = holding.pair
        free = floor_to_lot(min(max(holding.free, ZERO), holding.quantity), pair)
        if free <= 0:
            skipped.append(f"{holding.symbol}: nothing free to sell (open sells hold it)")
            continue
        quantity = floor_to_lot(min(remaining / holding.price, free), pair)
        if ZERO < free - quantity < pair.ordermin:
            quantity = free  # never leave unsellable dust behind
        too_small = minimum_findings(quantity, holding.price, pair)
        if quantity <= 0 or too_small:
            skipped.append(
                f"{holding.symbol}: " + ("; ".join(item.message for item in too_small) or "nothing to sell")
            )
            continue
        proceeds = quantity * holding.price * (ONE - slippage_pct / HUNDRED)
        orders.append(
            HedgeOrder(
                symbol=holding.symbol,
                side=Side.SELL,
                quantity=quantity,
                price=holding.price,
                expected_fee=fee_for(proceeds, fees.taker_pct),
            )
        )
        remaining -= quantity * holding.price
    return tuple(orders), tuple(skipped)


# --- Kill-switch recommendation ----------------------------------------------------------------------------


def killswitch_recommendation(
    *, day_drawdown_pct: Decimal, max_daily_drawdown_pct: Decimal, warn_ratio: Decimal
) -> str | None:
    """A sentence recommending the kill switch when the UTC day's drawdown reaches ``warn_ratio`` of the
    risk policy's daily limit (``None`` otherwise). A recommendation only: the hedge never trips it."""
    if not (is_number(day_drawdown_pct) and is_number(max_daily_drawdown_pct) and max_daily_drawdown_pct > 0):
        return None
    level = max_daily_drawdown_pct * warn_ratio
    if day_drawdown_pct < level:
        return None
    return (
        f"the UTC day's drawdown of {plain(Decimal(day_drawdown_pct).quantize(PCT_PLACES))} % reached "
        f"{plain(warn_ratio * HUNDRED)} % of the daily limit of {plain(max_daily_drawdown_pct)} %: "
        "the hedge recommends halting new entries"
    )


# --- Measurements (analytics: floats allowed) --------------------------------------------------------------


def drawdown_pct(*, equity: Decimal, high_water: Decimal) -> Decimal:
    """``(high_water - equity) / high_water x 100``, never negative; 0 when the high is not positive."""
    if not (is_number(equity) and is_number(high_water)):
        raise HedgeInputError(f"equity {equity} or high-water mark {high_water} is not a number")
    if high_water <= 0:
        return ZERO
    return max(ZERO, (Decimal(high_water) - Decimal(equity)) / Decimal(high_water) * HUNDRED)


def log_returns(closes: Sequence[float | Decimal]) -> np.ndarray:
    """Bar log returns ``ln(c_t / c_{t-1})`` of positive closes, as floats."""
    values = np.asarray([float(close) for close in closes], dtype=float)
    if values.size and (not np.all(np.isfinite(values)) or np.any(values <= 0)):
        raise HedgeInputError("closes must be positive finite numbers")
    return np.diff(np.log(values)) if values.size > 1 else np.empty(0)


def realised_volatility(closes: Sequence[float | Decimal]) -> float | None:
    """The sample standard deviation of the bar log returns of ``closes`` (oldest first): per bar, not
    annualised. ``None`` with fewer than three closes."""
    returns = log_returns(closes)
    if returns.size < 2:
        return None
    return float(np.std(returns, ddof=1))


def rolling_volatility(closes: Sequence[float | Decimal], *, window: int) -> np.ndarray:
    """Realised volatility over each trailing ``window`` returns, aligned with ``closes``: element ``i`` is
    the volatility of the ``window`` returns ending at close ``i`` (NaN until there are enough)."""
    returns = log_returns(closes)
    out = np.full(len(closes), np.nan)
    if window < 2 or returns.size < window:
        return out
    csum = np.concatenate(([0.0], np.cumsum(returns)))
    csq = np.concatenate(([0.0], np.cumsum(returns * returns)))
    total = csum[window:] - csum[:-window]
    squares = csq[window:] - csq[:-window]
    variance = np.maximum((squares - total * total / window) / (window - 1), 0.0)
    out[window:] = np.sqrt(variance)
    return out


def volatility_inputs(
    closes: Sequence[float | Decimal], *, window: int, lookback: int
) -> tuple[float, float] | None:
    """``(vol_now, vol_reference)`` from ``closes`` (oldest first): the realised volatility of the last
    ``window`` returns, and the median of that rolling volatility over the last ``lookback`` bars. ``None``
    when there are fewer than ``window + 1`` closes or the reference is not positive."""
    rolling = rolling_volatility(closes, window=window)
    if rolling.size == 0 or not np.isfinite(rolling[-1]):
        return None
    history = rolling[-lookback:]
    history = history[np.isfinite(history)]
    reference = float(np.median(history))
    if reference <= 0:
        return None
    return float(rolling[-1]), reference


# --- Performance -------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class PerformanceStep:
    """One interval between two equity marks: the account's equity at both ends, its USD share at the
    start (fraction), the return of its crypto sleeve over the interval (the price return of what it held;
    a fraction) and the fees the hedge's own orders paid in it (USD)."""

    equity_start: Decimal
    equity_end: Decimal
    usd_share: Decimal
    sleeve_return: Decimal
    hedge_fees: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class HedgePerformance:
    start_equity: Decimal
    end_equity: Decimal
    counterfactual_end_equity: Decimal
    floor_pct: Decimal
    hedge_fees: Decimal
    average_usd_share_pct: Decimal
    steps: int

    @property
    def account_return_pct(self) -> Decimal:
        return _ratio_pct(self.end_equity, self.start_equity)

    @property
    def counterfactual_return_pct(self) -> Decimal:
        return _ratio_pct(self.counterfactual_end_equity, self.start_equity)

    @property
    def hedge_value_pct(self) -> Decimal:
        """What the hedge added (negative: cost), in percentage points of the start equity."""
        return self.account_return_pct - self.counterfactual_return_pct

    def as_dict(self) -> dict[str, str | int]:
        return {
            "start_equity": str(self.start_equity),
            "end_equity": str(self.end_equity),
            "counterfactual_end_equity": str(self.counterfactual_end_equity),
            "account_return_pct": str(self.account_return_pct),
            "counterfactual_return_pct": str(self.counterfactual_return_pct),
            "hedge_value_pct": str(self.hedge_value_pct),
            "hedge_fees": str(self.hedge_fees),
            "average_usd_share_pct": str(self.average_usd_share_pct),
            "floor_pct": str(self.floor_pct),
            "steps": self.steps,
        }


def _ratio_pct(end: Decimal, start: Decimal) -> Decimal:
    return ((end / start - ONE) * HUNDRED).quantize(Decimal("0.0001")) if start > 0 else ZERO


def hedge_performance_of(steps: Sequence[PerformanceStep], *, floor_pct: Decimal) -> HedgePerformance:
    """The account's return against a counterfactual whose hedge is held at the floor (an overlay
    attribution; ``docs/hedging.md``). Per interval, with ``r = equity_end / equity_start - 1`` the account's
    return (its fees included), ``h`` the USD share, ``f`` the floor (fractions) and ``R`` the sleeve's
    return::

        r_cf = r + (h - f) x R + hedge_fees / equity_start

    i.e. the counterfactual keeps everything the account did except the USD held above the floor (which it
    holds in the sleeve instead) and the hedge's own fees (which it never paid). Both are compounded from
    the first equity."""
    if not steps:
        raise HedgeInputError("no equity marks in the period: nothing to measure")
    floor = floor_pct / HUNDRED
    start = steps[0].equity_start
    if start <= 0:
        raise HedgeInputError(f"the period starts at an equity of {start}: no return to measure")
    counterfactual = start
    fees = ZERO
    share_sum = ZERO
    for step in steps:
        if step.equity_start <= 0:
            raise HedgeInputError(f"equity {step.equity_start} inside the period: no return to measure")
        r = step.equity_end / step.equity_start - ONE
        r_cf = (
            r + (step.usd_share - floor) * Decimal(step.sleeve_return) + step.hedge_fees / step.equity_start
        )
        counterfactual *= ONE + r_cf
        fees += step.hedge_fees
        share_sum += step.usd_share
    return HedgePerformance(
        start_equity=start,
        end_equity=steps[-1].equity_end,
        counterfactual_end_equity=counterfactual.quantize(Decimal("0.0001")),
        floor_pct=floor_pct,
        hedge_fees=fees,
        average_usd_share_pct=_pct(share_sum / len(steps) * HUNDRED),
        steps=len(steps),
    )
