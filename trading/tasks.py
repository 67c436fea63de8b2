"""Thin Celery tasks of the trading app: ids in, one service call each."""

from __future__ import annotations

from celery import shared_task

from governance.actors import SystemActor


@shared_task(name="trading.reconcile_account", ignore_result=True)
def reconcile_account(account_id: int) -> str:
    """Reconcile one account's book with its broker (safe to repeat: it never resends an order)."""
    from accounts.models import Account
    from trading.services.reconcile import reconcile_account_books

    account = Account.objects.get(pk=account_id)
    reports = reconcile_account_books(account=account, actor=SystemActor("reconcile"))
    return "; ".join(report.summary() for report in reports)


@shared_task(name="trading.reconcile_all", ignore_result=True)
def reconcile_all() -> int:
    """Queue a reconciliation of every account."""
    from accounts.models import Account

    ids = list(Account.objects.values_list("pk", flat=True))
    for account_id in ids:
        reconcile_account.delay(account_id)
    return len(ids)


@shared_task(name="trading.bar_closed", ignore_result=True)
def bar_closed(instrument_id: int, bar_open_time: str) -> int:
    """A closed bar of ``AETHER_TIMEFRAME`` was stored (by the feed or a replay): match the resting simulated
    orders on it, then queue every account's strategy cycles for its open time (``trading.account_cycles``:
    one task per account runs every pair whose bar with that open time is closed, so the pairs of one
    account never wait on each other's lease). Returns how many tasks were queued: one per account, at
    once by the fan-out of the pair whose bar was written last once every traded pair's bar of that open
    time is stored (the others queue none), or after ``CYCLE_PAIRS_WAIT_SECONDS`` while some are not."""
    from datetime import datetime

    from django.conf import settings

    from accounts.models import Account
    from trading.models import Candle, Instrument
    from trading.quotes import candle_bar
    from trading.services.cycle import configured_instruments, pairs_wait_seconds
    from trading.services.orders import sim_orders_match_bar

    instrument = Instrument.objects.get(pk=instrument_id)
    opened = datetime.fromisoformat(bar_open_time)
    candle = Candle.objects.get(
        instrument=instrument, timeframe=settings.AETHER_TIMEFRAME, open_time=opened, closed=True
    )
    ids = list(Account.objects.order_by("pk").values_list("pk", flat=True))
    try:
        sim_orders_match_bar(instrument=instrument, bar=candle_bar(candle), actor=SystemActor("sim_broker"))
    finally:  # a matching failure (raised, and logged by Celery) never costs the bar its cycles
        # Every traded pair's bar of this open time closes at once, each stored (and fanned out) on its
        # own. Once all are stored, the fan-out of the one written last queues the accounts' tasks at
        # once and the others queue nothing (beat's sweep is the net); while some are missing, each
        # queues them after CYCLE_PAIRS_WAIT_SECONDS, in case a pair's bar never comes (they find their
        # cycles done when it did). So one task per account runs the bar's pairs together instead of
        # three meeting each other's lease.
        traded = configured_instruments()
        written = sorted(
            Candle.objects.filter(
                instrument__in=traded, timeframe=settings.AETHER_TIMEFRAME, open_time=opened, closed=True
            ).values_list("updated_at", "instrument_id")
        )
        complete = len(written) >= len(traded)
        if complete and written[-1][1] != instrument_id:
            ids = []  # another pair's fan-out queues them (a return here would swallow a matching error)
        countdown = None if complete else pairs_wait_seconds()
        for account_id in ids:
            account_cycles.apply_async((account_id, bar_open_time), countdown=countdown)
    return len(ids)


#: A busy account (another of its cycles holds the lease) is retried this many times before the task gives
#: up loudly; beat's sweep queues the cycle again if it is still the newest bar.
CYCLE_BUSY_RETRIES = 60
#: Transient failures (database or lock unavailable, broker unreachable) are retried this many times.
CYCLE_TRANSIENT_RETRIES = 3


