"""One key, one nonce stream: the per-account private-call lock on each of its backends.

``file`` runs on SQLite (the embedded mode), ``postgresql`` with DATABASE_URL=postgres://…, ``redis`` with
REDIS_URL set; each backend is skipped, with the reason, where it is not the one in use."""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.db import connection

from trading.brokers import private_lock
from trading.brokers.private_lock import (
    PrivateLockNotHeld,
    PrivateLockTimeout,
    PrivateLockUnavailable,
    next_nonce,
    private_calls,
)

REPO_ROOT = Path(__file__).resolve().parents[2]

BACKENDS = [
    pytest.param("file", id="file"),
    pytest.param("postgresql", marks=pytest.mark.postgres, id="postgresql"),
    pytest.param("redis", marks=pytest.mark.redis, id="redis"),
]


@pytest.fixture(autouse=True)
def close_lock_connections():
    """The PostgreSQL lock keeps a connection per thread: close them so the test database can be dropped."""
    yield
    private_lock.close_lock_connections()


@pytest.fixture(params=BACKENDS)
def backend(request, settings, tmp_path, db):
    name = request.param
    settings.KRAKEN_LOCK_DIR = str(tmp_path / "locks")
    settings.KRAKEN_PRIVATE_LOCK_WAIT_SECONDS = 10
    if name == "redis":
        if not os.environ.get("REDIS_URL"):
            pytest.skip("needs REDIS_URL (CI sets it)")
        settings.REDIS_URL = os.environ["REDIS_URL"]
    else:
        settings.REDIS_URL = None
    if name == "file" and connection.vendor != "sqlite":
        pytest.skip("the file lock is the embedded (SQLite) backend")
    assert private_lock.backend_name() == name
    return name


@pytest.fixture
def account_id(backend):
    """A fresh account id: nonce counters outlive a test in Redis and in the PostgreSQL table."""
    account = random.randrange(10**6, 2**31)  # noqa: S311 - an id, not a secret
    yield account
    if backend == "redis":
        client = private_lock._redis_client()
        client.delete(
            private_lock.REDIS_NONCE_KEY.format(account_id=account),
            private_lock.REDIS_LOCK_KEY.format(account_id=account),
        )


def test_nonces_increase_even_when_the_clock_steps_back(backend, account_id, monkeypatch):
    clock = iter([5_000, 5_000, 4_000, 6_000, 1_000])
    monkeypatch.setattr(private_lock, "now_ms", lambda: next(clock))
    with private_calls(account_id) as held:
        assert held.backend == backend
        assert [next_nonce(account_id) for _ in range(4)] == [5_000, 5_001, 5_002, 6_000]
    with private_calls(account_id):  # the counter is kept by the backend, not by this block
        assert next_nonce(account_id) == 6_001


def test_a_nonce_outside_the_accounts_lock_is_refused(backend, account_id):
    with pytest.raises(PrivateLockNotHeld, match=f"outside private_calls\\({account_id}\\)"):
        next_nonce(account_id)
    with private_calls(account_id + 1), pytest.raises(PrivateLockNotHeld):
        next_nonce(account_id)


def test_the_lock_is_reentrant_within_one_thread(backend, account_id):
    with private_calls(account_id) as outer, private_calls(account_id) as inner:
        assert inner is outer
        first = next_nonce(account_id)
    with private_calls(account_id):
        assert next_nonce(account_id) > first


