"""Every periodic task of the platform, in one place.

``manage.py install_beat_schedule`` writes these into django-celery-beat's tables, where directors see them
in the admin (Periodic tasks) and can pause one; beat reads them from there (``CELERY_BEAT_SCHEDULER``).
Re-running the command updates the entries it owns and leaves a pause set in the admin alone.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from django.conf import settings


@dataclass(frozen=True)
class Entry:
    name: str  # unique: the key the admin shows
    task: str
    every_seconds: int | None = None
    crontab: dict[str, str] | None = None  # minute, hour, day_of_week, day_of_month, month_of_year
    args: tuple = ()
    queue: str = "trading"
    description: str = ""


def schedule() -> list[Entry]:
    entries = [
        Entry(
            name="reconcile all accounts",
            task="trading.reconcile_all",
            every_seconds=settings.RECONCILE_EVERY_SECONDS,
            queue="trading",
            description="Resolve UNKNOWN orders, add missing fills, sync balances and fees; report drift.",
        )
    ]
    entries.append(
        Entry(
            name="NAV snapshot of all accounts",
            task="risk.nav_snapshot_all",
            every_seconds=settings.NAV_SNAPSHOT_EVERY_SECONDS,
            queue="trading",
            description="Mark every account's book; feeds the daily-drawdown kill switch.",
        )
    )
    entries.append(
        Entry(
            name="strategy cycles on closed bars",
            task="trading.cycles_sweep",
            every_seconds=settings.CYCLE_SWEEP_EVERY_SECONDS,
            queue="trading",
            description=(
                "Queue each account's strategy cycle on every traded pair's newest closed bar that has none "
                "(the feed also queues cycles as each bar closes; a cycle runs once per account and bar)."
            ),
        )
    )
    entries.append(
        Entry(
            name="hedge of all accounts",
            task="hedging.evaluate_all",
            every_seconds=settings.HEDGE_EVALUATE_EVERY_SECONDS,
            queue="trading",
            description=(
                "Evaluate every account's USD hedge (target, band, minimum interval) and rebalance through "
                "risk when due; strategy cycles also evaluate it on each bar."
            ),
        )
    )
    if settings.AETHER_MARKET_DATA == "live":
        entries.append(
            Entry(
                name="universe sync",
                task="trading.universe_sync",
                crontab={"minute": "15", "hour": "0"},
                queue="market_data",
                description="Refresh the spot USD pairs and their rules from Kraken's AssetPairs.",
            )
        )
    for pair in settings.AETHER_PAIRS:
        entries.append(
            Entry(
                name=f"retrain {pair} {settings.AETHER_TIMEFRAME}m",
                task="learning.retrain",
                crontab={"minute": "5", "hour": "0"},
                args=(pair, settings.AETHER_TIMEFRAME),
                queue="learning",
                description="Walk-forward retrain on history plus the newest live candles; promotion gated.",
            )
        )
    return entries


def install(entries: list[Entry] | None = None) -> tuple[int, int]:
    """Create or update the periodic tasks; returns (created, updated). A task paused in the admin stays
    paused."""
    from django.db import transaction
    from django_celery_beat.models import CrontabSchedule, IntervalSchedule, PeriodicTask

    created = updated = 0
    with transaction.atomic():
        for entry in entries if entries is not None else schedule():
            fields = {
                "task": entry.task,
                "args": json.dumps(list(entry.args)),
                "queue": entry.queue,
                "description": entry.description,
                "interval": None,
                "crontab": None,
            }
            if entry.every_seconds is not None:
                fields["interval"], _ = IntervalSchedule.objects.get_or_create(
                    every=entry.every_seconds, period=IntervalSchedule.SECONDS
                )
            else:
                fields["crontab"], _ = CrontabSchedule.objects.get_or_create(timezone="UTC", **entry.crontab)
            task, was_created = PeriodicTask.objects.get_or_create(name=entry.name, defaults=fields)
            if was_created:
                created += 1
                continue
            changed = False
            for name, value in fields.items():
                if getattr(task, name) != value:
                    setattr(task, name, value)
                    changed = True
            if changed:
                task.save()
                updated += 1
    return created, updated
