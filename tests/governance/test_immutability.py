"""The database itself refuses UPDATE and DELETE of audit rows, even through raw SQL."""

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.db import DatabaseError, connection, transaction

from governance import triggers
from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.services import audit_record
from tests.conftest import tamper_bypassing_triggers

SYSTEM = SystemActor("tests")


@pytest.fixture
def events(db):
    with transaction.atomic():
        return [audit_record(actor=SYSTEM, action=f"test.event{n}", details={"n": n}) for n in range(5)]


def raw(sql, params=()):
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize(
    "sql",
    [
        f"UPDATE {triggers.TABLE} SET action = 'forged' WHERE seq = 2",
        f"UPDATE {triggers.TABLE} SET details_json = '{{}}'",
        f"DELETE FROM {triggers.TABLE} WHERE seq = 3",
        f"DELETE FROM {triggers.TABLE}",
    ],
)
def test_raw_sql_update_and_delete_are_refused(events, sql):
    with pytest.raises(DatabaseError, match="append-only"):
        raw(sql)
    assert AuditEvent.objects.count() == 5
    assert AuditEvent.objects.get(seq=2).action == "test.event1"


def test_orm_update_and_delete_are_refused(events):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=1).update(action="forged")
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        AuditEvent.objects.filter(seq=1).delete()
    assert AuditEvent.objects.filter(action="forged").count() == 0


@pytest.mark.postgres
def test_truncate_of_a_non_empty_audit_table_is_refused_on_postgresql(events):
    raw("SET CONSTRAINTS ALL IMMEDIATE")  # pending deferred FK checks would otherwise block TRUNCATE
    with pytest.raises(DatabaseError, match="append-only"):
        raw(f"TRUNCATE {triggers.TABLE} CASCADE")
    assert AuditEvent.objects.count() == 5


def test_verify_audit_reports_an_intact_chain(events, capsys):
    call_command("verify_audit")
    out = capsys.readouterr().out
    assert "5 events intact" in out
    assert events[-1].hash in out


def test_verify_audit_names_an_edit_made_with_triggers_disabled(events):
    tamper_bypassing_triggers(f"UPDATE {triggers.TABLE} SET details_json = %s WHERE seq = 3", ['{"n":99}'])
    assert AuditEvent.objects.get(seq=3).details == {"n": 99}  # the edit really happened
    with pytest.raises(CommandError, match=r"broken at event seq 3 .*test\.event2.*altered") as excinfo:
        call_command("verify_audit")
    assert excinfo.value.returncode == 1


def test_verify_audit_names_a_deletion_made_with_triggers_disabled(events):
    tamper_bypassing_triggers(f"DELETE FROM {triggers.TABLE} WHERE seq = 2")
    with pytest.raises(CommandError, match=r"broken at event seq 3 .*missing"):
        call_command("verify_audit")


def test_verify_audit_exit_status_is_non_zero_from_the_command_line(events):
    tamper_bypassing_triggers(f"UPDATE {triggers.TABLE} SET actor = 'user:mallory' WHERE seq = 4")
    with pytest.raises(SystemExit) as excinfo:
        ManagementUtility(["manage.py", "verify_audit"]).execute()
    assert excinfo.value.code == 1
