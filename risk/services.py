"""The only writers of the risk shell: policies, the kill switch, NAV snapshots.

Each service locks the account row first (lock order: account → kill switch / policy → the trading rows the
order services take), calls :mod:`risk.engine`, persists the result and its audit event in one transaction.
What a kill-switch transition asks for beyond its own row (cancel open entry orders, flatten) runs after the
commit, through the order services, which audit every order they touch.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from django.core.exceptions import ValidationError
from django.db import transaction
from prometheus_client import Counter

from accounts.models import Account
from accounts.selectors import require_director
from aether_site.rows import select_rows, select_values
from governance.actors import SystemActor, actor_label
from governance.services import audit_record
from risk import engine
from risk.models import KillSwitch, NavSnapshot, RiskPolicy
from trading.clock import platform_now
from trading.models import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    Balance,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Side,
)
from trading.selectors import book_of, pair_rules_for

logger = logging.getLogger(__name__)

KILL_SWITCH_TRIPS = Counter(
    "aether_kill_switch_trips", "Kill-switch trips (daily drawdown breaches)", ["account"]
)

#: The platform acting on a trip: cancels entry orders and flattens.
KILL_SWITCH = SystemActor("kill_switch")
#: Creates an account's default policy on first use.
POLICY_DEFAULTS = SystemActor("risk_policy")
#: Money entering or leaving an account from outside (a deposit, a withdrawal) seen by the platform.
EXTERNAL_FLOW = SystemActor("external_flow")

QUOTE_ASSET = "USD"
DRAWDOWN_PLACES = Decimal("0.000001")


class NavUnavailable(ValidationError):
    """The book cannot be marked now (a held asset without a usable price, an out-of-order observation).
    Nothing is written: the last snapshot and the kill switch's last state stand."""


def _lock_account(account: Account) -> Account:
    found = select_rows(Account, "id = %s", [account.pk], limit=1, for_update="no key")
    if not found:
        raise Account.DoesNotExist(f"account {account.pk} does not exist")
    return found[0]


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
    found = select_rows(RiskPolicy, "account_id = %s", [account.pk], limit=1)  # one per account
    if found:
        return found[0]
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
    require_director(actor, account, "change the risk policy")
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
        "enforcement_due": switch.enforcement_due,
    }


#: The switch's running record of the UTC day's equity. Every NAV snapshot moves it and stores the same
#: figures on its own row (``NavSnapshot``: day, day high, equity), so a save that moves only these keeps
#: no history row of the switch; any other change is saved with one.
DAY_RECORD_FIELDS = ("day", "day_broker", "day_high", "day_equity", "day_at")


def _switch_state(switch: KillSwitch) -> dict:
    """The switch's fields but its day record (and its ``updated_at``)."""
    return {
        field.attname: getattr(switch, field.attname)
        for field in KillSwitch._meta.concrete_fields
        if field.attname not in DAY_RECORD_FIELDS and field.attname != "updated_at"
    }


def _save_switch(switch: KillSwitch, state_before: dict) -> None:
    """Save ``switch`` after a NAV snapshot: its day record alone, without a history row, when nothing
    else changed since ``state_before`` (:func:`_switch_state`); the whole row with its history otherwise."""
    if _switch_state(switch) != state_before:
        switch.save()
        return
    switch.skip_history_when_saving = True  # simple_history's own switch for its signal
    try:
        switch.save(update_fields=[*DAY_RECORD_FIELDS, "updated_at"])
    finally:
        del switch.skip_history_when_saving


def _lock_switch(account: Account) -> KillSwitch:
    """The account's switch under a row lock (created armed on first use); the account must be locked."""
    found = select_rows(KillSwitch, "account_id = %s", [account.pk], limit=1, for_update=True)
    if found:
        return found[0]
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
    complete: bool = True  # no live entry order (and, when flattening, no position) is left

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
        _mark_enforcement(switch, transition.actions)
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
        if switch.enforcement_due:
            _enforce_on_commit(
                account_id=locked.pk, actor=KILL_SWITCH, broker_factory=broker_factory, quotes=quotes
            )
    return switch


