"""One key, one nonce stream: every private Kraken call of one account runs under :func:`private_calls`.

Kraken refuses a private request whose nonce is not greater than the last one it saw for the key
(``EAPI:Invalid nonce``). With several workers sharing an account's key, each request must take its nonce
*and reach Kraken* before any other process takes the next one. So all private calls of one account are
serialised across processes, and the nonce is drawn inside that lock from a counter kept beside it:
``nonce = max(now_ms, last_nonce + 1)``, so it keeps increasing even if the clock steps back.

The backend follows the deployment, never silently downgrading:

* ``settings.REDIS_URL`` set (the scaled-out deployment): a redis-py lock on
  ``aether:kraken-private:lock:<account>`` with an expiry (``KRAKEN_PRIVATE_LOCK_TTL_SECONDS``, so a
  crashed holder cannot block the account forever) and a bounded wait (``KRAKEN_PRIVATE_LOCK_WAIT_SECONDS``);
  the last nonce lives in ``aether:kraken-private:nonce:<account>``, advanced by one atomic Lua script.
  Redis unreachable is :class:`PrivateLockUnavailable`, not a fallback to another lock.
* else PostgreSQL: a session-level ``pg_advisory_lock(<class>, <account>)`` taken on a connection of its
  own (one per thread, autocommit), so it is independent of the caller's transaction and released by the
  server if the process dies; waiting is bounded by ``lock_timeout``. The last nonce lives in the table
  ``aether_kraken_nonce`` (created on first use; it is not a Django model, nothing else reads it).
* else (embedded SQLite, one machine): an ``fcntl.flock`` on ``KRAKEN_LOCK_DIR/kraken-private-<account>.lock``
  (``var/locks`` by default); the file holds the last nonce.

Inside one process a per-account ``threading.Lock`` is taken first, so threads queue locally instead of
polling the shared backend. The lock is re-entrant per thread: a private call made while the thread
already holds its account's lock (e.g. a lookup inside a submission) simply joins it.

ccxt asks for the nonce in ``sign()``, once per request (see ``trading.brokers.kraken.private_client``,
whose client overrides ``nonce()`` with :func:`next_nonce`). :func:`next_nonce` refuses to run outside
``private_calls`` for that account: a private request can only be signed under the lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from django.conf import settings
from django.db import DEFAULT_DB_ALIAS, connections

logger = logging.getLogger(__name__)

#: First key of the two-int advisory lock: 'AEKR' as a signed 32-bit integer (the second is the account).
PG_LOCK_CLASS = int.from_bytes(b"AEKR", "big", signed=True)
PG_NONCE_TABLE = "aether_kraken_nonce"
REDIS_LOCK_KEY = "aether:kraken-private:lock:{account_id}"
REDIS_NONCE_KEY = "aether:kraken-private:nonce:{account_id}"
_PG_ADVANCE_SQL = (
    "INSERT INTO aether_kraken_nonce (account_id, last_nonce) VALUES (%s, %s) "
    "ON CONFLICT (account_id) DO UPDATE SET "
    "last_nonce = GREATEST(EXCLUDED.last_nonce, aether_kraken_nonce.last_nonce + 1) RETURNING last_nonce"
)
_NONCE_WIDTH = 20  # digits in the lock file (a fixed width: the counter is rewritten in place)

_REDIS_NEXT_NONCE = """
local last = tonumber(redis.call('GET', KEYS[1]) or '0')
local nonce = tonumber(ARGV[1])
if nonce <= last then nonce = last + 1 end
redis.call('SET', KEYS[1], string.format('%d', nonce))
return nonce
"""


class PrivateLockError(RuntimeError):
    """The account's private-call lock could not be used; nothing was sent to Kraken."""


class PrivateLockUnavailable(PrivateLockError):
    """The lock's backend (Redis, PostgreSQL, the lock directory) cannot be reached."""


