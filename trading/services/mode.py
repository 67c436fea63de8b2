"""Simulation or live: the switch that decides which broker an account's orders reach.

Turning live trading on is deliberately hard: a director of the account (never a platform component), a
Kraken key that Kraken accepts right now, no simulated order still open, and the account's slug typed as
confirmation. Turning simulation on is the safe direction: any director (or the platform, e.g. a kill
switch) may do it at any time; orders already on Kraken stay there and reconciliation keeps tracking them.
Every switch is audited with its before and after; refused attempts to go live are audited too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from accounts.credential_services import is_director, kraken_credentials_validate
from accounts.credentials import CredentialNotFound
from accounts.models import Account, KrakenCredential
from accounts.selectors import user_can
from governance.actors import SystemActor, actor_user
from governance.services import audit_record
from trading.brokers.private_lock import PrivateLockError, private_calls
from trading.models import LIVE_STATUSES, BrokerName, Order

#: At most this many order ids are named in a message (all of them go to the audit event).
LISTED_ORDERS = 20


@dataclass(frozen=True)
class ModeSwitch:
    account: Account
    simulation_mode: bool  # the account's mode after the call
    changed: bool
    message: str
    open_live_orders: tuple[str, ...] = ()  # client order ids still open on Kraken (switch to simulation)


def account_set_simulation(
    *, account: Account, enabled: bool, actor, confirm: str | None = None
) -> ModeSwitch:
    """Put ``account`` in simulation (``enabled=True``) or live (``enabled=False``) mode.

    Refusals raise ``PermissionDenied`` (who) or ``ValidationError`` (why not now), each with a message a
    director can act on. Setting the mode the account already has changes nothing and records nothing."""
    if enabled:
        return _to_simulation(account=account, actor=actor)
    return _to_live(account=account, actor=actor, confirm=confirm)


def _open_orders(account: Account, broker: str) -> list[Order]:
    return list(
        Order.objects.filter(account=account, broker=broker, status__in=LIVE_STATUSES).order_by(
            "created_at", "id"
        )
    )


def _named(orders: list[Order]) -> str:
    names = [f"{order.client_order_id} ({order.status})" for order in orders[:LISTED_ORDERS]]
    more = f" and {len(orders) - LISTED_ORDERS} more" if len(orders) > LISTED_ORDERS else ""
    return ", ".join(names) + more


def _to_simulation(*, account: Account, actor) -> ModeSwitch:
    if not isinstance(actor, SystemActor) and not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"Only a director of {account} may switch it to simulation.")
    # The switch commits first, never waiting for anything: a Kraken trading call checks the mode inside
    # the account's private-call lock just before it is sent, so from the commit on none can start. Then
    # the lock is taken once, only to wait for a call that was already on its way, so that when this
    # returns no Kraken trading call of the account is in flight.
    result = _switch_to_simulation(account=account, actor=actor)
    if not result.changed:
        return result
    try:
        with private_calls(account.pk):
            pass
    except PrivateLockError as exc:
        message = (
            f"{result.message} (Could not wait for a Kraken call possibly already under way: {exc}. "
            "The switch holds: no new trading call can start.)"
        )
        return replace(result, message=message)
    return result


def _switch_to_simulation(*, account: Account, actor) -> ModeSwitch:
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        if account.simulation_mode:
            return ModeSwitch(account, True, False, f"{account.slug} is already in simulation mode.")
        live_orders = _open_orders(account, BrokerName.KRAKEN)
        ids = tuple(order.client_order_id for order in live_orders)
        account.simulation_mode = True
        account._history_user = actor_user(actor)
        account.save(update_fields=["simulation_mode"])
        audit_record(
            actor=actor,
            account=account,
            action="account.simulation_enabled",
            target=account,
            details={
                "before": {"simulation_mode": False},
                "after": {"simulation_mode": True},
                "open_live_orders": list(ids),
            },
        )
    message = f"{account.slug} is now in simulation mode."
    if ids:
        message += (
            f" {len(ids)} live order(s) remain open on Kraken ({_named(live_orders)}); they stay there and "
            "reconciliation keeps tracking them. Cancel them on Kraken if they should not execute."
        )
    return ModeSwitch(account, True, True, message, ids)


def _refuse(*, account: Account, actor, reason: str) -> ValidationError:
    """Audit a director's refused attempt to go live (in its own transaction) and return the error."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            account=account,
            action="account.live_refused",
            target=account,
            details={"reason": reason},
        )
    return ValidationError(reason)


def _to_live(*, account: Account, actor, confirm: str | None) -> ModeSwitch:
    if isinstance(actor, SystemActor):
        raise PermissionDenied(
            f"{actor.label} may not turn live trading on; a director of {account} must do it."
        )
    if not is_director(actor, account):
        raise PermissionDenied(f"Only a director of {account} may turn live trading on.")
    account = Account.objects.get(pk=account.pk)
    if not account.simulation_mode:
        return ModeSwitch(account, False, False, f"{account.slug} is already trading live.")

    if not confirm:
        raise _refuse(
            account=account,
            actor=actor,
            reason=f"Turning live trading on for {account.slug} needs confirmation: give the account's slug "
            f"({account.slug!r}).",
        )
    if confirm != account.slug:
        raise _refuse(
            account=account,
            actor=actor,
            reason=f"The confirmation {confirm!r} is not the account's slug ({account.slug!r}); live trading "
            "stays off.",
        )
    sim_orders = _open_orders(account, BrokerName.SIM)
    if sim_orders:
        raise _refuse(account=account, actor=actor, reason=_open_sim_orders_reason(account, sim_orders))
    try:
        credential = kraken_credentials_validate(account=account, actor=actor)
    except CredentialNotFound:
        raise _refuse(
            account=account,
            actor=actor,
            reason=f"{account.slug} has no Kraken API key; set one with manage.py set_kraken_key "
            f"--account {account.slug} before going live.",
        ) from None
    if not credential.validation_ok:
        raise _refuse(
            account=account,
            actor=actor,
            reason=f"Kraken refused {account.slug}'s stored API key ({credential.validation_message}); "
            "live trading stays off.",
        )

    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        if not account.simulation_mode:
            return ModeSwitch(account, False, False, f"{account.slug} is already trading live.")
        # Re-checked under the account's lock: an order placed meanwhile, or a key changed meanwhile.
        sim_orders = _open_orders(account, BrokerName.SIM)
        if sim_orders:
            reason = _open_sim_orders_reason(account, sim_orders)
        else:
            reason = None
            credential = KrakenCredential.objects.get(account=account)
            if not credential.validation_ok:
                reason = (
                    f"{account.slug}'s Kraken key was changed and is not validated; live trading stays off."
                )
        if reason is None:
            account.simulation_mode = False
            account._history_user = actor_user(actor)
            account.save(update_fields=["simulation_mode"])
            audit_record(
                actor=actor,
                account=account,
                action="account.live_enabled",
                target=account,
                details={
                    "before": {"simulation_mode": True},
                    "after": {"simulation_mode": False},
                    "fingerprint": credential.fingerprint,
                    "validated_at": credential.validated_at.isoformat(),
                },
            )
    if reason is not None:
        raise _refuse(account=account, actor=actor, reason=reason)
    return ModeSwitch(
        account, False, True, f"{account.slug} is now trading live on Kraken (key {credential.fingerprint})."
    )


def _open_sim_orders_reason(account: Account, orders: list[Order]) -> str:
    return (
        f"{account.slug} still has {len(orders)} open simulated order(s): {_named(orders)}. Cancel them (or "
        "let them finish) before going live."
    )
