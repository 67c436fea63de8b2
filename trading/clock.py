"""The platform's clock: what "now" is for the strategy cycle, the risk engine, NAV snapshots and the hedge.

Live (``AETHER_MARKET_DATA=live``) it is the wall clock. While stored history is replayed on an accelerated
clock (``replay``: ``make run``), it is the replay's clock: the close of the newest closed bar of
``AETHER_TIMEFRAME`` stored so far (never later than the wall clock). Bars, day boundaries of the kill switch,
exit plans and NAV snapshots then all follow the replayed market, so a replayed fortnight behaves as that
fortnight did, in minutes; and every writer reads the same, never-decreasing clock.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from django.conf import settings
from django.db.models import Max
from django.utils import timezone


def platform_now() -> datetime:
    now = timezone.now()
    if settings.AETHER_MARKET_DATA != "replay":
        return now
    from trading.models import Candle

    newest = Candle.objects.filter(timeframe=settings.AETHER_TIMEFRAME, closed=True).aggregate(
        newest=Max("open_time")
    )["newest"]
    if newest is None:
        return now
    return min(now, newest + timedelta(minutes=settings.AETHER_TIMEFRAME))