def _mark_enforcement(switch: KillSwitch, actions) -> None:
    """A transition asking to cancel entries or flatten makes enforcement due (in its own transaction, so
    the duty cannot be lost with the process); a switch that is neither latched nor halted owes none."""
    state = switch.to_engine()
    if not (state.latched or state.halted):
        switch.enforcement_due, switch.enforcement_problems = False, ""
    elif engine.Action.CANCEL_ENTRY_ORDERS in actions or engine.Action.FLATTEN in actions:
        switch.enforcement_due = True


def killswitch_halt(*, account: Account, actor, reason: str, broker_factory=None, quotes=None) -> KillSwitch:
    """Stop new entries now (a director, or a platform component: halting is the safe direction). Open
    entry orders are canceled after the commit; exits keep working."""
    require_director(actor, account, "halt trading", platform_allowed=True)
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
    require_director(actor, account, "resume trading")
    return _apply_transition(
        account=account,
        actor=actor,
        action="killswitch.resumed",
        mutate=engine.resume,
        note=reason,
    )


def killswitch_rearm(*, account: Account, actor, reason: str = "", now: datetime | None = None) -> KillSwitch:
    """Re-arm a tripped switch (a director), refused while the UTC day of the trip lasts."""
    require_director(actor, account, "re-arm the kill switch")
    now = now or platform_now()  # the trip's day is on the platform clock (a replay's, in replay)
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


#: Seconds between the Celery task's attempts to finish an enforcement the in-process sweep left undone.
ENFORCE_RETRY_SECONDS = 30

_sweeping = threading.local()


def _enforce_on_commit(*, account_id: int, actor, broker_factory=None, quotes=None) -> None:
    """After the commit, run the sweep here and now (the trip's cancels should not wait for a queue or a
    worker); if it is not complete, or raises, hand it to the ``risk.killswitch_enforce`` task (bounded
    retries). Robust: a failure is logged by Django and never stops the other commit hooks. Whatever
    happens, ``enforcement_due`` stays set until a sweep finds the work done, and every NAV snapshot
    while latched or halted runs the sweep again."""
    transaction.on_commit(
        lambda: _enforce_now_or_queue(
            account_id=account_id, actor=actor, broker_factory=broker_factory, quotes=quotes
        ),
        robust=True,
    )


def _enforce_now_or_queue(*, account_id: int, actor, broker_factory=None, quotes=None) -> None:
    complete = False
    try:
        complete = killswitch_enforce(
            account_id=account_id, actor=actor, broker_factory=broker_factory, quotes=quotes
        ).complete
    finally:
        if not complete:
            from risk.tasks import killswitch_enforce as enforce_task

            enforce_task.apply_async((account_id,), countdown=ENFORCE_RETRY_SECONDS)


def _sweep_plan(switch: KillSwitch | None, account: Account) -> tuple[bool, bool]:
    """(cancel entry orders, flatten) as the switch's state asks now."""
    if switch is None:
        return False, False
    state = switch.to_engine()
    cancel = state.latched or state.halted
    flatten = state.latched and _flatten_on_breach(account)
    return cancel, flatten


def _flatten_on_breach(account: Account) -> bool:
    policy = RiskPolicy.objects.filter(account=account).first()
    return (policy.to_engine() if policy else engine.RiskPolicy()).flatten_on_breach


