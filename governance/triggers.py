"""Database triggers that make the audit table append-only, on PostgreSQL and SQLite.

They refuse UPDATE and DELETE of audit rows even through raw SQL (and, on PostgreSQL, TRUNCATE of a non-empty
table). A database superuser can still disable triggers; ``verify_audit`` detects what such a bypass changed.
"""

TABLE = "governance_auditevent"
MESSAGE = "audit events are append-only"

POSTGRESQL_INSTALL = [
    f"""
    CREATE OR REPLACE FUNCTION {TABLE}_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'TRUNCATE' AND NOT EXISTS (SELECT 1 FROM {TABLE}) THEN
            RETURN NULL;
        END IF;
        RAISE EXCEPTION '{MESSAGE}: % on {TABLE} refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END
    $$
    """,
    f"""
    CREATE TRIGGER {TABLE}_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse_change()
    """,
    f"""
    CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse_change()
    """,
]
POSTGRESQL_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS {TABLE}_no_update_delete ON {TABLE}",
    f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE}",
    f"DROP FUNCTION IF EXISTS {TABLE}_refuse_change()",
]

SQLITE_INSTALL = [
    f"""
    CREATE TRIGGER {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: {op} on {TABLE} refused'); END
    """
    for op in ("UPDATE", "DELETE")
]
SQLITE_UNINSTALL = [f"DROP TRIGGER IF EXISTS {TABLE}_no_{op} " for op in ("update", "delete")]

STATEMENTS = {
    "postgresql": (POSTGRESQL_INSTALL, POSTGRESQL_UNINSTALL),
    "sqlite": (SQLITE_INSTALL, SQLITE_UNINSTALL),
}


def _statements(vendor: str, index: int) -> list[str]:
    try:
        return STATEMENTS[vendor][index]
    except KeyError:
        raise NotImplementedError(f"no audit triggers for database vendor {vendor!r}") from None


def install(cursor, vendor: str) -> None:
    for statement in _statements(vendor, 0):
        cursor.execute(statement)


def uninstall(cursor, vendor: str) -> None:
    for statement in _statements(vendor, 1):
        cursor.execute(statement)
