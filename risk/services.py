"""The only writers of the risk shell: policies, the kill switch, NAV snapshots.

Each service locks the account row first (lock order: account → kill switch / policy → the trading rows the
order services take), calls :mod:`risk.engine`, persists the result and its audit event in one transaction.
What a kill-switch transition asks for beyond its own row (cancel open entry orders, flatten) runs after the
commit, through the order services, which audit every order they touch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone
from prometheus_client import Counter

from accounts.models import Account
from accounts.selectors import user_can
from governance.actors import SystemActor, actor_label
from governance.services import audit_record
from risk import engine
from risk.models import KillSwitch, NavSnapshot, RiskPolicy
from trading.models import LIVE_STATUSES, Balance, BrokerName, Order, OrderType, Position, Side

logger = logging.getLogger(__name__)

KILL_SWITCH_TRIPS = Counter(
    "aether_kill_switch_trips", "Kill-switch trips (daily drawdown breaches)", ["account"]
)

#: The platform acting on a trip: cancels entry orders and flattens.
KILL_SWITCH = SystemActor("kill_switch")
#: Creates an account's default policy on first use.
POLICY_DEFAULTS = SystemActor("risk_policy")

QUOTE_ASSET = "USD"
DRAWDOWN_PLACES = Decimal("0.000001")


class NavUnavailable(ValidationError):
    """The book cannot be marked now (a held asset without a usable price, an out-of-order observation).
    Nothing is written: the last snapshot and the kill switch's last state stand."""


def _broker_of(account: Account) -> str:
    return BrokerName.SIM if account.simulation_mode else BrokerName.KRAKEN


def _lock_account(account: Account) -> Account:
    return Account.objects.select_for_update(no_key=True).get(pk=account.pk)


def _require_director(actor, account: Account, what: str) -> None:
    if isinstance(actor, SystemActor):
        raise PermissionDenied(f"{actor.label} may not {what} of {account}: a director of the account must.")
    if not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"{actor_label(actor)} may not {what} of {account}: directors only.")


def _require_director_or_platform(actor, account: Account, what: str) -> None:
    if isinstance(actor, SystemActor):
        return
    if not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"{actor_label(actor)} may not {what} of {account}: directors only.")


# ----------------------------------------------------------------------------------------------------------
# Policy
# ----------------------------------------------------------------------------------------------------------


def _policy_values(policy: RiskPolicy) -> dict[str, str | bool | int | None]:
    """The editable values as stored (decimals at their column's places), JSON-ready for the audit."""
    values = {}
    for name in RiskPolicy.EDITABLE:
        value = getattr(policy, name)
        if isinstance(value, Decimal):
            places = RiskPolicy._meta.get_field(name).decimal_places
            value = str(value.quantize(Decimal(1).scaleb(-places)))
        values[name] = value
    return values


def risk_policy_for(*, account: Account, actor=POLICY_DEFAULTS) -> RiskPolicy:
    """The account's policy, created with the engine's defaults (and audited) on first use."""
    policy = RiskPolicy.objects.filter(account=account).first()
    if policy is not None:
        return policy
    with transaction.atomic():
        locked = _lock_account(account)
        policy, created = RiskPolicy.objects.get_or_create(account=locked)
        if created:
            audit_record(
                actor=actor,
                action="risk_policy.created",
                account=locked,
                target=policy,
                details={"after": _policy_values(policy), "note": "the engine's defaults"},
            )
    return policy


def policy_problems(policy: RiskPolicy) -> list[str]:
    """Every problem with a (possibly unsaved) policy row: its fields' own rules, then the engine's."""
    problems: list[str] = []
    try:
        policy.clean_fields(exclude=["account"])
    except ValidationError as exc:
        for name, errors in exc.message_dict.items():
            label = RiskPolicy._meta.get_field(name).verbose_name
            problems += [f"{label}: {error}" for error in errors]
        return problems  # the engine cannot judge values that are not even of the right type
    return list(policy.to_engine().validate())


