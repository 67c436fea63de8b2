"""Exits of open positions: planned at entry, stored on the position, watched bar by bar.

* ``exits_plan``: at an entry fill, :func:`risk.engine.plan_exits` (stop, fee-aware take-profit, trailing
  stop) from the position's entry price before fees (its round trip's average buy price, so an add-on buy
  re-plans the whole position), the ATR of the last closed bars (or their realised volatility), the
  account's fee tier and the expected slippage. Stored on the ``Position`` and audited
  (``risk.exits_planned``).
* ``exits_evaluate``: for one instrument's new closed bar, every account's planned position on the account's
  current book: :func:`risk.engine.evaluate_bar` (stop before the bar, then take-profit, else the trailing
  stop ratchets up — persisted, audited ``risk.stop_ratcheted``; it never falls). On a signal
  (``risk.exit_signal``) every resting sell on the position is canceled first and must be confirmed
  CANCELED (FILLED: the resting stop sold the position, nothing left to sell), then a market sell of the
  whole position goes through :func:`risk.pretrade.order_submit_checked` (exits pass a halt or a latched
  kill switch). A flat position's plan is cleared (``risk.exits_cleared``). A position found without a plan
  (an entry that rested and filled later, or whose plan failed) is planned on the bar and watched from the
  next. A bar that closed before the plan was made is ignored.
* **Protective stop on Kraken** (live accounts): after an entry fills, a ``stop-loss`` sell for the whole
  position rests on Kraken at the planned (initial) stop, so a crash is covered while the platform is down.
  A spot sell reserves the base asset, so only one resting sell can cover a position: the resting order is
  the stop; the take-profit is the engine's. As the trailing stop ratchets, the resting stop follows it
  once it has risen by ``PROTECTIVE_STOP_STEP_PCT`` % (a cancel, confirmed, then a new stop: smaller steps
  are left to the engine to save order churn). An exit cancels it before selling.

Bars come from the market feed and the strategy cycle (the Celery task ``risk.exits_evaluate`` takes the
instrument id and the bar's open time); no beat schedule of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Q

from accounts.models import Account
from governance.actors import SystemActor
from governance.services import audit_record
from risk import engine
from risk.pretrade import CheckedOrder, order_submit_checked, slippage_pct
from risk.replay import average_true_range
from risk.selectors import engine_policy_for
from trading.clock import platform_now
from trading.matching import log_return_volatility, plain, tick_of
from trading.models import (
    LIVE_STATUSES,
    BrokerName,
    Instrument,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Side,
)
from trading.quotes import candle_bar
from trading.selectors import book_of, closed_candles, fee_rates_for, pair_rules_for

logger = logging.getLogger(__name__)

EXITS = SystemActor("risk_exits")
#: Closed bars the ATR (and, without it, the realised volatility) is measured over.
ATR_BARS = 14
PROTECTIVE_STOP = "protective stop"

PLAN_FIELDS = (
    "exit_entry_price",
    "stop_price",
    "initial_stop_price",
    "take_profit_price",
    "trailing_distance",
    "trailing_pct",
    "trail_high",
    "exit_planned_at",
)


class ExitPlanUnavailable(ValidationError):
    """The exits cannot be planned now (no volatility for an ATR rule, no entry price): the message says
    why."""


def _plan_values(position: Position) -> dict:
    values = {name: getattr(position, name) for name in PLAN_FIELDS}
    return {name: None if value is None else str(value) for name, value in values.items()}


def plan_of(position: Position) -> engine.ExitPlan:
    """The stored plan as the decision core reads it."""
    return engine.ExitPlan(
        entry_price=position.exit_entry_price,
        initial_stop=position.initial_stop_price,
        stop_price=position.stop_price,
        take_profit_price=position.take_profit_price,
        high_water=position.trail_high if position.trail_high is not None else position.exit_entry_price,
        trailing=position.trail_high is not None,
        trail_distance=position.trailing_distance,
        trail_pct=position.trailing_pct,
        tick=tick_of(pair_rules_for(position.instrument)),
    )


def _store_plan(position: Position, plan: engine.ExitPlan) -> None:
    position.exit_entry_price = plan.entry_price
    position.stop_price = plan.stop_price
    position.initial_stop_price = plan.initial_stop
    position.take_profit_price = plan.take_profit_price
    position.trailing_distance = plan.trail_distance if plan.trailing else None
    position.trailing_pct = plan.trail_pct if plan.trailing else None
    position.trail_high = plan.high_water if plan.trailing else None


def entry_price_of(*, account: Account, instrument: Instrument, broker: str) -> Decimal | None:
    """The position's average buy price of its current round trip, before fees."""
    position = Position.objects.filter(account=account, broker=broker, instrument=instrument).first()
    if position is None or position.trip_bought <= 0:
        return None
    return position.trip_buy_notional / position.trip_bought


