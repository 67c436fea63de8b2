"""Which candle store this database gives: a TimescaleDB hypertable, or a plain indexed table.

The hypertable is made when the ``timescaledb`` extension is installed in the database (an operator runs
``CREATE EXTENSION timescaledb`` first, as it needs elevated rights): by migration ``trading.0002`` on a
first migrate, and by every later ``migrate`` (post_migrate) if the extension arrives afterwards. Anywhere
else the candle table is a plain table with its unique (instrument, timeframe, open time) index. Both are
reported (``migrate`` output, ``/readyz``), never an error. No TimescaleDB package is reachable on the
development machines, so the conversion itself has not been exercised there.
"""

from __future__ import annotations

TABLE = "trading_candle"


def timescale_installed(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'")
    return cursor.fetchone() is not None


def timescale_available(cursor) -> bool:
    cursor.execute("SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return cursor.fetchone() is not None


def is_hypertable(cursor) -> bool:
    cursor.execute("SELECT 1 FROM timescaledb_information.hypertables WHERE hypertable_name = %s", [TABLE])
    return cursor.fetchone() is not None


def candle_store_kind(connection) -> str:
    if connection.vendor != "postgresql":
        return f"plain indexed table ({connection.vendor})"
    with connection.cursor() as cursor:
        if timescale_installed(cursor):
            return (
                "TimescaleDB hypertable"
                if is_hypertable(cursor)
                else "plain indexed table (hypertable missing)"
            )
        if timescale_available(cursor):
            return (
                "plain indexed table (TimescaleDB available: CREATE EXTENSION timescaledb, "
                "then manage.py migrate)"
            )
        return "plain indexed table (TimescaleDB not installed)"


HYPERTABLE_SQL = [
    f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey",
    f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id, open_time)",  # Timescale: unique keys include the time column
    f"SELECT create_hypertable('{TABLE}', 'open_time', migrate_data => true, "
    "chunk_time_interval => INTERVAL '90 days')",
]


def ensure_hypertable(connection) -> bool:
    """Convert the candle table when TimescaleDB is installed and it is not a hypertable yet; True when
    it converted."""
    if connection.vendor != "postgresql":
        return False
    with connection.cursor() as cursor:
        if not timescale_installed(cursor) or is_hypertable(cursor):
            return False
        for statement in HYPERTABLE_SQL:
            cursor.execute(statement)
    return True


def report_candle_store_after_migrate(sender, using="default", verbosity=1, **kwargs) -> None:
    from django.db import connections

    connection = connections[using]
    if TABLE not in connection.introspection.table_names():
        return
    converted = ensure_hypertable(connection)
    if verbosity:
        print(f"candle store: {candle_store_kind(connection)}" + (" (converted now)" if converted else ""))  # noqa: T201
