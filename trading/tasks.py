"""Thin Celery tasks of the trading app: ids in, one service call each."""

from __future__ import annotations

from celery import shared_task

from governance.actors import SystemActor


@shared_task(name="trading.reconcile_account", ignore_result=True)
def reconcile_account(account_id: int) -> str:
    """Reconcile one account's book with its broker (safe to repeat: it never resends an order)."""
    from accounts.models import Account
    from trading.services.reconcile import reconcile_account_books

    account = Account.objects.get(pk=account_id)
    reports = reconcile_account_books(account=account, actor=SystemActor("reconcile"))
    return "; ".join(report.summary() for report in reports)


@shared_task(name="trading.reconcile_all", ignore_result=True)
def reconcile_all() -> int:
    """Queue a reconciliation of every account."""
    from accounts.models import Account

    ids = list(Account.objects.values_list("pk", flat=True))
    for account_id in ids:
        reconcile_account.delay(account_id)
    return len(ids)