def _volatility(instrument: Instrument) -> tuple[Decimal | None, Decimal | None]:
    """(ATR, realised volatility) of the last closed bars of ``AETHER_TIMEFRAME``."""
    candles = list(
        closed_candles(instrument=instrument, timeframe=settings.AETHER_TIMEFRAME).reverse()[: ATR_BARS + 1]
    )
    bars = [candle_bar(candle) for candle in reversed(candles)]
    return average_true_range(bars), log_return_volatility([bar.close for bar in bars])


def _lock(account: Account, broker: str, instrument: Instrument) -> tuple[Account, Position]:
    """Lock order: account, then the position."""
    locked = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
    position = (
        Position.objects.select_for_update()
        .select_related("instrument")
        .get(account=locked, broker=broker, instrument=instrument)
    )
    return locked, position


def exits_plan(*, account: Account, instrument: Instrument, entry_price: Decimal | None, actor) -> Position:
    """Plan and store the exits of the account's position in ``instrument`` (current book), audited.
    Raises :class:`ExitPlanUnavailable` when the engine cannot plan them (nothing is written)."""
    if entry_price is None:
        raise ExitPlanUnavailable(f"no entry price for {account}'s {instrument.symbol} position")
    broker = book_of(account)
    policy = engine_policy_for(account=account)
    atr, realised = _volatility(instrument)
    try:
        plan = engine.plan_exits(
            policy=policy,
            pair=pair_rules_for(instrument),
            entry_price=entry_price,
            fees=fee_rates_for(account=account, instrument=instrument),
            slippage_pct=slippage_pct(),
            atr=atr,
            realised_volatility=realised,
        )
    except engine.RiskInputError as exc:
        raise ExitPlanUnavailable(f"{instrument.symbol}: {exc}") from None
    with transaction.atomic():
        locked, position = _lock(account, broker, instrument)
        if position.quantity <= 0:
            raise ExitPlanUnavailable(f"{account}'s {instrument.symbol} position is flat: nothing to protect")
        _store_plan(position, plan)
        position.exit_planned_at = platform_now()
        position.save(update_fields=[*PLAN_FIELDS, "updated_at"])
        audit_record(
            actor=actor,
            action="risk.exits_planned",
            account=locked,
            target=position,
            details=_plan_values(position)
            | {
                "pair": instrument.symbol,
                "quantity": str(position.quantity),
                "atr": None if atr is None else str(atr),
                "realised_volatility": None if realised is None else str(realised),
            },
        )
    return position


def _clear_plan(*, position: Position, actor, note: str) -> None:
    with transaction.atomic():
        locked, position = _lock(position.account, position.broker, position.instrument)
        if position.exit_planned_at is None:
            return
        before = _plan_values(position)
        for name in PLAN_FIELDS:
            setattr(position, name, None)
        position.save(update_fields=[*PLAN_FIELDS, "updated_at"])
        audit_record(
            actor=actor,
            action="risk.exits_cleared",
            account=locked,
            target=position,
            details={"before": before, "pair": position.instrument.symbol, "note": note},
        )


