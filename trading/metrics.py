"""Market-data metrics on the web process's /metrics.

The feed process has its own gauges (served on MARKET_FEED_METRICS_PORT); these are read from the database
at scrape time, so the main /metrics shows staleness even when the feed process is down or unscraped —
a dead feed shows as stale through the age of its last message. They live in their own registry, which
only the web /metrics view reads (see ``aether_site.health.metrics``), never the feed's metrics server.
"""

from __future__ import annotations

import logging

from django.core.exceptions import SynchronousOnlyOperation
from django.db import DatabaseError
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

logger = logging.getLogger(__name__)


class FeedStatusCollector(Collector):
    def collect(self):
        from trading.selectors import pair_staleness

        stale = GaugeMetricFamily(
            "aether_pair_stale", "1 when the live feed has not heard about the pair lately", labels=["symbol"]
        )
        age = GaugeMetricFamily(
            "aether_pair_last_message_age_seconds", "seconds since the feed's last message", labels=["symbol"]
        )
        try:
            staleness = pair_staleness()
        except (DatabaseError, SynchronousOnlyOperation) as exc:  # a scrape must not fail with the database
            logger.warning("metrics: feed status unavailable: %s", exc)
            return
        for symbol, (is_stale, seconds) in staleness.items():
            stale.add_metric([symbol], 1.0 if is_stale else 0.0)
            if seconds is not None:
                age.add_metric([symbol], seconds)
        yield stale
        yield age

    def describe(self):
        return []  # collected at scrape time only (no database access at registration)


WEB_REGISTRY = CollectorRegistry(auto_describe=False)
WEB_REGISTRY.register(FeedStatusCollector())
