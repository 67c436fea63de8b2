"""Shared fixtures: the firm's personas and database helpers.

Personas, relative to ``alice_account`` (a director account):
- ``owner``: alice, director of her own account and of the company account;
- ``director``: bob, director of the company account and of his own account, not a member of alice's;
- ``viewer``: carol, viewer of alice's account;
- ``outsider``: dave, staff with a viewer membership in bob's account only.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from django.db import connection

from accounts.models import Account, User
from accounts.roles import Role
from governance import triggers
from tests.factories import AccountFactory, MembershipFactory, UserFactory

pytest_plugins = ["tests.fakes.fixtures"]


@pytest.fixture(autouse=True)
def fast_password_hashing(settings):
    """PBKDF2's deliberate slowness is for real passwords; tests only need hashing to work."""
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture(autouse=True)
def private_files_and_locks(settings, tmp_path_factory):
    """Kraken private-call lock files and the local credential store go to per-test folders (never the
    developer's var/), and the lock's own PostgreSQL connections are closed after each test so the test
    database can be dropped."""
    scratch = tmp_path_factory.mktemp("private")
    settings.KRAKEN_LOCK_DIR = str(scratch / "locks")
    settings.KRAKEN_CREDENTIALS_DIR = str(scratch / "credentials")
    settings.KRAKEN_CREDENTIALS_DEV_KEY_FILE = scratch / "dev-kraken-credentials.key"
    yield
    from trading.brokers.private_lock import close_lock_connections

    close_lock_connections()


@pytest.fixture(autouse=True)
def celery_sent(monkeypatch) -> list[tuple[str, tuple, dict]]:
    """No test publishes a Celery message: the embedded broker is a folder of the developer's machine (a
    worker there would run the message against another database) and does not exist in CI. Every
    ``delay`` / ``apply_async`` is recorded here instead, as ``(task name, args, options)``; a test that
    wants the task to run calls it itself."""
    from celery.app.task import Task

    sent: list[tuple[str, tuple, dict]] = []

    def record(self, args=None, kwargs=None, **options):
        sent.append((self.name, tuple(args or ()), dict(kwargs or {}) | options))

    monkeypatch.setattr(Task, "apply_async", record)
    return sent


def is_postgresql() -> bool:
    return connection.vendor == "postgresql"


def pytest_collection_modifyitems(config, items):
    skip_pg = pytest.mark.skip(reason="needs PostgreSQL: set DATABASE_URL=postgres://… (CI does)")
    if connection.settings_dict["ENGINE"].endswith("postgresql"):
        return
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip_pg)


@dataclass
class Firm:
    company: Account
    alice_account: Account
    bob_account: Account
    owner: User
    director: User
    viewer: User
    outsider: User
    superuser: User


@pytest.fixture
def firm(db) -> Firm:
    company = AccountFactory(name="Firm", slug="firm", kind=Account.Kind.COMPANY)
    alice_account = AccountFactory(name="Alice", slug="alice")
    bob_account = AccountFactory(name="Bob", slug="bob")
    owner = UserFactory(username="alice")
    director = UserFactory(username="bob")
    viewer = UserFactory(username="carol")
    outsider = UserFactory(username="dave")
    for user, account, role in [
        (owner, company, Role.DIRECTOR),
        (owner, alice_account, Role.DIRECTOR),
        (director, company, Role.DIRECTOR),
        (director, bob_account, Role.DIRECTOR),
        (viewer, alice_account, Role.VIEWER),
        (outsider, bob_account, Role.VIEWER),
    ]:
        MembershipFactory(user=user, account=account, role=role)
    superuser = UserFactory(username="root", is_superuser=True)
    return Firm(company, alice_account, bob_account, owner, director, viewer, outsider, superuser)


def purge_audit_table() -> None:
    """Empty the append-only audit table between transactional tests (test-only: lifts the triggers
    for the duration of the DELETE)."""
    vendor = connection.vendor
    with connection.cursor() as cursor:
        triggers.uninstall(cursor, vendor)
        cursor.execute(f"DELETE FROM {triggers.TABLE}")
        triggers.install(cursor, vendor)


@pytest.fixture
def audit_transactional_db(transactional_db):
    """``transactional_db`` whose teardown can flush: the audit table is emptied first."""
    yield
    purge_audit_table()


def tamper_bypassing_triggers(sql: str, params=()) -> None:
    """Run ``sql`` against the audit table the way a database superuser could: triggers disabled."""
    vendor = connection.vendor
    with connection.cursor() as cursor:
        if vendor == "postgresql":
            # Django's foreign keys are deferred; their pending checks would block ALTER TABLE.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute(f"ALTER TABLE {triggers.TABLE} DISABLE TRIGGER USER")
            cursor.execute(sql, params)
            cursor.execute(f"ALTER TABLE {triggers.TABLE} ENABLE TRIGGER USER")
        else:
            triggers.uninstall(cursor, vendor)
            cursor.execute(sql, params)
            triggers.install(cursor, vendor)


@pytest.fixture
def universe(db):
    """BTC/USD, ETH/USD and SOL/USD from the committed AssetPairs snapshot, keyed by symbol."""
    return load_snapshot_universe()


def load_snapshot_universe() -> dict:
    """What ``manage.py sync_universe --from-file`` loads (the operator's offline path), keyed by symbol."""
    from io import StringIO

    from django.core.management import call_command

    from trading.models import Instrument

    call_command("sync_universe", "--from-file", stdout=StringIO())
    return {instrument.symbol: instrument for instrument in Instrument.objects.all()}
