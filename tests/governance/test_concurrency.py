"""Twenty writers appending at once leave one linear, verifiable chain (PostgreSQL advisory lock)."""

import threading

import pytest
from django.db import connection, transaction

from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from governance.services import audit_record

WRITERS = 20
EVENTS_PER_WRITER = 5


@pytest.mark.postgres
def test_twenty_concurrent_writers_leave_a_valid_chain(audit_transactional_db):
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            barrier.wait(timeout=30)
            for i in range(EVENTS_PER_WRITER):
                with transaction.atomic():
                    audit_record(actor=SystemActor(f"writer{n}"), action="test.concurrent", details={"i": i})
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors
    total = WRITERS * EVENTS_PER_WRITER
    assert AuditEvent.objects.count() == total
    assert sorted(AuditEvent.objects.values_list("seq", flat=True)) == list(range(1, total + 1))
    assert AuditEvent.objects.values("actor").distinct().count() == WRITERS
    assert audit_chain_verify() is None


@pytest.mark.postgres
def test_a_writer_holding_the_chain_never_waits_at_commit_for_a_row_another_writer_holds(
    audit_transactional_db, firm
):
    """Writer A holds an account row FOR UPDATE and will then append an audit event. Writer B has inserted
    a row referencing that account (its foreign key is checked at COMMIT on PostgreSQL) and appends an
    event too. B must wait for the row before it takes the chain lock, not after: otherwise B holds the
    chain waiting at COMMIT for A's row while A waits for the chain (a deadlock)."""
    from accounts.models import Account
    from trading.models import Balance

    account = firm.alice_account
    a_locked, b_started = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def writer_a() -> None:
        try:
            with transaction.atomic():
                Account.objects.select_for_update().get(pk=account.pk)  # FOR UPDATE: blocks FOR KEY SHARE
                a_locked.set()
                b_started.wait(timeout=10)
                threading.Event().wait(0.5)  # B is now at its audit event
                audit_record(actor=SystemActor("writer_a"), action="test.a", account=account)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    def writer_b() -> None:
        try:
            a_locked.wait(timeout=10)
            with transaction.atomic():
                Balance.objects.create(account_id=account.pk, broker="sim", asset="ZZZ", total=1)
                b_started.set()
                audit_record(actor=SystemActor("writer_b"), action="test.b")
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    threads = [threading.Thread(target=writer_a), threading.Thread(target=writer_b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    assert sorted(AuditEvent.objects.values_list("action", flat=True)) == ["test.a", "test.b"]
    assert audit_chain_verify() is None