# ----------------------------------------------------------------------------------------------------------
# Resting sells (the protective stop on Kraken)
# ----------------------------------------------------------------------------------------------------------


def _resting_sells(position: Position):
    return Order.objects.filter(
        account_id=position.account_id,
        broker=position.broker,
        instrument_id=position.instrument_id,
        side=Side.SELL,
        status__in=LIVE_STATUSES,
    ).order_by("created_at", "id")


def resting_sells_cancel(*, position: Position, actor, reason: str, broker_factory=None) -> list[str]:
    """Cancel every live sell on the position (they reserve the base an exit needs). Returns the problems:
    an order not confirmed CANCELED or FILLED by its broker."""
    from trading.services.orders import order_cancel

    problems = []
    for order in _resting_sells(position):
        try:
            result = order_cancel(order=order, actor=actor, reason=reason, broker_factory=broker_factory)
        except Exception as exc:  # reported; the exit waits rather than sell what another order holds
            logger.exception("exit: cancel of resting sell %s failed", order.client_order_id)
            problems.append(f"cancel {order.client_order_id}: {type(exc).__name__}: {exc}")
            continue
        if result.status not in (OrderStatus.CANCELED, OrderStatus.FILLED):
            problems.append(f"{order.client_order_id} is {result.status}, not canceled")
    return problems


def protective_stop_place(*, position: Position, actor, broker_factory=None, quotes=None) -> Order | None:
    """Rest a stop-loss sell for the whole position at its planned stop on Kraken, replacing any earlier
    resting sell (one resting sell can hold the position). ``None`` when there is nothing to cover."""
    from trading.services.orders import order_submit

    position = Position.objects.select_related("account", "instrument").get(pk=position.pk)
    if position.broker != BrokerName.KRAKEN or position.quantity <= 0 or position.stop_price is None:
        return None
    problems = resting_sells_cancel(
        position=position,
        actor=actor,
        reason="replaced by a new protective stop",
        broker_factory=broker_factory,
    )
    if problems:
        logger.error("%s: protective stop not placed: %s", position, "; ".join(problems))
        return None
    position.refresh_from_db()
    return order_submit(
        account=position.account,
        actor=actor,
        instrument=position.instrument,
        side=Side.SELL,
        order_type=OrderType.STOP_LOSS,
        quantity=position.quantity,
        stop_price=position.stop_price,
        reason=PROTECTIVE_STOP,
        broker_factory=broker_factory,
        quotes=quotes,
    )


# ----------------------------------------------------------------------------------------------------------
# Watching bars
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExitOutcome:
    """What one bar did to one position."""

    position_id: int
    signal: engine.ExitSignal | None = None
    checked: CheckedOrder | None = None
    problems: tuple[str, ...] = field(default=())


def _watch(position: Position, bar, actor) -> engine.ExitSignal | None:
    """Evaluate the bar on the locked, re-read position; persist a ratchet; audit a signal."""
    with transaction.atomic():
        locked, position = _lock(position.account, position.broker, position.instrument)
        if position.quantity <= 0 or position.exit_planned_at is None:
            return None
        watched = position.exits_watched_through
        if watched is not None and bar.close_time <= watched:
            return None  # this bar (or a later one) was already evaluated: a ratchet must not count twice
        plan = plan_of(position)
        evaluation = engine.evaluate_bar(plan, low=bar.low, high=bar.high)
        signal = evaluation.signal
        if signal is None:
            # Only a bar that asked for no exit is marked watched. A bar that did is evaluated again by a
            # retry until its sell has gone out and the position is flat: an exit that failed half-way
            # (a cancel not confirmed, a worker that died) is never forgotten.
            position.exits_watched_through = bar.close_time
            fields = ["exits_watched_through", "updated_at"]
            before = position.stop_price
            if evaluation.plan != plan:
                _store_plan(position, evaluation.plan)
                fields += ["stop_price", "trail_high"]
            position.save(update_fields=fields)
            if evaluation.plan != plan and position.stop_price > before:
                audit_record(
                    actor=actor,
                    action="risk.stop_ratcheted",
                    account=locked,
                    target=position,
                    details={
                        "pair": position.instrument.symbol,
                        "from": str(before),
                        "to": str(position.stop_price),
                        "high": str(position.trail_high),
                        "bar_open_time": bar.open_time.isoformat(),
                    },
                )
            return None
        audit_record(
            actor=actor,
            action="risk.exit_signal",
            account=locked,
            target=position,
            details={
                "pair": position.instrument.symbol,
                "reason": str(signal.reason),
                "trigger_price": str(signal.trigger_price),
                "message": signal.message,
                "quantity": str(position.quantity),
                "bar_open_time": bar.open_time.isoformat(),
                "bar_low": plain(bar.low),
                "bar_high": plain(bar.high),
            },
        )
        return signal


