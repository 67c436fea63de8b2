"""Database helpers shared by services."""

from __future__ import annotations

from django.db import transaction


def advisory_xact_lock(*key: int) -> None:
    """Take a PostgreSQL transaction-scoped advisory lock (one bigint, or two ints), released at commit or
    rollback. On SQLite nothing is needed: transactions begin IMMEDIATE (see settings), so a writer already
    holds the database's write lock. Must run inside ``transaction.atomic()``."""
    connection = transaction.get_connection()
    if not connection.in_atomic_block:
        raise RuntimeError("advisory_xact_lock() must run inside transaction.atomic()")
    if connection.vendor == "postgresql":
        placeholders = ", ".join(["%s"] * len(key))
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT pg_advisory_xact_lock({placeholders})", list(key))
