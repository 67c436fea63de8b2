"""Backfill from Kraken's public OHLC endpoint through ccxt (``KRAKEN_API_URL``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import ccxt
from django.db import transaction
from django.utils import timezone

from governance.actors import SystemActor
from governance.services import audit_record
from trading.candles import floor_time
from trading.marketdata.backoff import jittered_backoff
from trading.marketdata.kraken_ohlc import fetch_pages, reachable_since
from trading.marketdata.kraken_rest import public_client
from trading.models import Candle, Instrument
from trading.selectors import stored_run_end
from trading.services import candles_upsert

RETRIES = 5


def with_retries(call: Callable[[], Any], *, sleep: Callable[[float], None], attempts: int = RETRIES) -> Any:
    """``call()``, retried on Kraken's transient faults (rate limit, unavailable, timeout, network) with
    exponential backoff and full jitter; other errors, and the last transient one, propagate."""
    for attempt in range(attempts):
        try:
            return call()
        except (
            ccxt.NetworkError
        ):  # includes RateLimitExceeded, DDoSProtection, ExchangeNotAvailable, timeouts
            if attempt == attempts - 1:
                raise
            sleep(jittered_backoff(attempt, base=1.0, cap=30.0))
    raise AssertionError("unreachable")


@dataclass
class KrakenBackfillReport:
    symbol: str
    timeframe: int
    since: datetime
    pages: int = 0
    inserted: int = 0
    updated: int = 0
    bad_rows: list[str] = field(default_factory=list)
    note: str = ""

    def summary(self) -> str:
        text = (
            f"{self.symbol} {self.timeframe}m from {self.since:%Y-%m-%d %H:%M}: {self.pages} pages, "
            f"{self.inserted} inserted, {self.updated} updated, {len(self.bad_rows)} bad rows skipped"
        )
        return text + (f" ({self.note})" if self.note else "")


def backfill_kraken(
    *,
    instrument: Instrument,
    timeframe: int,
    days: int,
    client=None,
    now: datetime | None = None,
    progress: Callable[[int], None] | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> KrakenBackfillReport:
    """Fetch the bars of the last ``days`` that are not stored yet: from the end of the stored run that
    begins at the window's start (so a re-run resumes, and a hole left by a feed outage is filled).
    Kraken serves only its latest 720 bars, so an older start is moved up and the report says so."""
    now = now or timezone.now()
    oldest = reachable_since(now, timeframe)
    wanted = floor_time(now - timedelta(days=days), timeframe)
    start = max(wanted, floor_time(oldest, timeframe))
    # Resume after the stored run that begins at the window's start: a hole (a feed outage) gets filled.
    newest = stored_run_end(instrument=instrument, timeframe=timeframe, start=start, end=now)
    since = newest or start - timedelta(minutes=timeframe)  # Kraken serves bars after `since`
    report = KrakenBackfillReport(symbol=instrument.symbol, timeframe=timeframe, since=since)
    if wanted < oldest:
        report.note = (
            f"Kraken serves only the latest 720 bars: history before {oldest:%Y-%m-%d %H:%M} is out of reach"
        )
    client = client or public_client()

    def fetch(cursor: int | None):
        params = {"pair": instrument.altname, "interval": timeframe}
        if cursor is not None:
            params["since"] = cursor
        return with_retries(lambda: client.publicGetOHLC(params), sleep=sleep)

    for page in fetch_pages(fetch, minutes=timeframe, since=since):
        result = candles_upsert(
            instrument=instrument, timeframe=timeframe, rows=page.rows, source=Candle.Source.KRAKEN_REST
        )
        report.pages += 1
        report.inserted += result.inserted
        report.updated += result.updated
        report.bad_rows.extend(page.bad)
        if progress:
            progress(len(page.rows))
    with transaction.atomic():
        audit_record(
            actor=SystemActor("backfill_history"),
            action="history.backfilled",
            details={
                "source": "kraken",
                "symbol": instrument.symbol,
                "timeframe": timeframe,
                "since": since,
                "pages": report.pages,
                "inserted": report.inserted,
                "updated": report.updated,
                "bad_rows": report.bad_rows[:20],
                "note": report.note,
            },
        )
    return report