class PrivateLockTimeout(PrivateLockError):
    """Another holder kept the account's lock longer than the wait allows."""


class PrivateLockNotHeld(PrivateLockError):
    """A nonce was asked for outside ``private_calls`` of that account: a programming error."""


def now_ms() -> int:
    """Wall-clock milliseconds (a module function so tests can step the clock back)."""
    return time.time_ns() // 1_000_000


@dataclass
class PrivateCalls:
    """The held lock of one account; hands out its nonces."""

    account_id: int
    backend: str  # "redis" | "postgresql" | "file"
    _advance: Callable[[int], int]
    last_nonce: int = 0

    def next_nonce(self) -> int:
        self.last_nonce = self._advance(now_ms())
        return self.last_nonce


_local = threading.local()
_thread_locks: dict[int, threading.Lock] = {}
_thread_locks_guard = threading.Lock()


def _held() -> dict[int, PrivateCalls]:
    held = getattr(_local, "held", None)
    if held is None:
        held = _local.held = {}
    return held


def _thread_lock(account_id: int) -> threading.Lock:
    with _thread_locks_guard:
        return _thread_locks.setdefault(account_id, threading.Lock())


def backend_name() -> str:
    """Which backend :func:`private_calls` uses with the current settings."""
    if settings.REDIS_URL:
        return "redis"
    if connections[DEFAULT_DB_ALIAS].vendor == "postgresql":
        return "postgresql"
    return "file"


@contextlib.contextmanager
def private_calls(account_id: int) -> Iterator[PrivateCalls]:
    """Hold account ``account_id``'s private-call lock for the block (see the module docstring).

    Raises :class:`PrivateLockTimeout` when the lock is not free within ``KRAKEN_PRIVATE_LOCK_WAIT_SECONDS``
    and :class:`PrivateLockUnavailable` when its backend cannot be reached."""
    if not isinstance(account_id, int) or isinstance(account_id, bool) or not 0 < account_id < 2**31:
        raise ValueError(f"account_id must be a positive 32-bit integer, got {account_id!r}")
    held = _held()
    if account_id in held:  # re-entrant within one thread
        yield held[account_id]
        return
    wait = float(settings.KRAKEN_PRIVATE_LOCK_WAIT_SECONDS)
    local_lock = _thread_lock(account_id)
    started = time.monotonic()
    if not local_lock.acquire(timeout=wait):
        raise PrivateLockTimeout(
            f"account {account_id}: another thread of this process held the Kraken private-call lock "
            f"for more than {wait:g} s"
        )
    try:
        remaining = max(0.001, wait - (time.monotonic() - started))
        name = backend_name()
        holder = {"redis": _redis_lock, "postgresql": _pg_lock, "file": _file_lock}[name]
        with holder(account_id, remaining) as advance:
            session = PrivateCalls(account_id, name, advance)
            held[account_id] = session
            try:
                yield session
            finally:
                del held[account_id]
    finally:
        local_lock.release()


def next_nonce(account_id: int) -> int:
    """The next nonce of ``account_id``'s stream; only inside ``private_calls(account_id)`` in this thread."""
    session = _held().get(account_id)
    if session is None:
        raise PrivateLockNotHeld(
            f"a private Kraken request for account {account_id} was signed outside "
            f"private_calls({account_id}): wrap the call in the account's lock"
        )
    return session.next_nonce()


# ------------------------------------------------------------------------------------------------ Redis

_redis_clients: dict[str, object] = {}
_redis_guard = threading.Lock()


def _redis_client():
    import redis  # a declared dependency; imported here so embedded mode never loads it

    url = settings.REDIS_URL
    with _redis_guard:
        client = _redis_clients.get(url)
        if client is None:
            timeout = settings.REDIS_TIMEOUT_SECONDS
            client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
            _redis_clients[url] = client
    return client