def risk_policy_update(*, account: Account, actor, **changes) -> RiskPolicy:
    """Change the account's policy. Directors only (never a platform component). Refuses the whole change
    with a ``ValidationError`` listing every problem when the result would be invalid; audits the changed
    fields' before and after. A change that changes nothing records nothing."""
    _require_director(actor, account, "change the risk policy")
    unknown = sorted(set(changes) - set(RiskPolicy.EDITABLE))
    if unknown:
        raise ValidationError(f"unknown risk policy field(s): {', '.join(unknown)}")
    risk_policy_for(account=account)
    with transaction.atomic():
        locked = _lock_account(account)
        policy = RiskPolicy.objects.select_for_update().get(account=locked)
        before = _policy_values(policy)
        for name, value in changes.items():
            setattr(policy, name, value)
        problems = policy_problems(policy)
        if problems:
            raise ValidationError(problems)
        policy.full_clean(exclude=["account"], validate_unique=False)  # normalises the values' types
        after = _policy_values(policy)
        changed = [name for name in RiskPolicy.EDITABLE if before[name] != after[name]]
        if not changed:
            return policy
        policy.save()
        audit_record(
            actor=actor,
            action="risk_policy.updated",
            account=locked,
            target=policy,
            details={
                "before": {name: before[name] for name in changed},
                "after": {name: after[name] for name in changed},
            },
        )
    return policy


# ----------------------------------------------------------------------------------------------------------
# Kill switch: directors' transitions
# ----------------------------------------------------------------------------------------------------------


def _switch_values(switch: KillSwitch) -> dict:
    return {
        "status": switch.status,
        "tripped_on": switch.tripped_on.isoformat() if switch.tripped_on else None,
        "reason": switch.reason,
        "halted": switch.halted,
        "halt_reason": switch.halt_reason,
    }


def _lock_switch(account: Account) -> KillSwitch:
    """The account's switch under a row lock (created armed on first use); the account must be locked."""
    switch, _ = KillSwitch.objects.select_for_update().get_or_create(account=account)
    return switch


def _refused(exc: engine.KillSwitchRefused) -> ValidationError:
    return ValidationError(str(exc))


@dataclass(frozen=True)
class Enforcement:
    """What a kill-switch transition did to the account's orders after the commit."""

    canceled: tuple[int, ...] = ()  # order ids
    sold: tuple[int, ...] = ()  # ids of the flattening sells
    problems: tuple[str, ...] = field(default=())

    def summary(self) -> str:
        text = f"{len(self.canceled)} entry order(s) canceled, {len(self.sold)} flattening sell(s) placed"
        return text + (f"; problems: {'; '.join(self.problems)}" if self.problems else "")


def _apply_transition(
    *, account, actor, action: str, mutate, note: str = "", broker_factory=None, quotes=None
) -> KillSwitch:
    """Lock, run one engine transition, persist it with its audit event, and carry out its actions after
    the commit."""
    with transaction.atomic():
        locked = _lock_account(account)
        switch = _lock_switch(locked)
        before = _switch_values(switch)
        try:
            transition = mutate(switch.to_engine())
        except engine.KillSwitchRefused as exc:
            raise _refused(exc) from None
        switch.set_state(transition.state)
        switch.save()
        audit_record(
            actor=actor,
            action=action,
            account=locked,
            target=switch,
            details={
                "before": before,
                "after": _switch_values(switch),
                "actions": [str(item) for item in transition.actions],
                "note": note,
            },
        )
        _enforce_on_commit(
            account_id=locked.pk,
            actions=transition.actions,
            actor=actor,
            broker_factory=broker_factory,
            quotes=quotes,
        )
    return switch


def killswitch_halt(*, account: Account, actor, reason: str, broker_factory=None, quotes=None) -> KillSwitch:
    """Stop new entries now (a director, or a platform component: halting is the safe direction). Open
    entry orders are canceled after the commit; exits keep working."""
    _require_director_or_platform(actor, account, "halt trading")
    if not reason.strip():
        raise ValidationError("say why trading is halted")
    return _apply_transition(
        account=account,
        actor=actor,
        action="killswitch.halted",
        mutate=lambda state: engine.halt(state, reason=reason.strip()),
        note=reason.strip(),
        broker_factory=broker_factory,
        quotes=quotes,
    )


def killswitch_resume(*, account: Account, actor, reason: str = "") -> KillSwitch:
    """Lift a manual halt (a director). A tripped switch stays latched: it needs ``killswitch_rearm``."""
    _require_director(actor, account, "resume trading")
    return _apply_transition(
        account=account,
        actor=actor,
        action="killswitch.resumed",
        mutate=engine.resume,
        note=reason,
    )


def killswitch_rearm(*, account: Account, actor, reason: str = "", now: datetime | None = None) -> KillSwitch:
    """Re-arm a tripped switch (a director), refused while the UTC day of the trip lasts."""
    _require_director(actor, account, "re-arm the kill switch")
    now = now or timezone.now()
    return _apply_transition(
        account=account,
        actor=actor,
        action="killswitch.rearmed",
        mutate=lambda state: engine.rearm(state, now=now),
        note=reason,
    )


# ----------------------------------------------------------------------------------------------------------
# Kill switch: what a transition asks of the order book (after the commit)
# ----------------------------------------------------------------------------------------------------------


