import pytest
from django.core import serializers
from django.db import transaction

from governance.actors import SystemActor
from governance.chain import GENESIS_HASH, verify_chain
from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from governance.services import audit_record

SYSTEM = SystemActor("tests")


def test_audit_record_refuses_to_run_outside_a_transaction(audit_transactional_db):
    with pytest.raises(RuntimeError, match=r"transaction\.atomic"):
        audit_record(actor=SYSTEM, action="test.outside")
    assert AuditEvent.objects.count() == 0


def test_events_link_into_one_chain(firm):
    with transaction.atomic():
        first = audit_record(actor=SYSTEM, action="test.first", details={"k": "v"})
        second = audit_record(
            actor=firm.owner, account=firm.alice_account, action="test.second", target=firm.alice_account
        )
    assert (first.seq, first.prev_hash) == (1, GENESIS_HASH)
    assert (second.seq, second.prev_hash) == (2, first.hash)
    second.refresh_from_db()
    assert second.actor == "user:alice"
    assert second.actor_user == firm.owner
    assert (second.target_type, second.target_id) == ("accounts.account", str(firm.alice_account.pk))
    assert first.details == {"k": "v"}
    assert audit_chain_verify() is None


def test_an_event_rolls_back_with_its_transaction(db):
    def record_then_fail():
        with transaction.atomic():
            audit_record(actor=SYSTEM, action="test.rolled_back")
            raise ZeroDivisionError

    with pytest.raises(ZeroDivisionError):
        record_then_fail()
    assert AuditEvent.objects.count() == 0


def test_system_actor_names_are_identifiers():
    with pytest.raises(ValueError, match="identifier"):
        SystemActor("Robert'); DROP TABLE")


def test_chain_survives_a_dumpdata_loaddata_round_trip(firm):
    with transaction.atomic():
        for n in range(3):
            audit_record(actor=firm.owner, account=firm.alice_account, action="test.backup", details={"n": n})
    dumped = serializers.serialize("json", AuditEvent.objects.order_by("seq"))
    restored = [item.object for item in serializers.deserialize("json", dumped)]
    assert [event.seq for event in restored] == [1, 2, 3]
    assert verify_chain(event.chain_record() for event in restored) is None


def test_event_times_are_whole_milliseconds(db):
    with transaction.atomic():
        event = audit_record(actor=SYSTEM, action="test.time")
    assert event.created_at.microsecond % 1000 == 0


@pytest.mark.django_db(transaction=True)
def test_audit_record_many_appends_its_entries_in_order_in_one_insert(firm, audit_transactional_db):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from governance.services import AuditEntry, audit_record_many

    account = firm.alice_account
    with transaction.atomic():
        before = audit_record(actor=SYSTEM, action="test.before", account=account)
        assert audit_record_many([]) == []
        with CaptureQueriesContext(connection) as captured:
            events = audit_record_many(
                [
                    AuditEntry(actor=SYSTEM, action="test.one", account=account, details={"n": 1}),
                    AuditEntry(actor=firm.owner, action="test.two", target=account, details={"n": 2}),
                    AuditEntry(actor=SYSTEM, action="test.three", target_type="x.y", target_id="7"),
                ]
            )
        inserts = [q["sql"] for q in captured.captured_queries if q["sql"].startswith("INSERT")]
        assert len(inserts) == 1
        after = audit_record(actor=SYSTEM, action="test.after")
    assert [event.action for event in events] == ["test.one", "test.two", "test.three"]
    assert [event.seq for event in events] == [before.seq + 1, before.seq + 2, before.seq + 3]
    assert events[0].prev_hash == before.hash
    assert events[1].prev_hash == events[0].hash
    assert events[2].prev_hash == events[1].hash
    assert (after.seq, after.prev_hash) == (events[2].seq + 1, events[2].hash)
    stored = AuditEvent.objects.get(action="test.two")
    assert stored.pk == events[1].pk
    assert (stored.target_type, stored.target_id) == ("accounts.account", str(account.pk))
    assert stored.actor_user_id == firm.owner.pk
    assert stored.details == {"n": 2}
    assert audit_chain_verify() is None
