"""The one writer of audit events."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from django.db import models, transaction
from django.utils import timezone

from aether_site.db import advisory_xact_lock
from aether_site.rows import insert_rows
from governance.actors import actor_label, actor_user
from governance.chain import GENESIS_HASH, ChainRecord, canonical_details, compute_hash, event_time
from governance.models import AuditEvent

# pg_advisory_xact_lock key for appends to the chain: 'AETHAUDT' as a signed 64-bit integer.
AUDIT_CHAIN_LOCK_KEY = int.from_bytes(b"AETHAUDT", "big", signed=True)


def _lock_chain_head() -> None:
    """Serialise appends so the chain stays linear under concurrent writers (see ``advisory_xact_lock``
    for SQLite). On either engine the unique ``seq`` and ``prev_hash`` columns refuse a fork outright."""
    advisory_xact_lock(AUDIT_CHAIN_LOCK_KEY)


@dataclass(frozen=True)
class _Known:
    """What this transaction already holds for the chain: the chain lock and the head it last appended
    (``head``, or ``None`` before its first event), and the rows locked at least FOR KEY SHARE.

    Valid only while ``marker`` is still among the connection's commit hooks: Django drops a transaction's
    hooks when it commits or rolls back, and those registered inside a savepoint when that savepoint rolls
    back (and with it the event written or the row locked there). Every change registers a fresh marker
    at the current savepoint level, so nothing learnt inside a savepoint that rolled back is reused."""

    head: tuple[int, str] | None
    shared: frozenset[tuple[str, int]]
    marker: Any


def _known(connection) -> _Known | None:
    known = getattr(connection, "_aether_audit_known", None)
    if known is None:
        return None
    if any(hook[1] is known.marker for hook in reversed(connection.run_on_commit)):  # usually the last
        return known
    connection._aether_audit_known = None
    return None


def _remember(connection, head: tuple[int, str] | None, shared: frozenset[tuple[str, int]]) -> None:
    def marker() -> None:  # a no-op commit hook: while it is registered, what it stands for holds
        return None

    connection.on_commit(marker)
    connection._aether_audit_known = _Known(head=head, shared=shared, marker=marker)


def _row_key(row) -> tuple[str, int]:
    return (row._meta.db_table, row.pk)


def audit_rows_locked(*rows: models.Model) -> None:
    """Tell the audit writer that the caller's transaction holds ``rows`` locked FOR NO KEY UPDATE or
    stronger (e.g. the account row an order service locks first): an event referencing them need not
    share-lock them again before the chain lock (see ``_share_referenced_rows``). Must run inside that
    transaction, after the rows were locked; it is forgotten when the transaction (or the savepoint it
    was called in) ends or rolls back."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_rows_locked() must run inside the transaction that locked the rows")
    if connection.vendor != "postgresql":
        return  # SQLite has no row locks: nothing to skip
    known = _known(connection)
    shared = known.shared if known is not None else frozenset()
    _remember(
        connection,
        known.head if known is not None else None,
        shared | {_row_key(row) for row in rows if row.pk is not None},
    )


def _share_referenced_rows(connection, account, user, already: frozenset = frozenset()) -> frozenset:
    """Take now the row locks the event's foreign keys will take at insert (PostgreSQL's FOR KEY SHARE on
    the account and the user), so they come before the chain lock. Otherwise a writer holding the chain
    could wait for an account another writer holds FOR UPDATE while that writer waits for the chain.
    Rows in ``already`` are held by this transaction (an earlier event, or ``audit_rows_locked``): not
    asked again. Returns the rows held now."""
    if connection.vendor != "postgresql":
        return already  # SQLite has no row locks: one writer at a time
    shared = set(already)
    for row in (account, user):
        if row is not None and row.pk is not None:
            key = _row_key(row)
            if key in shared:
                continue
            table = connection.ops.quote_name(row._meta.db_table)
            with connection.cursor() as cursor:
                cursor.execute(f"SELECT 1 FROM {table} WHERE id = %s FOR KEY SHARE", [row.pk])  # noqa: S608
            shared.add(key)
    return frozenset(shared)


_CONSTRAINTS_NOW = "SET CONSTRAINTS ALL IMMEDIATE"


