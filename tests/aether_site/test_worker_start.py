"""A worker that consumes the trading queue reconciles every account before its first task."""

from __future__ import annotations

from types import SimpleNamespace

from aether_site import celery as celery_module


def worker_consuming(*queues: str):
    return SimpleNamespace(app=SimpleNamespace(amqp=SimpleNamespace(queues=SimpleNamespace(
        consume_from={name: object() for name in queues}
    ))))  # fmt: skip


def test_a_trading_worker_reconciles_every_account_before_trading(firm, monkeypatch):
    from trading.services import reconcile

    seen = []
    monkeypatch.setattr(
        reconcile,
        "reconcile_account_books",
        lambda *, account, actor: seen.append((account.slug, actor.name)) or [],
    )
    celery_module._reconcile_before_trading(instance=worker_consuming("trading", "market_data"))
    assert sorted(seen) == [(slug, "reconcile_on_start") for slug in ("alice", "bob", "firm")]


def test_a_learning_worker_does_not_reconcile(firm, monkeypatch, settings):
    from trading.services import reconcile

    seen = []
    monkeypatch.setattr(reconcile, "reconcile_account_books", lambda **kwargs: seen.append(kwargs) or [])
    celery_module._reconcile_before_trading(instance=worker_consuming("learning"))
    settings.CELERY_RECONCILE_ON_START = False
    celery_module._reconcile_before_trading(instance=worker_consuming("trading"))
    assert seen == []


def test_one_failing_account_does_not_stop_the_others(firm, monkeypatch, caplog):
    from trading.services import reconcile

    seen = []

    def flaky(*, account, actor):
        if account.slug == "alice":
            raise ConnectionError("exchange unreachable (test)")
        seen.append(account.slug)
        return []

    monkeypatch.setattr(reconcile, "reconcile_account_books", flaky)
    celery_module._reconcile_before_trading(instance=worker_consuming("trading"))
    assert sorted(seen) == ["bob", "firm"]
    assert "start-up reconciliation of alice failed" in caplog.text