def _run_cycles(task, run, describe) -> str:
    """Run ``run()`` (a cycle service call) as ``task``: a busy account is retried after
    ``CYCLE_BUSY_RETRY_SECONDS`` (up to ``CYCLE_BUSY_RETRIES`` times), a transient failure (database or
    lock unavailable, broker unreachable) up to ``CYCLE_TRANSIENT_RETRIES`` times with backoff, counted
    apart: waiting for another cycle's lease must not use up the retries a hiccup is allowed."""
    from django.conf import settings
    from django.db import InterfaceError, OperationalError

    from trading.brokers.base import BrokerUnavailable
    from trading.brokers.private_lock import PrivateLockError
    from trading.services.cycle import CycleBusy

    headers = task.request.headers or {}
    transient = int(headers.get("aether_transient_retries", 0))
    try:
        result = run()
    except CycleBusy as exc:
        raise task.retry(
            exc=exc,
            countdown=settings.CYCLE_BUSY_RETRY_SECONDS,
            headers={"aether_transient_retries": transient},
        ) from exc
    except (OperationalError, InterfaceError, PrivateLockError, BrokerUnavailable) as exc:
        if transient >= CYCLE_TRANSIENT_RETRIES:
            raise
        raise task.retry(
            exc=exc, countdown=2 ** (transient + 1), headers={"aether_transient_retries": transient + 1}
        ) from exc
    return describe(result)


@shared_task(
    bind=True,
    name="trading.account_cycles",
    ignore_result=True,
    acks_late=True,  # idempotent per (account, pair, bar): a redelivered task finds its rows and orders
    max_retries=CYCLE_BUSY_RETRIES,
)
def account_cycles(self, account_id: int, bar_open_time: str) -> str:
    """Run one account's strategy cycles on every traded pair's closed bar opened at ``bar_open_time``, one
    pair after the other (see ``trading.services.cycle.account_cycles_run``)."""
    from datetime import datetime

    from accounts.models import Account
    from trading.services import cycle as service

    account = Account.objects.get(pk=account_id)
    opened = datetime.fromisoformat(bar_open_time)
    return _run_cycles(
        self,
        lambda: service.account_cycles_run(account=account, bar_open_time=opened),
        lambda cycles: (
            f"{account.slug} {bar_open_time}: "
            + ", ".join(f"{cycle.instrument.symbol} {cycle.status}" for cycle in cycles)
        ),
    )


@shared_task(
    bind=True,
    name="trading.cycle_run",
    ignore_result=True,
    acks_late=True,  # idempotent per (account, bar): a redelivered cycle finds its row and its orders
    max_retries=CYCLE_BUSY_RETRIES,
)
def cycle_run(self, account_id: int, instrument_id: int, bar_open_time: str) -> str:
    """Run one account's strategy cycle on one pair's closed bar (see ``trading.services.cycle``)."""
    from datetime import datetime

    from accounts.models import Account
    from trading.models import Instrument
    from trading.services import cycle as service

    account = Account.objects.get(pk=account_id)
    instrument = Instrument.objects.get(pk=instrument_id)
    return _run_cycles(
        self,
        lambda: service.cycle_run(
            account=account, instrument=instrument, bar_open_time=datetime.fromisoformat(bar_open_time)
        ),
        lambda cycle: (
            f"{account.slug} {instrument.symbol} {bar_open_time}: {cycle.status} ({cycle.reason[:120]})"
        ),
    )


@shared_task(name="trading.cycles_sweep", ignore_result=True)
def cycles_sweep() -> int:
    """Queue the cycles of every account on every traded pair's newest closed bar that has none finished:
    one ``trading.account_cycles`` task per account and bar open time. Returns how many tasks were queued."""
    from trading.services.cycle import cycles_due

    due = sorted({(account_id, opened) for account_id, _, opened in cycles_due()})
    for account_id, opened in due:
        account_cycles.delay(account_id, opened.isoformat())
    return len(due)


@shared_task(name="trading.universe_sync", ignore_result=True)
def universe_sync() -> str:
    """Refresh the spot USD universe from Kraken's AssetPairs (pairs Kraken no longer lists are delisted)."""
    from trading.marketdata.kraken_rest import fetch_asset_pairs
    from trading.services import universe_sync as sync

    report = sync(
        actor=SystemActor("universe_sync"),
        answer=fetch_asset_pairs(),
        source="kraken_api",
        delist_missing=True,
    )
    return (
        f"{len(report.created)} created, {len(report.changed)} changed, {len(report.delisted)} delisted, "
        f"{len(report.rejected)} left out"
    )
