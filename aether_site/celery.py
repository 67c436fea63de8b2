"""The Celery app. Worker and beat read their settings from Django's (``CELERY_*``); tasks live in each
app's ``tasks.py`` and are found by autodiscovery."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery
from celery.signals import celeryd_after_setup

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")

app = Celery("aether")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _embedded_broker_folder(sender, **kwargs) -> None:
    """Embedded mode's broker is a SQLite file (kombu's SQLAlchemy transport): create its folder, so the first
    message of a fresh machine is not lost to a missing directory."""
    url = sender.conf.broker_url or ""
    if url.startswith("sqla+sqlite:///"):
        Path(url.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


@celeryd_after_setup.connect
def _reconcile_before_trading(sender=None, instance=None, **kwargs) -> None:
    """A worker that consumes the ``trading`` queue reconciles every account with its broker before it takes
    its first task (see ``CELERY_RECONCILE_ON_START``). A failure is logged loudly (and audited by the
    reconciliation); the worker still starts (the periodic reconciliation retries), and a live account with
    UNKNOWN orders takes no new entries until they are resolved (the strategy cycle checks)."""
    import logging

    import django
    from django.apps import apps
    from django.conf import settings

    if not apps.ready:
        django.setup()
    if not settings.CELERY_RECONCILE_ON_START:
        return
    queues = set(getattr(getattr(instance, "app", app).amqp.queues, "consume_from", None) or {})
    if queues and "trading" not in queues:
        return  # a market-data or learning worker places no orders
    from django.db import connections

    from accounts.models import Account
    from governance.actors import SystemActor
    from trading.services.reconcile import reconcile_account_books

    logger = logging.getLogger("aether_site.celery")
    actor = SystemActor("reconcile_on_start")
    try:
        for account in Account.objects.order_by("pk"):
            try:
                for report in reconcile_account_books(account=account, actor=actor):
                    logger.info("start-up reconciliation: %s", report.summary())
            except Exception:
                logger.exception("start-up reconciliation of %s failed", account.slug)
    finally:
        connections.close_all()  # never hand an open connection to forked pool processes
