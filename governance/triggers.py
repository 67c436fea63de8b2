"""Database triggers that make the audit table append-only, on PostgreSQL and SQLite.

They refuse UPDATE and DELETE of audit rows even through raw SQL; on PostgreSQL also TRUNCATE of a non-empty
table, and on SQLite an INSERT that collides with an existing row (``INSERT OR REPLACE`` would otherwise
delete the old row without firing the DELETE trigger). A database superuser can still disable or drop
triggers; ``verify_audit`` detects what such a bypass changed, and :func:`missing` tells whether any
trigger is absent (``/readyz`` and ``verify_audit`` report it; ``post_migrate`` reinstalls them, since
SQLite drops triggers whenever a migration rebuilds the table).

Installing is idempotent. Changing a statement here needs a migration that reinstalls the triggers.
"""

TABLE = "governance_auditevent"
MESSAGE = "audit events are append-only"

POSTGRESQL_TRIGGERS = (f"{TABLE}_no_update_delete", f"{TABLE}_no_truncate")
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
    CREATE OR REPLACE TRIGGER {TABLE}_no_update_delete BEFORE UPDATE OR DELETE ON {TABLE}
    FOR EACH ROW EXECUTE FUNCTION {TABLE}_refuse_change()
    """,
    f"""
    CREATE OR REPLACE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE}
    FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_refuse_change()
    """,
]
POSTGRESQL_UNINSTALL = [
    f"DROP TRIGGER IF EXISTS {TABLE}_no_update_delete ON {TABLE}",
    f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE}",
    f"DROP FUNCTION IF EXISTS {TABLE}_refuse_change()",
]
POSTGRESQL_PRESENT = (
    "SELECT tgname FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal AND tgenabled <> 'D'"
)

SQLITE_TRIGGERS = (f"{TABLE}_no_update", f"{TABLE}_no_delete", f"{TABLE}_no_replace")
SQLITE_INSTALL = [
    *(
        f"""
        CREATE TRIGGER IF NOT EXISTS {TABLE}_no_{op.lower()} BEFORE {op} ON {TABLE}
        BEGIN SELECT RAISE(ABORT, '{MESSAGE}: {op} on {TABLE} refused'); END
        """
        for op in ("UPDATE", "DELETE")
    ),
    f"""
    CREATE TRIGGER IF NOT EXISTS {TABLE}_no_replace BEFORE INSERT ON {TABLE}
    WHEN EXISTS (
        SELECT 1 FROM {TABLE}
        WHERE id = NEW.id OR seq = NEW.seq OR hash = NEW.hash OR prev_hash = NEW.prev_hash
    )
    BEGIN SELECT RAISE(ABORT, '{MESSAGE}: INSERT over an existing event on {TABLE} refused'); END
    """,
]
SQLITE_UNINSTALL = [f"DROP TRIGGER IF EXISTS {name}" for name in SQLITE_TRIGGERS]
SQLITE_PRESENT = "SELECT name FROM sqlite_master WHERE type = 'trigger' AND tbl_name = %s"

VENDORS = {
    "postgresql": (POSTGRESQL_INSTALL, POSTGRESQL_UNINSTALL, POSTGRESQL_PRESENT, POSTGRESQL_TRIGGERS),
    "sqlite": (SQLITE_INSTALL, SQLITE_UNINSTALL, SQLITE_PRESENT, SQLITE_TRIGGERS),
}


def _vendor(vendor: str) -> tuple:
    try:
        return VENDORS[vendor]
    except KeyError:
        raise NotImplementedError(f"no audit triggers for database vendor {vendor!r}") from None


def install(cursor, vendor: str) -> None:
    for statement in _vendor(vendor)[0]:
        cursor.execute(statement)


def uninstall(cursor, vendor: str) -> None:
    for statement in _vendor(vendor)[1]:
        cursor.execute(statement)


def missing(cursor, vendor: str) -> list[str]:
    """The names of audit triggers that are absent (or disabled, on PostgreSQL)."""
    _, _, present_sql, expected = _vendor(vendor)
    cursor.execute(present_sql, [TABLE])
    present = {row[0] for row in cursor.fetchall()}
    return [name for name in expected if name not in present]
