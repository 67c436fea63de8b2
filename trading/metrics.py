"""Market-data and account-state metrics on the web process's /metrics.

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


class AccountStateCollector(Collector):
    """Per account, read from the database at scrape time, so what Celery workers did (cycles, fills, NAV
    snapshots, kill-switch trips, hedge rebalances) shows on the web /metrics whichever process did it.
    Labelled by account slug only, never by anything of its key."""

    def collect(self):
        try:
            rows = account_state_rows()
        except (DatabaseError, SynchronousOnlyOperation) as exc:  # a scrape must not fail with the database
            logger.warning("metrics: account state unavailable: %s", exc)
            return
        families = {
            name: GaugeMetricFamily(name, text, labels=labels)
            for name, (text, labels) in ACCOUNT_GAUGES.items()
        }
        for name, labels, value in rows:
            families[name].add_metric(labels, float(value))
        yield from families.values()

    def describe(self):
        return []


ACCOUNT_GAUGES = {
    "aether_account_equity_usd": (
        "The account's latest NAV snapshot (equity marked to market), USD",
        ["account"],
    ),
    "aether_account_drawdown_pct": (
        "Below the UTC day's equity high at the latest NAV snapshot, %",
        ["account"],
    ),
    "aether_kill_switch_state": (
        "1 for the kill switch's current status (armed or tripped), 0 for the other",
        ["account", "status"],
    ),
    "aether_kill_switch_halted": ("1 while a director has halted new entries", ["account"]),
    "aether_kill_switch_enforcement_due": (
        "1 while a trip's or halt's enforcement is unfinished",
        ["account"],
    ),
    "aether_orders_unknown": ("Orders of unknown outcome awaiting reconciliation", ["account"]),
    "aether_cycle_last_duration_seconds": ("Duration of the account's latest finished cycle", ["account"]),
    "aether_cycle_last_age_seconds": ("Seconds since the account's latest finished cycle", ["account"]),
    "aether_cycle_decision_to_order_seconds": (
        "Decision to order committed, the latest order of the latest cycle that placed one",
        ["account"],
    ),
    "aether_cycles_recent": ("Cycles started in the last hour, by status", ["account", "status"]),
    "aether_hedge_ratio_pct": (
        "The account's USD share of equity at the latest hedge snapshot, %",
        ["account"],
    ),
    "aether_hedge_target_ratio_pct": ("The hedge target at the latest hedge snapshot, %", ["account"]),
}


#: How many of an account's newest cycles the decision-to-order gauge looks through.
RECENT_CYCLES = 20


def account_state_rows() -> list[tuple[str, list[str], float]]:
    """(metric, labels, value) for every account (see :class:`AccountStateCollector`)."""
    from datetime import timedelta

    from django.db.models import Count
    from django.utils import timezone

    from accounts.models import Account
    from hedging.models import HedgeSnapshot
    from risk.models import KillSwitch, NavSnapshot
    from trading.models import Cycle, CycleStatus, Order, OrderStatus

    now = timezone.now()
    rows = []
    slugs = dict(Account.objects.values_list("pk", "slug"))
    for account_id, slug in slugs.items():
        nav = NavSnapshot.objects.filter(account_id=account_id).order_by("-taken_at", "-id").first()
        if nav is not None:
            rows.append(("aether_account_equity_usd", [slug], nav.equity))
            rows.append(("aether_account_drawdown_pct", [slug], nav.drawdown_pct))
        cycle = (
            Cycle.objects.filter(account_id=account_id, finished_at__isnull=False)
            .order_by("-finished_at")
            .first()
        )
        if cycle is not None:
            rows.append(("aether_cycle_last_duration_seconds", [slug], (cycle.duration_ms or 0) / 1000))
            rows.append(("aether_cycle_last_age_seconds", [slug], (now - cycle.finished_at).total_seconds()))
        # The newest order among the account's last RECENT_CYCLES finished cycles (an index range, no scan).
        recent_cycles = (
            Cycle.objects.filter(account_id=account_id, finished_at__isnull=False)
            .order_by("-finished_at")
            .values_list("decisions", flat=True)[:RECENT_CYCLES]
        )
        for decisions in recent_cycles:
            latencies = [
                item["decision_to_order_ms"] for item in decisions or () if "decision_to_order_ms" in item
            ]
            if latencies:
                rows.append(("aether_cycle_decision_to_order_seconds", [slug], latencies[-1] / 1000))
                break
        hedge = HedgeSnapshot.objects.filter(account_id=account_id).order_by("-taken_at", "-id").first()
        if hedge is not None:
            if hedge.actual_pct is not None:
                rows.append(("aether_hedge_ratio_pct", [slug], hedge.actual_pct))
            rows.append(("aether_hedge_target_ratio_pct", [slug], hedge.target_pct))
    for switch in KillSwitch.objects.filter(account_id__in=list(slugs)):
        slug = slugs[switch.account_id]
        for status in ("armed", "tripped"):
            rows.append(("aether_kill_switch_state", [slug, status], 1 if switch.status == status else 0))
        rows.append(("aether_kill_switch_halted", [slug], 1 if switch.halted else 0))
        rows.append(("aether_kill_switch_enforcement_due", [slug], 1 if switch.enforcement_due else 0))
    unknown = dict(
        Order.objects.filter(status=OrderStatus.UNKNOWN)
        .values("account_id")
        .annotate(n=Count("id"))
        .values_list("account_id", "n")
    )
    for account_id, slug in slugs.items():
        rows.append(("aether_orders_unknown", [slug], unknown.get(account_id, 0)))
    recent = (
        Cycle.objects.filter(started_at__gte=now - timedelta(hours=1))
        .values("account_id", "status")
        .annotate(n=Count("id"))
    )
    counts = {(row["account_id"], row["status"]): row["n"] for row in recent}
    for account_id, slug in slugs.items():
        for status in CycleStatus.values:
            rows.append(("aether_cycles_recent", [slug, status], counts.get((account_id, status), 0)))
    return rows


WEB_REGISTRY = CollectorRegistry(auto_describe=False)
WEB_REGISTRY.register(FeedStatusCollector())
WEB_REGISTRY.register(AccountStateCollector())
