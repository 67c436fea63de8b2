"""Market-data metrics on the web process's /metrics.

The feed process has its own gauges (served on MARKET_FEED_METRICS_PORT); these are read from the database
at scrape time, so the main /metrics shows staleness even when the feed process is down or unscraped —
a dead feed shows as stale through the age of its last message. They live in their own registry, which
only the web /metrics view reads (see ``aether_site.health.metrics``), never the feed's metrics server.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.db import DatabaseError
from django.utils import timezone
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class FeedStatusCollector(Collector):
    def collect(self):
        from trading.models import FeedStatus

        stale = GaugeMetricFamily(
            "aether_pair_stale", "1 when the live feed has not heard about the pair lately", labels=["symbol"]
        )
        age = GaugeMetricFamily(
            "aether_pair_last_message_age_seconds", "seconds since the feed's last message", labels=["symbol"]
        )
        try:
            statuses = {
                status.instrument.symbol: status
                for status in FeedStatus.objects.select_related("instrument").filter(
                    instrument__symbol__in=settings.AETHER_PAIRS
                )
            }
        except DatabaseError as exc:  # a scrape must not fail because the database does
            logger.warning("metrics: feed status unavailable: %s", exc)
            return
        now = timezone.now()
        for symbol in settings.AETHER_PAIRS:
            status = statuses.get(symbol)
            seconds = None
            if status is not None and status.last_message_at is not None:
                seconds = (now - status.last_message_at).total_seconds()
            is_stale = (
                status is None or status.stale or seconds is None or seconds > settings.MARKET_STALE_SECONDS
            )
            stale.add_metric([symbol], 1.0 if is_stale else 0.0)
            if seconds is not None:
                age.add_metric([symbol], seconds)
        yield stale
        yield age

    def describe(self):
        return []  # collected at scrape time only (no database access at registration)


WEB_REGISTRY = CollectorRegistry(auto_describe=False)
WEB_REGISTRY.register(FeedStatusCollector())
