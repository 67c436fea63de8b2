"""The one writer of audit events."""

from __future__ import annotations

from typing import Any

from django.db import models, transaction
from django.utils import timezone

from aether_site.db import advisory_xact_lock
from governance.actors import actor_label, actor_user
from governance.chain import GENESIS_HASH, ChainRecord, canonical_details, compute_hash, event_time
from governance.models import AuditEvent

# pg_advisory_xact_lock key for appends to the chain: 'AETHAUDT' as a signed 64-bit integer.
AUDIT_CHAIN_LOCK_KEY = int.from_bytes(b"AETHAUDT", "big", signed=True)


def _lock_chain_head() -> None:
    """Serialise appends so the chain stays linear under concurrent writers (see ``advisory_xact_lock``
    for SQLite). On either engine the unique ``seq`` and ``prev_hash`` columns refuse a fork outright."""
    advisory_xact_lock(AUDIT_CHAIN_LOCK_KEY)


def _share_referenced_rows(connection, account, user) -> None:
    """Take now the row locks the event's foreign keys will take at insert (PostgreSQL's FOR KEY SHARE on
    the account and the user), so they come before the chain lock. Otherwise a writer holding the chain
    could wait for an account another writer holds FOR UPDATE while that writer waits for the chain."""
    if connection.vendor != "postgresql":
        return  # SQLite has no row locks: one writer at a time
    with connection.cursor() as cursor:
        for row in (account, user):
            if row is not None and row.pk is not None:
                table = connection.ops.quote_name(row._meta.db_table)
                cursor.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR KEY SHARE", [row.pk])  # noqa: S608


def audit_record(
    *,
    actor,
    action: str,
    account=None,
    target: models.Model | None = None,
    target_type: str = "",
    target_id: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the audit chain, inside the caller's transaction (so it commits or rolls back
    with the change it describes). ``actor`` is a user or a :class:`governance.actors.SystemActor`.

    The chain lock is held until the transaction ends, so record the event after taking any row locks
    the transaction needs (lock order: rows first, the audit chain last)."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record() must run inside the caller's transaction.atomic() block")
    if target is not None:
        if target.pk is None:
            raise ValueError("audit target must be saved first")
        target_type, target_id = target._meta.label_lower, str(target.pk)
    details_json = canonical_details(details)
    label = actor_label(actor)

    user = actor_user(actor)
    _share_referenced_rows(connection, account, user)
    _lock_chain_head()
    head = AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)

    record = ChainRecord(
        seq=seq,
        created_at=event_time(timezone.now()),
        actor=label,
        actor_user_id=user.pk if user is not None else None,
        account_id=account.pk if account is not None else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id),
        details_json=details_json,
        prev_hash=prev_hash,
    )
    event = AuditEvent(
        seq=record.seq,
        created_at=record.created_at,
        actor=record.actor,
        actor_user=user,
        account=account,
        action=record.action,
        target_type=record.target_type,
        target_id=record.target_id,
        details_json=record.details_json,
        prev_hash=record.prev_hash,
        hash=compute_hash(record),
    )
    event.save(force_insert=True)
    return event
