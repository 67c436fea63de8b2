"""Thin Celery tasks of the risk app: ids in, one service call each."""

from __future__ import annotations

from celery import shared_task

from governance.actors import SystemActor


@shared_task(name="risk.nav_snapshot", ignore_result=True)
def nav_snapshot(account_id: int, reason: str = "schedule") -> str:
    """Mark one account's book and feed its kill switch. A book that cannot be marked (a held pair without
    a fresh price) fails the task loudly; it is not retried: the next schedule tries again."""
    from accounts.models import Account
    from risk.services import nav_snapshot_record

    account = Account.objects.get(pk=account_id)
    snapshot = nav_snapshot_record(account=account, actor=SystemActor("nav_snapshot"), reason=reason)
    return f"{account.slug}: {snapshot.equity} USD, drawdown {snapshot.drawdown_pct} %"


@shared_task(name="risk.nav_snapshot_all", ignore_result=True)
def nav_snapshot_all() -> int:
    """Queue a scheduled NAV snapshot of every account."""
    from accounts.models import Account

    ids = list(Account.objects.values_list("pk", flat=True))
    for account_id in ids:
        nav_snapshot.delay(account_id, "schedule")
    return len(ids)


@shared_task(name="risk.exits_evaluate", ignore_result=True)
def exits_evaluate(instrument_id: int, bar_open_time: str) -> int:
    """Watch every position in one instrument on its closed bar (``AETHER_TIMEFRAME``) opened at
    ``bar_open_time`` (ISO 8601). Queued by whoever stores closed bars (the feed, the strategy cycle);
    a bar not stored as closed is an error. Returns how many positions were looked at."""
    from datetime import datetime

    from django.conf import settings

    from risk.exits import exits_evaluate as evaluate
    from trading.models import Candle, Instrument
    from trading.quotes import candle_bar

    instrument = Instrument.objects.get(pk=instrument_id)
    candle = Candle.objects.get(
        instrument=instrument,
        timeframe=settings.AETHER_TIMEFRAME,
        open_time=datetime.fromisoformat(bar_open_time),
        closed=True,
    )
    outcomes = evaluate(instrument=instrument, bar=candle_bar(candle), actor=SystemActor("risk_exits"))
    return len(outcomes)


#: Attempts of ``risk.killswitch_enforce`` after the first (``ENFORCE_RETRY_SECONDS`` apart); after them the
#: task fails loudly, ``enforcement_due`` stays set and every NAV snapshot still runs the sweep again.
ENFORCE_MAX_RETRIES = 5


@shared_task(bind=True, name="risk.killswitch_enforce", ignore_result=True, max_retries=ENFORCE_MAX_RETRIES)
def killswitch_enforce(self, account_id: int) -> str:
    """Finish a kill switch's enforcement (cancel entry orders, flatten) that the in-process sweep left
    undone. The sweep is idempotent; it is retried, a bounded number of times, until it is complete."""
    from risk.services import ENFORCE_RETRY_SECONDS, KILL_SWITCH
    from risk.services import killswitch_enforce as enforce

    try:
        result = enforce(account_id=account_id, actor=KILL_SWITCH)
    except Exception as exc:
        raise self.retry(exc=exc, countdown=ENFORCE_RETRY_SECONDS) from exc
    if not result.complete:
        raise self.retry(countdown=ENFORCE_RETRY_SECONDS)
    return result.summary()
