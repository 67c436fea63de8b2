"""End to end: the autonomous trading loop on a real Celery worker and beat, Redis and PostgreSQL.

Three simulated accounts (the company and two directors) replay Kraken's hourly BTC/USD and ETH/USD bars
(``shared/data/market/kraken`` beside the repository). Each closed bar is stored by the feed's own service
(``feed_bars_store``, source ``replay``), which queues ``trading.bar_closed`` once it commits, and the pairs'
feed status is touched as the feed does; a real worker runs the strategy cycles; a real beat
(django-celery-beat's DatabaseScheduler, schedule installed with ``install_beat_schedule``) sweeps for missed
cycles, marks NAV, evaluates hedges and reconciles. Halfway through, the worker's process group is SIGKILLed
while a cycle runs, and the worker is started again.

What is replayed: two weeks from 2022-10-24 (336 hours x 2 pairs x 3 accounts = 2,016 cycles; about
2.5 minutes on this 2-core machine when it is otherwise quiet). The window holds a rally in both pairs, so
the rule-based strategy (no champion model exists) enters and exits. The 400 bars before it are stored first
as history (the features need ``INFERENCE_BARS``).

The platform runs on its production clock (``AETHER_MARKET_DATA=live``: the wall clock), as CI should test
it, with the bars relabelled in time (order, spacing and prices kept) so that the first replayed bar opens at
the current hour: cycles judge a bar's age and leases expire on that clock. The replay is paced like a live
feed: the next hour is stored once every cycle of the current one finished.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from itertools import pairwise
from pathlib import Path

import pytest
from celery import current_app
from celery.app.task import Task
from django.core.management import call_command
from django.db import connection
from django.utils import timezone

from governance.actors import SystemActor
from governance.models import AuditEvent
from learning.inference import INFERENCE_BARS
from risk.models import NavSnapshot
from tests.e2e import processes
from trading.marketdata.replay import rows_from_ohlcvt_csv
from trading.models import Candle, Cycle, CycleStatus, Fill, Order
from trading.services import candles_upsert, feed_bars_store
from trading.services.market import feed_status_touch, feed_statuses_prepare
from trading.services.orders import sim_balance_set

#: The real ``Task.apply_async``, taken at import (collection), before the autouse ``celery_sent`` fixture
#: of tests/conftest.py replaces it with a recorder for the test's duration.
PUBLISH = Task.apply_async

DATA_DIR = processes.REPO_ROOT.parent / "shared" / "data" / "market" / "kraken"
FILES = {"BTC/USD": DATA_DIR / "XBTUSD_60.csv", "ETH/USD": DATA_DIR / "ETHUSD_60.csv"}
WINDOW_START = datetime(2022, 10, 24, tzinfo=UTC)
#: Two weeks, as the issue asks.
WINDOW_HOURS = 14 * 24
HISTORY_BARS = 400
assert HISTORY_BARS >= INFERENCE_BARS
FUNDING = Decimal("100000")
#: Settings of the worker and beat (and of the schedule this test installs): a short lease so a cycle the
#: killed worker left running is resumed quickly, and a frequent sweep, NAV snapshot and reconciliation.
FAST = {
    "CYCLE_LEASE_SECONDS": 15,
    "CYCLE_BUSY_RETRY_SECONDS": 1,
    "CYCLE_SWEEP_EVERY_SECONDS": 5,
    "NAV_SNAPSHOT_EVERY_SECONDS": 10,
    "RECONCILE_EVERY_SECONDS": 30,
}
PAIRS = ["BTC/USD", "ETH/USD"]
FINISHED = [CycleStatus.DONE, CycleStatus.SKIPPED]
LOG_TAIL = 400
CYCLE_ID = re.compile(r"^cy(?P<cycle>\d+)-(?P<leg>\d+)$")

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.timeout(900)]


def _requirements() -> str | None:
    from django.conf import settings

    if connection.vendor != "postgresql":
        return "needs PostgreSQL: worker and beat are separate processes sharing the database (DATABASE_URL)"
    if not settings.REDIS_URL:
        return "needs Redis: set REDIS_URL (the Celery broker of the worker, beat and this test)"
    missing = [str(path) for path in FILES.values() if not path.exists()]
    if missing:
        return f"needs Kraken's hourly files: {', '.join(missing)}"
    return None


@pytest.fixture
def requirements():
    reason = _requirements()
    if reason:
        pytest.skip(reason)


def _relabelled_bars(now: datetime) -> dict[str, tuple[list, list]]:
    """symbol → (history rows, replay rows): the window and the bars before it, moved in time so that the
    first replayed bar opens at the current hour (see the module docstring)."""
    first = now.replace(minute=0, second=0, microsecond=0)
    shift = first - WINDOW_START
    end = WINDOW_START + timedelta(hours=WINDOW_HOURS)
    bars = {}
    for symbol, path in FILES.items():
        rows = rows_from_ohlcvt_csv(path, timeframe=60)
        history = [row for row in rows if row.open_time < WINDOW_START][-HISTORY_BARS:]
        window = [row for row in rows if WINDOW_START <= row.open_time < end]
        assert len(history) == HISTORY_BARS, (symbol, len(history))
        assert len(window) >= WINDOW_HOURS - 6, (symbol, len(window))  # Kraken's files have rare gaps
        bars[symbol] = (
            [replace(row, open_time=row.open_time + shift) for row in history],
            [replace(row, open_time=row.open_time + shift) for row in window],
        )
    return bars


@pytest.fixture
def platform(requirements, audit_transactional_db, firm, universe, fake_kraken, settings, monkeypatch):
    """Accounts funded, history stored, the beat schedule installed; worker and beat running.

    The autouse ``celery_sent`` fixture (tests/conftest.py) records ``apply_async`` instead of publishing,
    because most tests have no broker. This test has one and needs the feed's ``bar_closed`` messages to reach
    the worker, so the real ``apply_async`` is put back for its duration (monkeypatch restores the recorder,
    then the original, at teardown)."""
    monkeypatch.setattr(Task, "apply_async", PUBLISH)
    broker = settings.REDIS_URL
    assert current_app.conf.broker_url == broker, "this process must publish to the worker's broker"
    import redis

    # The test owns REDIS_URL's database: no message of an earlier run may reach this worker.
    redis.Redis.from_url(broker).flushdb()

    for name, value in FAST.items():
        setattr(settings, name, value)
    settings.AETHER_PAIRS = PAIRS
    settings.AETHER_MARKET_DATA = "live"  # the wall clock (trading.clock), as in production
    instruments = {symbol: universe[symbol] for symbol in PAIRS}
    accounts = [firm.company, firm.alice_account, firm.bob_account]
    funder = SystemActor("e2e_funding")
    for account in accounts:
        assert account.simulation_mode, account.slug
        sim_balance_set(account=account, asset="USD", amount=FUNDING, actor=funder, reason="e2e funding")
    bars = _relabelled_bars(timezone.now())
    # Outside pytest's rotating tmp folders: kept (and named) when the test fails, removed when it passes.
    scratch = Path(tempfile.mkdtemp(prefix="aether-e2e-"))
    for symbol, (history, _) in bars.items():
        candles_upsert(
            instrument=instruments[symbol], timeframe=60, rows=history, source=Candle.Source.REPLAY
        )
    feed_statuses_prepare(instruments=instruments.values())
    call_command("install_beat_schedule", stdout=StringIO())

    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DATABASE_", "REDIS_", "CELERY_", "KRAKEN_", "CYCLE_", "AETHER_"))
    }
    env |= {str(name): str(value) for name, value in FAST.items()}
    env |= {
        "DJANGO_SETTINGS_MODULE": "aether_site.settings",
        "AETHER_ENV": "development",
        "DATABASE_URL": processes.database_url(connection.settings_dict),
        "REDIS_URL": broker,
        "CELERY_BROKER_URL": broker,
        "KRAKEN_API_URL": fake_kraken.url,
        "KRAKEN_LOCK_DIR": str(scratch / "locks"),
        "KRAKEN_CREDENTIALS_DIR": str(scratch / "credentials"),
        "LEARNING_ARTIFACT_ROOT": str(scratch / "models"),
        "AETHER_PAIRS": ",".join(PAIRS),
        "AETHER_MARKET_DATA": "live",
        "AETHER_TIMEFRAME": "60",
        "PYTHONUNBUFFERED": "1",
    }
    worker = processes.worker(env, scratch)
    beat = processes.beat(env, scratch)
    stack = Stack(
        worker=worker, beat=beat, accounts=accounts, instruments=instruments, bars=bars, fake=fake_kraken
    )
    try:
        worker.start()
        beat.start()
        worker.wait_for_log(" ready.", timeout=60)
        yield stack
    finally:
        for process in (beat, worker):
            process.stop()
        redis.Redis.from_url(broker).flushdb()
        if stack.passed:
            shutil.rmtree(scratch, ignore_errors=True)
        else:
            for process in (worker, beat):
                for log in process.logs:
                    lines = log.read_text(errors="replace").splitlines()
                    sys.stderr.write(f"\n===== {log} (last {LOG_TAIL} of {len(lines)} lines) =====\n")
                    sys.stderr.write("\n".join(lines[-LOG_TAIL:]) + "\n")


class Stack:
    def __init__(self, *, worker, beat, accounts, instruments, bars, fake) -> None:
        self.worker, self.beat, self.fake = worker, beat, fake
        self.accounts, self.instruments, self.bars = accounts, instruments, bars
        self.passed = False

    def alive(self) -> None:
        for process in (self.worker, self.beat):
            assert process.running, f"{process.name} exited with {process.popen.returncode}"

    def feed(self, opened: datetime, rows: dict[str, object]) -> None:
        """What the feed does for one hour's closed bars: store each (which queues ``bar_closed`` on commit)
        and touch the pair's feed status with the message time and last price."""
        now = timezone.now()
        for symbol, row in rows.items():
            feed_bars_store(
                instrument=self.instruments[symbol], timeframe=60, rows=[row], source=Candle.Source.REPLAY
            )
        feed_status_touch(seen={self.instruments[s].pk: (now, row.close) for s, row in rows.items()})

    def wait_finished(self, opened: datetime, expected: int, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            done = Cycle.objects.filter(bar_open_time=opened, status__in=FINISHED).count()
            if done >= expected:
                return
            self.alive()
            if time.monotonic() > deadline:
                states = list(
                    Cycle.objects.filter(bar_open_time=opened).values_list("account__slug", "status", "error")
                )
                raise AssertionError(f"{opened}: {done}/{expected} cycles finished in {timeout} s: {states}")
            time.sleep(0.05)

    def kill_while_running(self, opened: datetime) -> list[int]:
        """SIGKILL the worker's process group as soon as a cycle of the bar opened at ``opened`` is running;
        returns the ids of the cycles the kill interrupted ([] when they all finished before one was seen
        running). Those are read once the worker is dead: between the look and the kill, an account task
        may have finished the cycle seen and claimed its next pair's."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if Cycle.objects.filter(bar_open_time=opened, status=CycleStatus.RUNNING).exists():
                self.worker.kill()
                time.sleep(0.5)  # a commit the dead worker had sent is visible by then
                return list(Cycle.objects.filter(status=CycleStatus.RUNNING).values_list("pk", flat=True))
            if Cycle.objects.filter(bar_open_time=opened, status__in=FINISHED).count() >= 3 * len(PAIRS):
                return []
            time.sleep(0.002)
        return []


def test_three_accounts_trade_replayed_bars_on_a_real_worker_and_beat_and_survive_a_killed_worker(platform):
    stack = platform
    started = time.monotonic()
    hours: dict[datetime, dict[str, object]] = {}
    for symbol, (_, window) in stack.bars.items():
        for row in window:
            hours.setdefault(row.open_time, {})[symbol] = row
    ordered = sorted(hours)
    accounts = len(stack.accounts)
    killed: list[int] = []
    kill_at = len(ordered) // 2
    for index, opened in enumerate(ordered):
        stack.feed(opened, hours[opened])
        if index >= kill_at and not killed:
            killed = stack.kill_while_running(opened)
            if not stack.worker.running:  # killed (if it interrupted nothing, a later bar tries again)
                stack.worker.start()
                stack.worker.wait_for_log(" ready.", timeout=60)
                # the killed cycles are resumed once their lease lapses (CYCLE_LEASE_SECONDS), queued again by
                # beat's sweep of the newest bar
                stack.wait_finished(opened, accounts * len(hours[opened]), timeout=120)
                continue
        stack.wait_finished(opened, accounts * len(hours[opened]), timeout=60)
    replayed = time.monotonic() - started
    assert killed, "the worker was never caught with a cycle running, so the kill was not exercised"

    cycles = list(Cycle.objects.select_related("account", "instrument"))
    orders = list(Order.objects.all())
    fills = list(Fill.objects.select_related("order"))
    expected_cycles = accounts * sum(len(rows) for rows in hours.values())
    status_counts = Counter(cycle.status for cycle in cycles)
    sys.stdout.write(
        f"\ne2e: {len(ordered)} hours, {len(cycles)} cycles {dict(status_counts)}, {len(orders)} orders, "
        f"{len(fills)} fills in {replayed:.1f} s ({len(cycles) / replayed:.1f} cycles/s); "
        f"killed while running: {killed}\n"
    )

    # Every replayed bar's cycle exists once per account, and finished. Beat's sweep may also have run the
    # cycles of the newest history bar (the newest bar without a cycle when beat started): no other bar.
    replayed_keys = {(opened, symbol) for opened, rows in hours.items() for symbol in rows}
    on_replayed = [c for c in cycles if (c.bar_open_time, c.instrument.symbol) in replayed_keys]
    assert len(on_replayed) == expected_cycles
    last_history = {symbol: history[-1].open_time for symbol, (history, _) in stack.bars.items()}
    for cycle in cycles:
        if (cycle.bar_open_time, cycle.instrument.symbol) not in replayed_keys:
            assert cycle.bar_open_time == last_history[cycle.instrument.symbol], cycle
    assert set(status_counts) <= {CycleStatus.DONE, CycleStatus.SKIPPED}, status_counts

    # Cycles the kill left running were resumed after the restart and finished.
    for cycle in Cycle.objects.filter(pk__in=killed):
        assert cycle.status in (CycleStatus.DONE, CycleStatus.SKIPPED), (cycle.pk, cycle.status)
        assert cycle.attempts >= 2, (cycle.pk, cycle.attempts)

    # Trading happened, in simulation only.
    assert fills, "no simulated fill in the window: the strategy never traded"
    assert {order.broker for order in orders} == {"sim"}
    assert {cycle.broker for cycle in cycles} == {"sim"}

    # Each account has cycles, orders, fills and NAV snapshots, and only of its own.
    by_pk = {cycle.pk: cycle for cycle in cycles}
    for account in stack.accounts:
        assert any(cycle.account_id == account.pk for cycle in cycles), account.slug
        assert NavSnapshot.objects.filter(account=account).exists(), account.slug
        assert any(order.account_id == account.pk for order in orders), account.slug
        assert any(fill.account_id == account.pk for fill in fills), account.slug
    entries = Counter()
    for order in orders:
        match = CYCLE_ID.match(order.client_order_id)
        if match is None:
            continue  # an exit or a hedge: checked below through its fills and the audit
        cycle = by_pk[int(match["cycle"])]
        assert (order.account_id, order.instrument_id) == (cycle.account_id, cycle.instrument_id), order
        assert order.reason.startswith(f"cycle #{cycle.pk}:"), order.reason
        if order.side == "buy":
            entries[cycle.pk] += 1
    order_accounts = {order.pk: order.account_id for order in orders}
    for cycle in cycles:
        for record in cycle.decisions:
            if record.get("order_id"):
                assert order_accounts[record["order_id"]] == cycle.account_id, (cycle.pk, record)
    for fill in fills:
        assert (fill.account_id, fill.instrument_id, fill.broker) == (
            fill.order.account_id,
            fill.order.instrument_id,
            fill.order.broker,
        ), fill
    for event in AuditEvent.objects.filter(target_type="trading.order"):
        assert event.account_id == order_accounts[int(event.target_id)], event.seq

    # No duplicate orders, killed worker or not: at most one entry per cycle, and per account and pair no
    # second entry before something was sold (the strategies never add to an open position, so two buys in
    # a row would be one intent sent twice).
    assert [pk for pk, count in entries.items() if count > 1] == []
    sides: dict[tuple[int, int], list[str]] = {}
    for order in sorted(orders, key=lambda item: (item.created_at, item.pk)):
        if order.filled_quantity > 0:
            sides.setdefault((order.account_id, order.instrument_id), []).append(order.side)
    doubled = [key for key, run in sides.items() if any(a == b == "buy" for a, b in pairwise(run))]
    assert doubled == [], "an account bought a pair twice without selling in between"

    # Simulated accounts never reached Kraken's private API.
    assert stack.fake.requests(api="private") == []

    # The audit chain verifies (hashes, links, numbering, triggers).
    out = StringIO()
    call_command("verify_audit", stdout=out, stderr=StringIO())
    assert "intact" in out.getvalue()

    # Each cycle ran once: only those the kill interrupted needed a second attempt. A cycle that failed (and
    # was retried by its task or queued again by beat's sweep, which clears its error) shows here: a
    # deadlock or an out-of-order NAV is a defect even when the retry hides it. The worker logs (printed on
    # failure) name the error: look for "retry:" and "raised unexpected".
    rerun = sorted(
        (c.pk, c.account.slug, c.attempts) for c in cycles if c.attempts > 1 and c.pk not in killed
    )
    assert rerun == [], "cycles that had to run more than once although the kill did not interrupt them"
    stack.passed = True