def _enforce_on_commit(*, account_id: int, actions, actor, broker_factory=None, quotes=None) -> None:
    cancel = engine.Action.CANCEL_ENTRY_ORDERS in actions
    flatten = engine.Action.FLATTEN in actions
    if not (cancel or flatten):
        return
    # robust: a failing enforcement is logged by Django and never stops the other commit hooks; the
    # trip itself is committed either way and entries stay refused at order entry while latched.
    transaction.on_commit(
        lambda: killswitch_enforce(
            account_id=account_id,
            actor=actor,
            cancel_entries=cancel,
            flatten=flatten,
            broker_factory=broker_factory,
            quotes=quotes,
        ),
        robust=True,
    )


def killswitch_enforce(
    *, account_id: int, actor, cancel_entries: bool, flatten: bool, broker_factory=None, quotes=None
) -> Enforcement:
    """Cancel the account's open entry orders (its live buys, on either book) and, with ``flatten``, sell
    every position of the current book at market. Each order is handled by the order services (and audited
    by them); one that fails is reported and the rest still go. A summary event closes the list."""
    from trading.services.orders import order_cancel, order_submit

    account = Account.objects.get(pk=account_id)
    canceled, sold, problems = [], [], []
    if cancel_entries:
        entries = Order.objects.filter(account=account, side=Side.BUY, status__in=LIVE_STATUSES)
        for order in entries.order_by("created_at", "id"):
            try:
                result = order_cancel(
                    order=order,
                    actor=actor,
                    reason="kill switch: entries blocked",
                    broker_factory=broker_factory,
                )
            except Exception as exc:  # one failed cancel must not stop the others
                logger.exception("kill switch: cancel of order %s failed", order.pk)
                problems.append(f"cancel {order.client_order_id}: {exc}")
                continue
            if result.status == "CANCELED":
                canceled.append(order.pk)
            else:
                problems.append(f"{order.client_order_id} is {result.status}, not canceled")
    if flatten:
        broker = _broker_of(account)
        positions = Position.objects.filter(account=account, broker=broker, quantity__gt=0).select_related(
            "instrument"
        )
        for position in positions.order_by("instrument__symbol"):
            resting = Order.objects.filter(
                account=account,
                broker=broker,
                instrument=position.instrument,
                side=Side.SELL,
                status__in=LIVE_STATUSES,
            )
            for order in resting:  # a resting sell reserves the base the flattening sell needs
                try:
                    order_cancel(
                        order=order, actor=actor, reason="kill switch: flatten", broker_factory=broker_factory
                    )
                except Exception as exc:
                    logger.exception("kill switch: cancel of resting sell %s failed", order.pk)
                    problems.append(f"cancel {order.client_order_id}: {exc}")
            position.refresh_from_db()
            if position.quantity <= 0:
                continue
            try:
                order = order_submit(
                    account=account,
                    actor=actor,
                    instrument=position.instrument,
                    side=Side.SELL,
                    order_type=OrderType.MARKET,
                    quantity=position.quantity,
                    reason="kill switch: flatten",
                    broker_factory=broker_factory,
                    quotes=quotes,
                )
            except Exception as exc:
                logger.exception("kill switch: flattening sell of %s failed", position.instrument)
                problems.append(f"sell {position.instrument}: {exc}")
                continue
            sold.append(order.pk)
            if order.status == "REJECTED":
                problems.append(f"sell {position.instrument} rejected: {order.status_reason}")
    result = Enforcement(tuple(canceled), tuple(sold), tuple(problems))
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="killswitch.enforced",
            account=account,
            details={
                "canceled_order_ids": list(result.canceled),
                "flatten_order_ids": list(result.sold),
                "problems": list(result.problems),
            },
        )
    if problems:
        logger.error("kill switch of %s: %s", account.slug, result.summary())
    return result


# ----------------------------------------------------------------------------------------------------------
# NAV snapshots (and the kill switch's automatic transitions)
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarkedBook:
    broker: str
    cash: Decimal
    positions_value: Decimal

    @property
    def equity(self) -> Decimal:
        return self.cash + self.positions_value


