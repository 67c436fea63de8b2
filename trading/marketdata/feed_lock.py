"""One market feed at a time per database: two would record every stale/live change twice, fight over
FeedStatus, and spend Kraken's connection allowance twice as fast."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from django.db import connection

# pg_try_advisory_lock key: 'AETHFEED' as a signed 64-bit integer.
FEED_LOCK_KEY = int.from_bytes(b"AETHFEED", "big", signed=True)


class FeedAlreadyRunning(RuntimeError):
    pass


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive, non-blocking lock on ``path`` (created if missing), held until the block ends or the
    process dies."""
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise FeedAlreadyRunning(f"another market feed holds {path}") from None
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


@contextlib.contextmanager
def feed_instance_lock() -> Iterator[None]:
    """Held for the feed's lifetime: a session advisory lock on PostgreSQL (released if the process
    dies), a file lock beside the database file on SQLite."""
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s)", [FEED_LOCK_KEY])
            if not cursor.fetchone()[0]:
                raise FeedAlreadyRunning("another market feed holds this database's feed lock")
        try:
            yield
        finally:
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_unlock(%s)", [FEED_LOCK_KEY])
        return
    if connection.is_in_memory_db():
        yield  # a private in-memory database (tests): no other process can share it
        return
    with file_lock(Path(str(connection.settings_dict["NAME"])).with_suffix(".feed.lock")):
        yield