def _redis_unreachable(account_id: int, exc: BaseException) -> PrivateLockUnavailable:
    from aether_site.redaction import redact_url

    return PrivateLockUnavailable(
        f"Redis at {redact_url(settings.REDIS_URL)} is unreachable, so the Kraken private calls of account "
        f"{account_id} cannot be serialised; nothing was sent ({type(exc).__name__}: {exc}). "
        "Start Redis or fix REDIS_URL."
    )


@contextlib.contextmanager
def _redis_lock(account_id: int, wait: float) -> Iterator[Callable[[int], int]]:
    import redis

    client = _redis_client()
    lock = client.lock(
        REDIS_LOCK_KEY.format(account_id=account_id),
        timeout=settings.KRAKEN_PRIVATE_LOCK_TTL_SECONDS,
        sleep=0.005,
        blocking_timeout=wait,
    )
    try:
        acquired = lock.acquire()
    except (redis.ConnectionError, redis.TimeoutError) as exc:
        raise _redis_unreachable(account_id, exc) from exc
    if not acquired:
        raise PrivateLockTimeout(
            f"account {account_id}: the Kraken private-call lock in Redis was held by another process "
            f"for more than {wait:g} s"
        )
    script = client.register_script(_REDIS_NEXT_NONCE)
    nonce_key = REDIS_NONCE_KEY.format(account_id=account_id)

    def advance(now: int) -> int:
        try:
            return int(script(keys=[nonce_key], args=[now]))
        except (redis.ConnectionError, redis.TimeoutError) as exc:
            raise _redis_unreachable(account_id, exc) from exc

    try:
        yield advance
    finally:
        try:
            lock.release()
        except redis.exceptions.LockNotOwnedError:
            logger.warning(
                "account %s: the Kraken private-call lock expired while held (over %s s); "
                "raise KRAKEN_PRIVATE_LOCK_TTL_SECONDS",
                account_id,
                settings.KRAKEN_PRIVATE_LOCK_TTL_SECONDS,
            )
        except (redis.ConnectionError, redis.TimeoutError):
            logger.warning("account %s: Redis unreachable releasing the private-call lock", account_id)


# ------------------------------------------------------------------------------------------- PostgreSQL

_pg_table_ready: set[str] = set()
_pg_wrappers: weakref.WeakSet = weakref.WeakSet()
_pg_busy: set[int] = set()  # ids of wrappers holding an advisory lock right now
_pg_busy_guard = threading.Lock()


def _pg_connection():
    """This thread's dedicated connection for advisory locks (not Django's: its transactions are the
    caller's, and a rolled-back transaction must not roll a nonce back). Kept for the thread's life:
    connecting costs more than the lock; :func:`close_lock_connections` closes them all."""
    wrapper = getattr(_local, "pg", None)
    raw = None if wrapper is None else wrapper.connection
    if raw is None or getattr(raw, "closed", False) or getattr(raw, "broken", False):
        if wrapper is not None:
            _close_quietly(wrapper)
        wrapper = connections.create_connection(DEFAULT_DB_ALIAS)
        wrapper.inc_thread_sharing()  # so close_lock_connections() may close it from another thread
        _local.pg = wrapper
        _pg_wrappers.add(wrapper)
    return wrapper


def _close_quietly(wrapper) -> None:
    with contextlib.suppress(Exception):
        wrapper.close()


def _drop_pg_connection() -> None:
    wrapper = getattr(_local, "pg", None)
    _local.pg = None
    if wrapper is not None:
        _close_quietly(wrapper)


def close_lock_connections() -> None:
    """Close every thread's dedicated lock connection (idle ones; a thread holding a lock keeps it).
    Call before dropping the database, e.g. at the end of a test."""
    with _pg_busy_guard:
        for wrapper in list(_pg_wrappers):
            if id(wrapper) not in _pg_busy:
                _close_quietly(wrapper)