def test_threads_get_one_strictly_increasing_stream(backend, account_id):
    issued: list[int] = []

    def work() -> None:
        for _ in range(20):
            with private_calls(account_id):
                issued.append(next_nonce(account_id))  # appended in lock order

    threads = [threading.Thread(target=work) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(issued) == 120
    assert all(later > earlier for earlier, later in itertools.pairwise(issued))


@contextlib.contextmanager
def held_elsewhere(backend: str, account_id: int):
    """The account's lock held the way another process would hold it."""
    if backend == "file":
        path = private_lock.lock_path(account_id)
        path.parent.mkdir(parents=True, exist_ok=True)
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(descriptor)
    elif backend == "postgresql":
        import psycopg

        settings = connection.settings_dict
        other = psycopg.connect(
            dbname=settings["NAME"],
            user=settings["USER"],
            password=settings["PASSWORD"] or None,
            host=settings["HOST"],
            port=settings["PORT"] or 5432,
            autocommit=True,
        )
        other.execute("SELECT pg_advisory_lock(%s, %s)", [private_lock.PG_LOCK_CLASS, account_id])
        try:
            yield
        finally:
            other.close()
    else:
        import redis

        client = redis.Redis.from_url(os.environ["REDIS_URL"])
        lock = client.lock(private_lock.REDIS_LOCK_KEY.format(account_id=account_id), timeout=30)
        assert lock.acquire(blocking=False)
        try:
            yield
        finally:
            lock.release()
            client.close()


def test_a_lock_held_by_another_process_makes_us_wait_then_give_up(backend, account_id, settings):
    settings.KRAKEN_PRIVATE_LOCK_WAIT_SECONDS = 1
    with (
        held_elsewhere(backend, account_id),
        pytest.raises(PrivateLockTimeout, match=str(account_id)),
        private_calls(account_id),
    ):
        pytest.fail("entered a lock another process holds")
    with private_calls(account_id):  # free again once the other holder is gone
        assert next_nonce(account_id) > 0


def test_an_unreachable_redis_is_a_loud_error_without_the_password(settings, db):
    with socket_closed_port() as port:
        settings.REDIS_URL = f"redis://:hunter2@127.0.0.1:{port}/0"
        with pytest.raises(PrivateLockUnavailable, match="is unreachable") as raised, private_calls(5):
            pytest.fail("no lock without Redis")
    assert "hunter2" not in str(raised.value)
    assert "redis://:***@127.0.0.1" in str(raised.value)


@contextlib.contextmanager
def socket_closed_port():
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    yield port


# -------------------------------------------------------------------- two processes, one key, the fake

HAMMER = """
import os, sys, time
import django
django.setup()
import ccxt
from trading.brokers.kraken import KrakenKeys, private_client
from trading.brokers.private_lock import private_calls

account = int(os.environ["HAMMER_ACCOUNT"])
client = private_client(KrakenKeys(os.environ["HAMMER_KEY"], os.environ["HAMMER_SECRET"]), account_id=account)
go = os.environ["HAMMER_GO"]
open(go + ".ready." + str(os.getpid()), "w").close()
while not os.path.exists(go):
    time.sleep(0.005)
ok = refused = 0
for _ in range(int(os.environ["HAMMER_CALLS"])):
    with private_calls(account):
        try:
            client.privatePostBalance()
            ok += 1
        except ccxt.InvalidNonce:
            refused += 1
print(ok, refused)
"""


def child_database_url(tmp_path: Path) -> str:
    settings = connection.settings_dict
    if connection.vendor == "postgresql":
        password = f":{settings['PASSWORD']}" if settings["PASSWORD"] else ""
        return (
            f"postgres://{settings['USER']}{password}@{settings['HOST'] or '127.0.0.1'}:"
            f"{settings['PORT'] or 5432}/{settings['NAME']}"
        )
    return f"sqlite:///{tmp_path / 'child.sqlite3'}"  # the file lock needs no database


def test_two_processes_sharing_a_key_never_send_a_stale_nonce(
    backend, account_id, fake_kraken, settings, tmp_path
):
    creds = fake_kraken.add_account(balances={"ZUSD": "100"})
    go = tmp_path / "go"
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"REDIS_URL", "DATABASE_URL", "KRAKEN_LOCK_DIR", "KRAKEN_API_URL"}
    }
    env |= {
        "DJANGO_SETTINGS_MODULE": "aether_site.settings",
        "PYTHONPATH": str(REPO_ROOT),
        "DATABASE_URL": child_database_url(tmp_path),
        "KRAKEN_API_URL": fake_kraken.url,
        "KRAKEN_LOCK_DIR": settings.KRAKEN_LOCK_DIR,
        "HAMMER_ACCOUNT": str(account_id),
        "HAMMER_KEY": creds.api_key,
        "HAMMER_SECRET": creds.secret,
        "HAMMER_GO": str(go),
        "HAMMER_CALLS": "40",
    }
    if backend == "redis":
        env["REDIS_URL"] = settings.REDIS_URL
    children = [
        subprocess.Popen(
            [sys.executable, "-c", HAMMER],
            cwd=REPO_ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("go.ready.*"))) < len(children) and time.monotonic() < deadline:
        time.sleep(0.01)  # both ready (Django loaded): start them together
    go.write_text("go")
    outputs = [child.communicate(timeout=90) for child in children]
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err
        assert out.split() == ["40", "0"], err

    calls = fake_kraken.requests("Balance", api_key=creds.api_key)
    assert len(calls) == 80
    assert {c.outcome for c in calls} == {"ok"}
    nonces = [int(c.params["nonce"]) for c in calls]
    assert nonces == sorted(set(nonces))  # strictly increasing in the order the exchange received them
