"""Thin Celery tasks of the learning app."""

from __future__ import annotations

from celery import shared_task

from governance.actors import SystemActor
from learning import services


@shared_task(name="learning.retrain")
def retrain(pair: str, timeframe: int) -> dict:
    """Retrain one pair on its stored history (the newest live candles included), register the candidate
    and apply the promotion gate. Returns a summary (ids and figures, never instances)."""
    outcome = services.model_retrain(actor=SystemActor("learning.retrain"), symbol=pair, timeframe=timeframe)
    return {
        "pair": pair,
        "timeframe": timeframe,
        "model_version_id": outcome.version.pk,
        "score": outcome.result.score,
        "promoted": outcome.decision.promote,
        "reason": outcome.decision.reason,
    }