def _exit(position: Position, signal: engine.ExitSignal, *, actor, quotes, broker_factory) -> ExitOutcome:
    """Cancel the resting sells, then sell what is left at market through the risk check."""
    problems = resting_sells_cancel(
        position=position, actor=actor, reason=f"exit: {signal.reason}", broker_factory=broker_factory
    )
    if problems:
        with transaction.atomic():
            audit_record(
                actor=actor,
                action="risk.exit_blocked",
                account=Account.objects.select_for_update(no_key=True).get(pk=position.account_id),
                target=position,
                details={"pair": position.instrument.symbol, "problems": problems, "signal": signal.message},
            )
        logger.error("%s: exit not sent: %s", position, "; ".join(problems))
        return ExitOutcome(position.pk, signal, None, tuple(problems))
    position.refresh_from_db()
    checked = None
    if position.quantity > 0:
        checked = order_submit_checked(
            account=position.account,
            actor=actor,
            instrument=position.instrument,
            side=Side.SELL,
            order_type=OrderType.MARKET,
            quantity=position.quantity,
            reason=signal.message,
            quotes=quotes,
            broker_factory=broker_factory,
        )
        position.refresh_from_db()
    if position.quantity <= 0:
        _clear_plan(position=position, actor=actor, note=f"closed: {signal.message}")
    return ExitOutcome(position.pk, signal, checked)


def exits_evaluate(
    *,
    instrument: Instrument,
    bar,
    actor=EXITS,
    quotes=None,
    broker_factory=None,
    account: Account | None = None,
) -> list[ExitOutcome]:
    """Watch every account's position (or only ``account``'s) in ``instrument`` on a new closed ``bar`` (a
    ``trading.matching.Bar``); see the module docstring. Must not run inside a transaction (exits submit
    orders)."""
    outcomes = []
    positions = Position.objects.filter(instrument=instrument)
    if account is not None:
        positions = positions.filter(account=account)
    positions = (
        positions.filter(Q(quantity__gt=0) | Q(exit_planned_at__isnull=False))
        .select_related("account", "instrument")
        .order_by("account_id", "broker")
    )
    for position in positions:
        if position.broker != book_of(position.account):
            continue  # the other book: orders would go to the account's current broker
        if position.quantity <= 0:
            _clear_plan(position=position, actor=actor, note="the position is flat")
            continue
        if position.exit_planned_at is None:
            _plan_late(position, actor=actor, broker_factory=broker_factory, quotes=quotes)
            continue
        if bar.close_time <= position.exit_planned_at:
            continue  # a bar from before the entry says nothing about its exits
        signal = _watch(position, bar, actor)
        if signal is None:
            problems = ()
            if position.broker == BrokerName.KRAKEN:
                problems = _follow_trailing_stop(
                    position, actor=actor, broker_factory=broker_factory, quotes=quotes
                )
            outcomes.append(ExitOutcome(position.pk, problems=problems))
            continue
        outcomes.append(_exit(position, signal, actor=actor, quotes=quotes, broker_factory=broker_factory))
    return outcomes