def killswitch_enforce(
    *, account_id: int, actor=KILL_SWITCH, broker_factory=None, quotes=None
) -> Enforcement:
    """The idempotent enforcement sweep: while the switch is latched or halted, cancel the account's open
    entry orders (its live buys, on either book); while latched with ``flatten_on_breach``, sell every
    position of the current book at market (:func:`_flatten`). Each order is handled by the order services
    (and audited by them); one that fails is reported and the rest still go.

    Then, under the switch's lock, ``enforcement_due`` is cleared only when no live buy order remains and,
    when flattening is asked, no position remains; otherwise what is left is stored in
    ``enforcement_problems``. The summary is audited: ``killswitch.enforced`` when complete,
    ``killswitch.enforcement_incomplete`` (and logged as an error) when not. A sweep already running in
    this thread for the account (a fill's hook inside a sweep) is not started twice."""
    from trading.services.orders import order_cancel

    running = getattr(_sweeping, "accounts", None)
    if running is None:
        running = _sweeping.accounts = set()
    if account_id in running:
        return Enforcement(complete=False, problems=("a sweep of this account is already running",))
    running.add(account_id)
    try:
        account = Account.objects.get(pk=account_id)
        cancel_entries, flatten = _sweep_plan(KillSwitch.objects.filter(account=account).first(), account)
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
                    problems.append(f"cancel {order.client_order_id}: {type(exc).__name__}: {exc}")
                    continue
                if result.status == OrderStatus.CANCELED:
                    canceled.append(order.pk)
                elif result.status not in FINAL_STATUSES:
                    problems.append(f"{order.client_order_id} is {result.status}, not canceled")
        if flatten:
            broker = book_of(account)
            positions = Position.objects.filter(
                account=account, broker=broker, quantity__gt=0
            ).select_related("instrument")
            for position in positions.order_by("instrument__symbol"):
                _flatten(
                    position,
                    actor=actor,
                    broker_factory=broker_factory,
                    quotes=quotes,
                    sold=sold,
                    problems=problems,
                )
        return _enforcement_close(account, actor, canceled=canceled, sold=sold, problems=problems)
    finally:
        running.discard(account_id)


def _flatten(position: Position, *, actor, broker_factory, quotes, sold: list, problems: list) -> None:
    """Sell one position at market. Its resting sells reserve the base the market sell needs: each is
    canceled first and must be confirmed CANCELED (or FILLED, or otherwise closed: then what is left is
    read again) before anything is sold; one that cannot be confirmed leaves the position unsold and
    reported. A market sell that raises, is rejected or is not confirmed filled is reported."""
    from trading.services.orders import order_cancel, order_submit

    account, instrument = position.account, position.instrument
    resting = Order.objects.filter(
        account=account,
        broker=position.broker,
        instrument=instrument,
        side=Side.SELL,
        status__in=LIVE_STATUSES,
    ).order_by("created_at", "id")
    blocked, unprotected = False, False
    for order in resting:
        try:
            result = order_cancel(
                order=order, actor=actor, reason="kill switch: flatten", broker_factory=broker_factory
            )
        except Exception as exc:
            logger.exception("kill switch: cancel of resting sell %s failed", order.pk)
            problems.append(
                f"{instrument.symbol}: cancel of resting sell {order.client_order_id} failed "
                f"({type(exc).__name__}: {exc}); not sold"
            )
            blocked = True
            continue
        if result.status not in FINAL_STATUSES:
            problems.append(
                f"{instrument.symbol}: resting sell {order.client_order_id} is {result.status}, not "
                "canceled; not sold"
            )
            blocked = True
        elif result.status == OrderStatus.CANCELED:
            unprotected = True
    if blocked:
        return
    position.refresh_from_db()
    quantity = position.quantity
    shown = _qty(quantity)
    if quantity <= 0:
        return  # a resting sell filled instead: nothing is left to sell
    if _is_dust(position):
        return  # below Kraken's minimum order: no order can sell it (reported by the close as dust)
    left = f" (its resting sells were canceled: {instrument.symbol} is unprotected)" if unprotected else ""
    try:
        order = order_submit(
            account=account,
            actor=actor,
            instrument=instrument,
            side=Side.SELL,
            order_type=OrderType.MARKET,
            quantity=quantity,
            reason="kill switch: flatten",
            broker_factory=broker_factory,
            quotes=quotes,
        )
    except Exception as exc:
        logger.exception("kill switch: flattening sell of %s failed", instrument)
        problems.append(
            f"{instrument.symbol}: flattening sell of {shown} failed ({type(exc).__name__}: {exc}){left}"
        )
        return
    sold.append(order.pk)
    if order.status == OrderStatus.REJECTED:
        problems.append(
            f"{instrument.symbol}: flattening sell {order.client_order_id} of {shown} rejected: "
            f"{order.status_reason}{left}"
        )
    elif order.status != OrderStatus.FILLED:
        problems.append(
            f"{instrument.symbol}: flattening sell {order.client_order_id} of {shown} is {order.status}, "
            "not confirmed filled"
        )


