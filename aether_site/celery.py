"""The Celery app. Worker and beat read their settings from Django's (``CELERY_*``); tasks live in each
app's ``tasks.py`` and are found by autodiscovery."""

from __future__ import annotations

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")

app = Celery("aether")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


@app.on_after_configure.connect
def _embedded_broker_folders(sender, **kwargs) -> None:
    """kombu's filesystem transport (embedded mode) needs its folders to exist: create them, so the first
    message of a fresh machine is not lost to a missing directory."""
    if sender.conf.broker_url != "filesystem://":
        return
    options = sender.conf.broker_transport_options or {}
    for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
        if options.get(key):
            Path(options[key]).mkdir(parents=True, exist_ok=True)