def _ensure_pg_table(cursor, database: str) -> None:
    if database in _pg_table_ready:
        return
    cursor.execute("BEGIN")
    try:
        cursor.execute("SELECT pg_advisory_xact_lock(%s, 0)", [PG_LOCK_CLASS])
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {PG_NONCE_TABLE} "
            "(account_id bigint PRIMARY KEY, last_nonce bigint NOT NULL)"
        )
        cursor.execute("COMMIT")
    except BaseException:
        cursor.execute("ROLLBACK")
        raise
    _pg_table_ready.add(database)


@contextlib.contextmanager
def _pg_lock(account_id: int, wait: float) -> Iterator[Callable[[int], int]]:
    with _pg_busy_guard:
        wrapper = _pg_connection()
        _pg_busy.add(id(wrapper))
    try:
        with _pg_advisory_lock(wrapper, account_id, wait) as advance:
            yield advance
    finally:
        with _pg_busy_guard:
            _pg_busy.discard(id(wrapper))


@contextlib.contextmanager
def _pg_advisory_lock(wrapper, account_id: int, wait: float) -> Iterator[Callable[[int], int]]:
    from django.db import Error

    database = str(wrapper.settings_dict["NAME"])
    try:
        cursor = wrapper.cursor()
        cursor.execute("SELECT set_config('lock_timeout', %s, false)", [f"{max(1, int(wait * 1000))}ms"])
        _ensure_pg_table(cursor, database)
        cursor.execute("SELECT pg_advisory_lock(%s, %s)", [PG_LOCK_CLASS, account_id])
    except Error as exc:  # a dropped connection is reconnected on the next call
        _drop_pg_connection()
        if getattr(getattr(exc, "__cause__", None), "sqlstate", None) == "55P03":  # lock_not_available
            raise PrivateLockTimeout(
                f"account {account_id}: the Kraken private-call advisory lock was held by another "
                f"process for more than {wait:g} s"
            ) from exc
        raise PrivateLockUnavailable(
            f"PostgreSQL unreachable, so the Kraken private calls of account {account_id} cannot be "
            f"serialised; nothing was sent ({type(exc).__name__}: {exc})"
        ) from exc

    def advance(now: int) -> int:
        try:
            cursor.execute(
                _PG_ADVANCE_SQL,
                [account_id, now],
            )
            return int(cursor.fetchone()[0])
        except Error as exc:
            raise PrivateLockUnavailable(
                f"account {account_id}: the nonce counter in PostgreSQL could not be advanced ({exc})"
            ) from exc

    try:
        yield advance
    finally:
        try:
            cursor.execute("SELECT pg_advisory_unlock(%s, %s)", [PG_LOCK_CLASS, account_id])
            cursor.close()
        except Error:
            _drop_pg_connection()  # closing the session releases its advisory locks


# ------------------------------------------------------------------------------------------------- file


def lock_path(account_id: int) -> Path:
    return Path(settings.KRAKEN_LOCK_DIR) / f"kraken-private-{account_id}.lock"


@contextlib.contextmanager
def _file_lock(account_id: int, wait: float) -> Iterator[Callable[[int], int]]:
    path = lock_path(account_id)
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    except OSError as exc:
        raise PrivateLockUnavailable(
            f"cannot open the Kraken private-call lock file {path} of account {account_id} ({exc.strerror}); "
            "check KRAKEN_LOCK_DIR"
        ) from exc
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise PrivateLockTimeout(
                        f"account {account_id}: {path} was locked by another process for more than {wait:g} s"
                    ) from None
                time.sleep(0.001)

        def advance(now: int) -> int:
            raw = os.pread(descriptor, _NONCE_WIDTH, 0).strip()
            last = int(raw) if raw.isdigit() else 0
            nonce = max(now, last + 1)
            os.pwrite(descriptor, str(nonce).zfill(_NONCE_WIDTH).encode(), 0)
            return nonce

        yield advance
    finally:
        os.close(descriptor)  # closing releases the lock