def _is_dust(position: Position) -> bool:
    """A position smaller than the pair's minimum order: no order can sell it, so flattening leaves it (it
    is reported as dust in the enforcement's audit event, never as a position still to sell)."""
    return position.quantity < pair_rules_for(position.instrument).ordermin


def _qty(quantity: Decimal) -> str:
    return format(quantity.normalize(), "f")


def _enforcement_close(account: Account, actor, *, canceled, sold, problems) -> Enforcement:
    """Under the switch's lock: what is left now decides whether enforcement is still due."""
    with transaction.atomic():
        locked = _lock_account(account)
        switch = _lock_switch(locked)
        cancel_entries, flatten = _sweep_plan(switch, locked)
        entries_left = list(
            Order.objects.filter(account=locked, side=Side.BUY, status__in=LIVE_STATUSES)
            .order_by("id")
            .values_list("client_order_id", flat=True)
        )
        held = (
            list(
                Position.objects.filter(account=locked, broker=book_of(locked), quantity__gt=0)
                .select_related("instrument")
                .order_by("instrument__symbol")
            )
            if flatten
            else []
        )
        positions_left = [f"{p.instrument.symbol} {_qty(p.quantity)}" for p in held if not _is_dust(p)]
        dust = [f"{p.instrument.symbol} {_qty(p.quantity)}" for p in held if _is_dust(p)]
        left = []
        if cancel_entries and entries_left:
            left.append(f"live entry orders left: {', '.join(entries_left)}")
        if positions_left:
            left.append(f"positions left: {', '.join(positions_left)}")
        complete = not left
        result = Enforcement(tuple(canceled), tuple(sold), tuple(problems), complete=complete)
        before = (switch.enforcement_due, switch.enforcement_problems)
        switch.enforcement_due = not complete
        switch.enforcement_problems = "" if complete else "; ".join([*problems, *left])
        if (switch.enforcement_due, switch.enforcement_problems) != before:
            switch.save(update_fields=["enforcement_due", "enforcement_problems", "updated_at"])
        audit_record(
            actor=actor,
            action="killswitch.enforced" if complete else "killswitch.enforcement_incomplete",
            account=locked,
            target=switch,
            details={
                "canceled_order_ids": list(result.canceled),
                "flatten_order_ids": list(result.sold),
                "problems": list(result.problems),
                "left": left,
                "dust_below_ordermin": dust,
            },
        )
    if not complete:
        logger.error("kill switch of %s: %s", account.slug, result.summary())
    return result


def risk_external_flow(
    *, account: Account, broker: str, amount: Decimal, at: datetime, source: str, actor=EXTERNAL_FLOW
) -> KillSwitch | None:
    """Money entered (``amount`` > 0) or left (< 0) ``broker``'s book of the account from outside: a
    deposit is not profit and a withdrawal is not a loss, so the UTC day's high-water mark and latest
    equity move by the flow (``risk.engine.external_flow``). Runs in the caller's transaction when there is
    one (the caller changed the balance under the account's lock), under the switch's lock; audited as
    ``risk.external_flow`` with the record before and after. Nothing to move (no record of that book for
    that day yet: the next snapshot starts from the new balance) records nothing."""
    amount = Decimal(amount)
    if not amount.is_finite():
        raise ValidationError(f"an external flow of {amount} is not possible")
    if not amount:
        return None
    with transaction.atomic():
        locked = _lock_account(account)
        switch = KillSwitch.objects.select_for_update().filter(account=locked).first()
        record = switch.day_record(broker) if switch is not None else None
        if record is None or record.day != engine.utc_day(at):
            return None
        moved = engine.external_flow(record, amount=amount)
        switch.set_day_record(moved, broker)
        switch.save()
        audit_record(
            actor=actor,
            action="risk.external_flow",
            account=locked,
            target=switch,
            details={
                "broker": broker,
                "amount": str(amount),
                "source": source,
                "at": at.isoformat(),
                "before": {"day_high": str(record.high_water), "day_equity": str(record.equity)},
                "after": {"day_high": str(moved.high_water), "day_equity": str(moved.equity)},
            },
        )
    return switch


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