def _check_constraints_now(connection) -> None:
    """Run the transaction's deferred foreign-key checks now, before the chain lock, and the rest of its
    checks as its statements run. Django's foreign keys are checked at COMMIT on PostgreSQL, where each check
    takes FOR KEY SHARE on the row referenced: a writer holding the chain lock could then wait at COMMIT for
    a row another writer holds FOR UPDATE while that writer waits for the chain lock (a deadlock seen in the
    end-to-end test). Checked now, the wait comes before the chain lock, in the lock order."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute(_CONSTRAINTS_NOW)


def _lock_chain_and_read_head(connection) -> tuple[int, str] | None:
    """The first append of a transaction: the deferred checks run now (``_check_constraints_now``), then the
    chain lock (``_lock_chain_head``), then the head is read — in that order, and on PostgreSQL in one round
    trip: the three statements go as one query string, which the server runs one after the other (the head
    is read with a snapshot taken once the lock is held). Returns ``(seq, hash)`` of the head, ``None`` for
    an empty chain."""
    if connection.vendor != "postgresql":
        _check_constraints_now(connection)
        _lock_chain_head()
        return AuditEvent.objects.order_by("-seq").values_list("seq", "hash").first()
    table = connection.ops.quote_name(AuditEvent._meta.db_table)
    # No parameters (the lock key is a constant): several statements may then go in one query string.
    lock = f"SELECT pg_advisory_xact_lock({int(AUDIT_CHAIN_LOCK_KEY)})"
    head = f"SELECT seq, hash FROM {table} ORDER BY seq DESC LIMIT 1"  # noqa: S608
    sql = f"{_CONSTRAINTS_NOW}; {lock}; {head}"
    with connection.cursor() as cursor:
        cursor.execute(sql)
        if not (cursor.nextset() and cursor.nextset()):  # past SET CONSTRAINTS and the lock
            raise RuntimeError("the audit chain's head query returned fewer results than it has statements")
        row = cursor.fetchone()
    return (int(row[0]), row[1]) if row is not None else None


@dataclass(frozen=True)
class AuditEntry:
    """One event to append, as :func:`audit_record` takes it; for :func:`audit_record_many`, which writes
    several in one statement. ``details`` is read when the entry is written: pass a snapshot."""

    actor: Any
    action: str
    account: Any = None
    target: models.Model | None = None
    target_type: str = ""
    target_id: str = ""
    details: dict[str, Any] | None = None


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
    the transaction needs (lock order: rows first, the audit chain last), and after its other writes where
    possible (from the first event on, foreign keys are checked as each statement runs). A second event in
    the same transaction appends to the head the first one left (the lock is still held, so nobody else can
    have appended) instead of locking and reading the head again."""
    entry = AuditEntry(
        actor=actor,
        action=action,
        account=account,
        target=target,
        target_type=target_type,
        target_id=target_id,
        details=details,
    )
    return audit_record_many([entry])[0]


def audit_record_many(entries: Sequence[AuditEntry]) -> list[AuditEvent]:
    """Append ``entries`` to the audit chain in their order, as :func:`audit_record` would one by one, but
    in one INSERT: a transaction that knows all its events at its end (the order service) takes the chain
    lock only then, for as short a time as it can. Same rules as :func:`audit_record`."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record() must run inside the caller's transaction.atomic() block")
    if not entries:
        return []
    known = _known(connection)
    shared = known.shared if known is not None else frozenset()
    prepared = []
    for entry in entries:
        target_type, target_id = entry.target_type, entry.target_id
        if entry.target is not None:
            if entry.target.pk is None:
                raise ValueError("audit target must be saved first")
            target_type, target_id = entry.target._meta.label_lower, str(entry.target.pk)
        user = actor_user(entry.actor)
        shared = _share_referenced_rows(connection, entry.account, user, shared)
        prepared.append((entry, user, target_type, str(target_id), canonical_details(entry.details)))
    if known is not None and known.head is not None:
        seq, prev_hash = known.head[0] + 1, known.head[1]
    else:
        head = _lock_chain_and_read_head(connection)
        seq, prev_hash = (head[0] + 1, head[1]) if head else (1, GENESIS_HASH)

    events = []
    created_at = event_time(timezone.now())
    for entry, user, target_type, target_id, details_json in prepared:
        record = ChainRecord(
            seq=seq,
            created_at=created_at,
            actor=actor_label(entry.actor),
            actor_user_id=user.pk if user is not None else None,
            account_id=entry.account.pk if entry.account is not None else None,
            action=entry.action,
            target_type=target_type,
            target_id=target_id,
            details_json=details_json,
            prev_hash=prev_hash,
        )
        event = AuditEvent(
            seq=record.seq,
            created_at=record.created_at,
            actor=record.actor,
            actor_user=user,
            account=entry.account,
            action=record.action,
            target_type=record.target_type,
            target_id=record.target_id,
            details_json=record.details_json,
            prev_hash=record.prev_hash,
            hash=compute_hash(record),
        )
        events.append(event)
        seq, prev_hash = event.seq + 1, event.hash
    insert_rows(events)  # one INSERT for all (an event row has no signals or save() of its own)
    _remember(connection, (events[-1].seq, events[-1].hash), shared)
    return events
