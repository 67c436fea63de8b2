"""Which candle store this database gives: a TimescaleDB hypertable, or a plain indexed table.

The hypertable is made by migration ``trading.0002`` when the ``timescaledb`` extension is installed in the
database (an operator runs ``CREATE EXTENSION timescaledb`` first, as it needs elevated rights); anywhere
else the candle table is a plain table with its unique (instrument, timeframe, open time) index. Both are
reported, never an error.
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
            return "plain indexed table (TimescaleDB available: CREATE EXTENSION timescaledb, then migrate)"
        return "plain indexed table (TimescaleDB not installed)"


HYPERTABLE_SQL = [
    f"ALTER TABLE {TABLE} DROP CONSTRAINT {TABLE}_pkey",
    f"ALTER TABLE {TABLE} ADD PRIMARY KEY (id, open_time)",  # Timescale: unique keys include the time column
    f"SELECT create_hypertable('{TABLE}', 'open_time', migrate_data => true, "
    "chunk_time_interval => INTERVAL '90 days')",
]
