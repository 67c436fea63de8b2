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
