"""The beat schedule is defined in one place and installed idempotently, keeping a director's pause."""

from __future__ import annotations

import io
import json

from django.core.management import call_command
from django_celery_beat.models import PeriodicTask

from aether_site.celery import app


def test_install_beat_schedule_creates_every_task_once_and_keeps_a_pause(db, settings):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    settings.AETHER_MARKET_DATA = "live"
    out = io.StringIO()
    call_command("install_beat_schedule", stdout=out)
    assert "7 tasks, 7 created, 0 updated" in out.getvalue()
    cycles = PeriodicTask.objects.get(name="strategy cycles on closed bars")
    assert (cycles.task, cycles.interval.every) == (
        "trading.cycles_sweep",
        settings.CYCLE_SWEEP_EVERY_SECONDS,
    )
    assert PeriodicTask.objects.get(name="universe sync").queue == "market_data"
    assert PeriodicTask.objects.get(name="hedge of all accounts").task == "hedging.evaluate_all"
    reconcile = PeriodicTask.objects.get(name="reconcile all accounts")
    assert reconcile.task == "trading.reconcile_all"
    assert reconcile.interval.every == settings.RECONCILE_EVERY_SECONDS
    nav = PeriodicTask.objects.get(name="NAV snapshot of all accounts")
    assert (nav.task, nav.interval.every) == ("risk.nav_snapshot_all", settings.NAV_SNAPSHOT_EVERY_SECONDS)
    retrain = PeriodicTask.objects.get(name="retrain ETH/USD 60m")
    assert (retrain.task, json.loads(retrain.args), retrain.queue) == (
        "learning.retrain",
        ["ETH/USD", 60],
        "learning",
    )
    assert retrain.crontab.hour == "0"
    reconcile.enabled = False  # a director pauses it in the admin
    reconcile.save()
    call_command("install_beat_schedule", stdout=(again := io.StringIO()))
    assert "7 tasks, 0 created, 0 updated" in again.getvalue()
    assert PeriodicTask.objects.get(name="reconcile all accounts").enabled is False


def test_every_scheduled_task_is_registered_with_celery(db, settings):
    from aether_site.beat import schedule

    app.loader.import_default_modules()
    for entry in schedule():
        assert entry.task in app.tasks, entry.task


def test_the_embedded_broker_is_a_sqlite_file_that_takes_and_gives_back_messages(tmp_path):
    """Embedded mode's broker (kombu's SQLAlchemy transport on SQLite): its folder is created on a fresh
    machine, and a message sent by one connection is received by another, once."""
    from celery import Celery
    from kombu import Connection

    from aether_site.celery import _embedded_broker_folder

    url = f"sqla+sqlite:///{tmp_path / 'fresh' / 'celery' / 'broker.sqlite3'}"
    probe = Celery("probe")
    probe.conf.broker_url = url
    _embedded_broker_folder(probe)
    assert (tmp_path / "fresh" / "celery").is_dir()
    probe.send_task("aether.probe", args=[1], queue="trading")
    with Connection(url) as connection:
        queue = connection.SimpleQueue("trading")
        message = queue.get(timeout=5)
        assert message.headers["task"] == "aether.probe"
        message.ack()
        assert queue.qsize() == 0
        queue.close()


def test_replayed_market_data_has_no_universe_sync(db, settings):
    from aether_site.beat import schedule

    settings.AETHER_MARKET_DATA = "replay"
    assert "trading.universe_sync" not in {entry.task for entry in schedule()}
