"""The database itself refuses UPDATE and DELETE of audit rows, even through raw SQL."""

import pytest
from django.core.management import CommandError, ManagementUtility, call_command
from django.core.management.sql import emit_post_migrate_signal
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


def insert_copy_sql(conflict_clause: str = "") -> str:
    columns = "seq, created_at, actor, action, target_type, target_id, details_json, prev_hash, hash"
    return (
        f"INSERT INTO {triggers.TABLE} ({columns}) SELECT {columns} FROM {triggers.TABLE} WHERE seq = 2 "
        f"{conflict_clause}"
    )


def test_upsert_over_an_existing_event_is_refused(events):
    sql = insert_copy_sql("ON CONFLICT (seq) DO UPDATE SET action = 'forged'")
    if connection.vendor == "sqlite":
        sql = sql.replace("WHERE seq = 2", "WHERE seq = 2 AND 1")  # SQLite's upsert-after-SELECT rule
    with pytest.raises(DatabaseError, match="append-only"):
        raw(sql)
    assert AuditEvent.objects.get(seq=2).action == "test.event1"


def test_sqlite_insert_or_replace_is_refused(events):
    if connection.vendor != "sqlite":
        pytest.skip("INSERT OR REPLACE is SQLite syntax")
    replace_sql = insert_copy_sql().replace("INSERT INTO", "INSERT OR REPLACE INTO")
    with pytest.raises(DatabaseError, match="append-only"):
        raw(replace_sql)
    assert AuditEvent.objects.count() == 5
    assert AuditEvent.objects.get(seq=2).action == "test.event1"


def test_missing_triggers_fail_verify_audit_and_are_reinstalled_by_migrate(events):
    with connection.cursor() as cursor:
        triggers.uninstall(cursor, connection.vendor)
        assert triggers.missing(cursor, connection.vendor)
    with pytest.raises(CommandError, match="triggers missing"):
        call_command("verify_audit")
    # What a migration that rebuilds the table leaves behind is repaired after every migrate.
    emit_post_migrate_signal(verbosity=0, interactive=False, db="default")
    with connection.cursor() as cursor:
        assert triggers.missing(cursor, connection.vendor) == []
    with pytest.raises(DatabaseError, match="append-only"):
        raw(f"DELETE FROM {triggers.TABLE}")


def test_expect_head_accepts_the_current_head(events, capsys):
    head = events[-1]
    call_command("verify_audit", "--expect-head", f"{head.seq}:{head.hash}")
    assert f"head {head.seq}:{head.hash}" in capsys.readouterr().out


def test_expect_head_finds_a_truncated_tail(events):
    head = events[-1]
    tamper_bypassing_triggers(f"DELETE FROM {triggers.TABLE} WHERE seq >= 4")
    call_command("verify_audit")  # without the head, a cut tail looks like a shorter chain
    with pytest.raises(CommandError, match="truncated: expected event seq 5 but the chain now ends at seq 3"):
        call_command("verify_audit", "--expect-head", f"{head.seq}:{head.hash}")


def test_expect_head_finds_a_rewritten_chain(events):
    with pytest.raises(CommandError, match="rewritten"):
        call_command("verify_audit", "--expect-head", f"3:{'a' * 64}")


def test_expect_head_must_be_well_formed(events):
    with pytest.raises(CommandError, match="SEQ:HASH"):
        call_command("verify_audit", "--expect-head", "latest")