def _follow_trailing_stop(position: Position, *, actor, broker_factory, quotes) -> tuple[str, ...]:
    """Move the resting protective stop on Kraken up to the ratcheted stop once it has risen by at least
    ``PROTECTIVE_STOP_STEP_PCT`` % (each move is a cancel and a new order, so small steps are left to the
    engine); place one again when none rests. Returns the problems (the old stop stays when its cancel is
    not confirmed)."""
    position = Position.objects.select_related("account", "instrument").get(pk=position.pk)
    if position.quantity <= 0 or position.stop_price is None:
        return ()
    others = _resting_sells(position).exclude(order_type=OrderType.STOP_LOSS, reason=PROTECTIVE_STOP)
    if others.exists():  # a director's (or another) resting sell holds the base: left alone, reported
        ids = ", ".join(others.values_list("client_order_id", flat=True))
        return (f"protective stop not moved: other resting sells hold the position ({ids})",)
    resting = _resting_sells(position).filter(order_type=OrderType.STOP_LOSS).first()
    step = Decimal(settings.PROTECTIVE_STOP_STEP_PCT) / 100
    if (
        resting is not None
        and resting.stop_price is not None
        and position.stop_price < resting.stop_price * (1 + step)
    ):
        return ()
    problem = ""
    for _attempt in range(2):  # the old stop is gone once its cancel is confirmed: one immediate retry
        try:
            placed = protective_stop_place(
                position=position, actor=actor, broker_factory=broker_factory, quotes=quotes
            )
        except Exception as exc:  # reported; the engine still watches the stop bar by bar
            logger.exception("%s: protective stop not moved", position)
            problem = f"{type(exc).__name__}: {exc}"
            continue
        if placed is None:
            return ("protective stop not moved: the resting sells could not be canceled",)
        if placed.status in LIVE_STATUSES or placed.status == OrderStatus.FILLED:
            return ()  # resting, or already triggered (the price was below it): the position is covered
        problem = f"the new stop {placed.client_order_id} is {placed.status}: {placed.status_reason}"
    return _unprotected(position, actor=actor, problem=problem)


def _unprotected(position: Position, *, actor, problem: str) -> tuple[str, ...]:
    """No stop rests on Kraken for a live position: audited (``risk.position_unprotected``) and logged as an
    error; the engine keeps watching the stop on every bar, and the next bar tries to place it again."""
    message = f"{position.instrument.symbol}: no protective stop rests on Kraken: {problem}"
    logger.error("%s: %s", position.account.slug, message)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="risk.position_unprotected",
            account=position.account,
            target=position,
            details={
                "pair": position.instrument.symbol,
                "stop_price": str(position.stop_price),
                "problem": problem,
            },
        )
    return (f"protective stop not moved: {problem}",)


def _plan_late(position: Position, *, actor, broker_factory, quotes) -> None:
    """A held position without a plan gets one now (and its protective stop on Kraken)."""
    try:
        exits_plan_and_protect(
            account=position.account,
            instrument=position.instrument,
            broker=position.broker,
            actor=actor,
            broker_factory=broker_factory,
            quotes=quotes,
        )
    except ExitPlanUnavailable as exc:
        logger.error("%s: exits still not planned: %s", position, exc)


def exits_plan_and_protect(
    *, account: Account, instrument: Instrument, broker: str, actor, broker_factory=None, quotes=None
) -> Position:
    """Plan the exits of a position from its entry price and, on Kraken, rest its protective stop-loss.
    Raises :class:`ExitPlanUnavailable` when no plan can be made."""
    position = exits_plan(
        account=account,
        instrument=instrument,
        entry_price=entry_price_of(account=account, instrument=instrument, broker=broker),
        actor=actor,
    )
    if position.broker == BrokerName.KRAKEN:
        protective_stop_place(position=position, actor=actor, broker_factory=broker_factory, quotes=quotes)
    return position
