"""Setting, validating and loading an account's Kraken API key.

The key goes to the configured credential store (``accounts/credentials.py``); the database keeps a
:class:`~accounts.models.KrakenCredential` row (reference, fingerprint, last validation) and the audit trail
records the fingerprint, never the key. A key is validated with a private ``Balance`` call *before* it is
stored: a key Kraken refuses is never kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from accounts.credentials import (
    CredentialError,
    CredentialNotFound,
    credential_store,
    fingerprint,
    kraken_keys_for,
)
from accounts.models import Account, KrakenCredential
from accounts.roles import Role
from accounts.selectors import account_role, user_can
from governance.actors import SystemActor, actor_user
from governance.services import audit_record
from trading.brokers import private_lock
from trading.brokers.kraken import KrakenKeys, check_credentials, private_client, scrub

logger = logging.getLogger(__name__)


def is_director(actor, account: Account) -> bool:
    """A signed-in, active user holding the director role in ``account`` (superusers included only when
    they are members with that role)."""
    if isinstance(actor, SystemActor) or actor is None or not getattr(actor, "is_active", False):
        return False
    return account_role(user=actor, account=account) == Role.DIRECTOR


def _require_director_or_system(actor, account: Account, what: str) -> None:
    if isinstance(actor, SystemActor):
        return
    if not is_director(actor, account):
        raise PermissionDenied(f"Only a director of {account} may {what}.")


@dataclass(frozen=True)
class KeySetResult:
    credential: KrakenCredential
    fee_tiers_updated: int
    fee_error: str | None  # why the fee tier could not be refreshed (the key stays set)


def kraken_credentials_set(*, account: Account, keys: KrakenKeys, actor) -> KeySetResult:
    """Validate ``keys`` with Kraken (private Balance), then store them, record the credential and audit it
    (fingerprint only), then refresh the account's fee tier with the new key.

    A key Kraken refuses raises ``ValidationError`` with Kraken's message; nothing is stored, the attempt
    is audited. A failed fee-tier refresh does not undo the key: it is returned in ``fee_error``."""
    _require_director_or_system(actor, account, "set its Kraken API key")
    key_print = fingerprint(keys)
    ok, message = check_credentials(account_id=account.id, keys=keys)
    message = scrub(message or "", keys)
    if not ok:
        with transaction.atomic():
            audit_record(
                actor=actor,
                account=account,
                action="kraken_key.rejected",
                target=account,
                details={"fingerprint": key_print, "message": message},
            )
        raise ValidationError(f"Kraken refused the API key for {account.slug}: {message}")

    store = credential_store()
    reference = store.put(account.slug, keys)
    now = timezone.now()
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        credential = KrakenCredential.objects.select_for_update().filter(account=account).first()
        previous = None
        if credential is None:
            credential = KrakenCredential(account=account)
        else:
            previous = (credential.store, credential.reference, credential.fingerprint)
        credential.store, credential.reference, credential.fingerprint = store.kind, reference, key_print
        credential.validated_at, credential.validation_ok = now, True
        credential.validation_message = message or "ok"
        credential._history_user = actor_user(actor)
        credential.save()
        audit_record(
            actor=actor,
            account=account,
            action="kraken_key.set",
            target=credential,
            details={
                "fingerprint": key_print,
                "previous_fingerprint": previous[2] if previous else None,
                "store": store.kind,
                "reference": reference,
            },
        )
        if previous is not None and previous[:2] != (store.kind, reference):
            transaction.on_commit(lambda: _forget(previous[0], previous[1], account.slug))

    fee_tiers, fee_error = _refresh_fee_tier(account=account, keys=keys, actor=actor)
    return KeySetResult(credential=credential, fee_tiers_updated=fee_tiers, fee_error=fee_error)


def _forget(kind: str, reference: str, slug: str) -> None:
    """Remove a key the account no longer uses (it moved to another store or reference)."""
    try:
        credential_store(kind).delete(reference)
    except Exception as exc:  # the new key is in place; the old copy is only clutter
        logger.warning("could not remove %s's old Kraken key at %s:%s: %s", slug, kind, reference, exc)


def _refresh_fee_tier(*, account: Account, keys: KrakenKeys, actor) -> tuple[int, str | None]:
    from trading.services import fee_tier_refresh

    client = private_client(keys, account_id=account.id)
    try:
        # The client's nonces come from the account's one stream: the call must hold the account's lock.
        with private_lock.private_calls(account.id):
            tiers = fee_tier_refresh(actor=actor, account=account, client=client)
    except Exception as exc:  # reported to the caller, who shows it; the key stays set
        text = scrub(f"{type(exc).__name__}: {exc}", keys)
        logger.warning("fee tier refresh failed for %s after setting its Kraken key: %s", account.slug, text)
        return 0, text
    finally:
        client.close()
    return len(tiers), None


def kraken_fee_tier_refresh(*, account: Account, actor) -> tuple[int, str | None]:
    """Refresh the account's fee tier from Kraken's TradeVolume with its stored key (reconciliation does,
    so the maker/taker rates follow the 30-day volume). Returns (pairs updated, error or None)."""
    return _refresh_fee_tier(account=account, keys=kraken_keys_for(account), actor=actor)


def kraken_credentials_validate(*, account: Account, actor) -> KrakenCredential:
    """Ask Kraken (private Balance) whether the stored key still works and record the answer on the
    credential. A key the store cannot give back counts as invalid, with the store's message. Audited when
    a user asks, or when the outcome changed. ``CredentialNotFound`` when the account has no key."""
    if not isinstance(actor, SystemActor) and not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"Only a director of {account} may validate its Kraken API key.")
    if not KrakenCredential.objects.filter(account=account).exists():
        raise CredentialNotFound(
            f"{account.slug} has no Kraken API key; set one with "
            f"manage.py set_kraken_key --account {account.slug}."
        )
    try:
        keys = kraken_keys_for(account)
    except CredentialError as exc:
        ok, message = False, f"credential store: {exc}"
    else:
        ok, message = check_credentials(account_id=account.id, keys=keys)
        message = scrub(message or ("ok" if ok else "refused"), keys)

    with transaction.atomic():
        credential = KrakenCredential.objects.select_for_update().get(account=account)
        changed = (credential.validation_ok, credential.validation_message) != (ok, message)
        credential.validated_at, credential.validation_ok, credential.validation_message = (
            timezone.now(),
            ok,
            message,
        )
        credential._history_user = actor_user(actor)
        credential.save(update_fields=["validated_at", "validation_ok", "validation_message", "updated_at"])
        if changed or not isinstance(actor, SystemActor):
            audit_record(
                actor=actor,
                account=account,
                action="kraken_key.validated",
                target=credential,
                details={"fingerprint": credential.fingerprint, "ok": ok, "message": message},
            )
    return credential
