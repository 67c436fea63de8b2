"""Keeping the audit table's database protection in place, and telling when it is not."""

from __future__ import annotations

from django.db import connections

from governance import triggers


def audit_triggers_missing(using: str = "default") -> list[str]:
    connection = connections[using]
    with connection.cursor() as cursor:
        if triggers.TABLE not in connection.introspection.table_names(cursor):
            return []  # not migrated yet: nothing to protect
        return triggers.missing(cursor, connection.vendor)


def reinstall_audit_triggers_after_migrate(sender, using: str = "default", plan=None, **kwargs) -> None:
    """SQLite drops a table's triggers whenever a migration rebuilds the table; after every ``migrate``,
    put back whatever is missing (installing is idempotent)."""
    if not audit_triggers_missing(using):
        return
    connection = connections[using]
    with connection.cursor() as cursor:
        triggers.install(cursor, connection.vendor)