def nav_mark_book(*, account: Account, broker: str, quotes, now: datetime) -> MarkedBook:
    """Mark the book (read in the caller's transaction): the whole USD balance plus every position at its
    quote's bid, less the taker fee to sell it (``risk.engine.marked_equity``). A held pair without a
    fresh price raises :class:`NavUnavailable` naming it: no equity is better than a guessed one."""
    from trading.selectors import fee_rates_for

    cash = (
        Balance.objects.filter(account=account, broker=broker, asset=QUOTE_ASSET)
        .values_list("total", flat=True)
        .first()
    ) or Decimal(0)
    positions_value = Decimal(0)
    problems = []
    positions = Position.objects.filter(account=account, broker=broker, quantity__gt=0).select_related(
        "instrument"
    )
    for position in positions.order_by("instrument__symbol"):
        instrument = position.instrument
        quote = quotes.quote(instrument)
        if quote is None:
            problems.append(f"{instrument.symbol}: no price to mark {position.quantity}")
            continue
        if quote.is_stale(now):
            problems.append(
                f"{instrument.symbol}: the last price ({quote.bid} at {quote.at:%Y-%m-%d %H:%M} UTC) is stale"
            )
            continue
        mark = engine.Mark(symbol=instrument.symbol, quantity=position.quantity, price=quote.bid)
        try:
            positions_value += engine.marked_equity(
                cash_usd=Decimal(0), marks=[mark], fees=fee_rates_for(account=account, instrument=instrument)
            )
        except engine.RiskInputError as exc:
            problems.append(str(exc))
    if problems:
        raise NavUnavailable(f"cannot mark {account}'s {broker} book: " + "; ".join(problems))
    return MarkedBook(broker=broker, cash=cash, positions_value=positions_value)


def nav_snapshot_record(
    *,
    account: Account,
    actor,
    reason: str,
    now: datetime | None = None,
    quotes=None,
    broker_factory=None,
) -> NavSnapshot:
    """Mark the account's current book, update the UTC day's high-water mark, feed the kill switch, and store
    the snapshot, all in one transaction. A trip is audited (``killswitch.tripped``) and counted on commit;
    then its actions run (cancel open entry orders; flatten when the policy says so). A day change may
    re-arm a tripped switch when the policy allows it (audited ``killswitch.rearmed``)."""
    from trading.quotes import DatabaseQuoteSource

    _require_director_or_platform(actor, account, "record a NAV snapshot")
    if reason not in NavSnapshot.Reason.values:
        raise ValidationError(f"NAV snapshot reason must be one of {', '.join(NavSnapshot.Reason.values)}")
    now = now or timezone.now()
    quotes = quotes or DatabaseQuoteSource()
    policy = risk_policy_for(account=account).to_engine()
    with transaction.atomic():
        locked = _lock_account(account)
        switch = _lock_switch(locked)
        broker = _broker_of(locked)
        book = nav_mark_book(account=locked, broker=broker, quotes=quotes, now=now)
        try:
            day = engine.observe_equity(switch.day_record(broker), equity=book.equity, at=now)
        except engine.RiskInputError as exc:
            raise NavUnavailable(f"cannot record {account}'s NAV: {exc}") from None

        before = _switch_values(switch)
        changed = engine.on_day_change(switch.to_engine(), now=now, policy=policy)
        checked = engine.on_equity(changed.state, day=day, policy=policy)
        switch.set_state(checked.state)
        switch.set_day_record(day, broker)
        switch.save()

        snapshot = NavSnapshot.objects.create(
            account=locked,
            broker=broker,
            taken_at=now,
            equity=book.equity,
            cash=book.cash,
            positions_value=book.positions_value,
            day=day.day,
            day_high=day.high_water,
            drawdown_pct=day.drawdown_pct.quantize(DRAWDOWN_PLACES),
            kill_switch_status=switch.status,
            reason=reason,
        )
        if engine.Action.REARMED in changed.actions:
            audit_record(
                actor=KILL_SWITCH,
                action="killswitch.rearmed",
                account=locked,
                target=switch,
                details={
                    "before": before,
                    "after": _switch_values(switch),
                    "note": "auto re-arm at day change",
                },
            )
        if checked.actions:
            audit_record(
                actor=KILL_SWITCH,
                action="killswitch.tripped",
                account=locked,
                target=switch,
                details={
                    "reason": switch.reason,
                    "equity": str(book.equity),
                    "day_high": str(day.high_water),
                    "drawdown_pct": str(snapshot.drawdown_pct),
                    "max_daily_drawdown_pct": str(policy.max_daily_drawdown_pct),
                    "nav_snapshot_id": snapshot.pk,
                    "actions": [str(item) for item in checked.actions],
                    "snapshot_requested_by": actor_label(actor),
                },
            )
            transaction.on_commit(KILL_SWITCH_TRIPS.labels(account=locked.slug).inc)
            logger.error("kill switch of %s tripped: %s", locked.slug, switch.reason)
            _enforce_on_commit(
                account_id=locked.pk,
                actions=checked.actions,
                actor=KILL_SWITCH,
                broker_factory=broker_factory,
                quotes=quotes,
            )
    return snapshot
