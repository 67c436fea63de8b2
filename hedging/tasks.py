"""Thin Celery tasks of the hedging app: ids in, one service call each."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="hedging.evaluate", ignore_result=True)
def evaluate(account_id: int) -> str:
    """Evaluate one account's hedge and rebalance when due. An account whose hedge cannot be evaluated
    (no fresh price for a holding, no candles for the automatic target) fails the task loudly; it is not
    retried: the next schedule tries again."""
    from accounts.models import Account
    from hedging.services import HEDGE, hedge_evaluate

    account = Account.objects.get(pk=account_id)
    return f"{account.slug}: {hedge_evaluate(account=account, actor=HEDGE).summary()}"


@shared_task(name="hedging.evaluate_all", ignore_result=True)
def evaluate_all() -> int:
    """Queue a hedge evaluation of every account."""
    from accounts.models import Account

    ids = list(Account.objects.values_list("pk", flat=True))
    for account_id in ids:
        evaluate.delay(account_id)
    return len(ids)