def nav_mark_book(
    *,
    account: Account,
    broker: str,
    quotes,
    now: datetime,
    cash: Decimal | None = None,
    positions: list[Position] | None = None,
) -> MarkedBook:
    """Mark the book (read in the caller's transaction): the whole USD balance plus every position at its
    quote's bid, less the taker fee to sell it (``risk.engine.marked_equity``). A held pair without a
    fresh price raises :class:`NavUnavailable` naming it: no equity is better than a guessed one.

    A caller that has just read the book itself (in the same transaction, or the same unlocked read)
    passes what it read instead of having it read again: ``cash``, the USD balance's ``total`` (``None``:
    read it), and ``positions``, the book's positions with ``quantity > 0`` (their ``instrument`` loaded;
    ``None``: read them)."""
    from trading.selectors import fee_rates_for

    if cash is None:
        totals = select_values(  # one row per account, book and asset
            Balance,
            ("total",),
            "account_id = %s AND broker = %s AND asset = %s",
            [account.pk, broker, QUOTE_ASSET],
            limit=1,
        )
        cash = (totals[0][0] if totals else None) or Decimal(0)
    if positions is None:
        positions = list(
            Position.objects.filter(account=account, broker=broker, quantity__gt=0).select_related(
                "instrument"
            )
        )
    positions_value = Decimal(0)
    problems = []
    for position in sorted(positions, key=lambda item: item.instrument.symbol):
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

    require_director(actor, account, "record a NAV snapshot", platform_allowed=True)
    if reason not in NavSnapshot.Reason.values:
        raise ValidationError(f"NAV snapshot reason must be one of {', '.join(NavSnapshot.Reason.values)}")
    quotes = quotes or DatabaseQuoteSource()
    with transaction.atomic():
        locked = _lock_account(account)
        switch = _lock_switch(locked)
        # Read under the lock: a snapshot that waited for another one is marked after it, never before
        # (it would be refused as out of order), and with the policy as it is now (created with the
        # engine's defaults, audited, on first use).
        now = now or platform_now()
        policy_row = risk_policy_for(account=locked)
        policy = policy_row.to_engine()
        broker = book_of(locked)
        book = nav_mark_book(account=locked, broker=broker, quotes=quotes, now=now)
        try:
            day = engine.observe_equity(switch.day_record(broker), equity=book.equity, at=now)
        except engine.RiskInputError as exc:
            raise NavUnavailable(f"cannot record {account}'s NAV: {exc}") from None

        before = _switch_values(switch)
        state_before = _switch_state(switch)
        changed = engine.on_day_change(switch.to_engine(), now=now, policy=policy)
        checked = engine.on_equity(changed.state, day=day, policy=policy)
        switch.set_state(checked.state)
        switch.set_day_record(day, broker)
        _mark_enforcement(switch, checked.actions)
        _save_switch(switch, state_before)

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
        if switch.enforcement_due:
            # A trip's enforcement, or one a crash, a failed cancel or a refused sell left undone: every
            # snapshot while latched or halted runs the idempotent sweep again after the commit.
            _enforce_on_commit(
                account_id=locked.pk, actor=KILL_SWITCH, broker_factory=broker_factory, quotes=quotes
            )
    return snapshot
