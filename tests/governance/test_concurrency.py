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
