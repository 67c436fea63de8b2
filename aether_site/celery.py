"""The Celery app. Worker and beat read their settings from Django's (``CELERY_*``); tasks live in each
app's ``tasks.py`` and are found by autodiscovery."""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")

app = Celery("aether")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
