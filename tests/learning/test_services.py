"""Regime storage, the retrain task, and strategy thresholds with their adaptation: each change audited."""

from datetime import timedelta
from decimal import Decimal as D

import pandas as pd
import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from governance.actors import SystemActor
from governance.models import AuditEvent
from learning import selectors, services
from learning.errors import LearningDataError
from learning.models import ModelVersion, RegimeObservation, StrategyThresholds
from learning.regime import regime_labels
from learning.tasks import retrain

SYSTEM = SystemActor("learning.tests")


def test_regimes_are_stored_per_bar_with_their_inputs_and_only_new_bars_are_added(market):
    written = services.regimes_record(instrument=market["btc"], timeframe=60)
    frame = selectors.candle_frame(instrument=market["btc"], timeframe=60)
    expected = [label for label in regime_labels(frame["close"].to_numpy()) if label is not None]
    stored = list(
        selectors.regime_series(instrument=market["btc"], timeframe=60).values_list("label", flat=True)
    )
    assert written == len(stored) == len(expected) == len(frame) - 72
    assert stored == expected
    latest = selectors.current_regime(
        instrument=market["btc"], timeframe=60, as_of=market["end"].to_pydatetime()
    )
    assert latest.open_time == market["end"].to_pydatetime()
    assert {"slope", "volatility", "strength"} == set(latest.inputs)
    assert services.regimes_record(instrument=market["btc"], timeframe=60) == 0  # nothing new since


def test_candles_that_cannot_be_labelled_are_an_error_even_once_labels_exist(universe):
    from django.utils import timezone

    from tests.learning.conftest import store
    from tests.learning.synthetic import candles

    btc = universe["BTC/USD"]
    now = pd.Timestamp(timezone.now()).floor("h")
    store(btc, candles(600, seed=3, price=30000.0, start=now - pd.Timedelta(hours=900)), forming_after=False)
    assert services.regimes_record(instrument=btc, timeframe=60) == 600 - 72

    def frozen(start, bars):  # a frozen feed: the same price bar after bar
        frame = candles(bars, seed=3, start=start)
        frame[["open", "high", "low", "close"]] = 30000.0
        return frame

    store(btc, frozen(now - pd.Timedelta(hours=300), 200), forming_after=False)
    assert services.regimes_record(instrument=btc, timeframe=60) == 200
    # Every bar the next run reads is now the same price: an error naming the pair, not a silent 0.
    store(btc, frozen(now - pd.Timedelta(hours=100), 100), forming_after=False)
    with pytest.raises(LearningDataError, match=r"BTC/USD: the close is constant \(30000\) over all"):
        services.regimes_record(instrument=btc, timeframe=60)


@pytest.mark.parametrize(("margin", "promoted"), [(0.10, True), (1000.0, False)])
def test_retrain_task_registers_a_candidate_and_applies_the_gate(market, settings, margin, promoted):
    settings.LEARNING_MODEL_KIND = "logistic"
    settings.LEARNING_PROMOTION_MARGIN = margin
    summary = retrain.apply(args=("BTC/USD", 60)).get()
    version = ModelVersion.objects.get(pk=summary["model_version_id"])
    assert version.trained_by == "system:learning.retrain"
    assert version.pairs == ["BTC/USD"]
    assert version.kind == "logistic"
    # The planted momentum is learnable: far above a flat book, far below an impossible margin.
    assert 0.10 < summary["score"] < 1000.0
    assert summary["promoted"] is promoted
    assert version.gate["promote"] is promoted
    assert version.status == ("champion" if promoted else "candidate")
    assert (selectors.champion_for(scope="BTC/USD", timeframe=60) == version) is promoted
    assert RegimeObservation.objects.filter(instrument=market["btc"]).exists()
    assert AuditEvent.objects.filter(action="learning.model_registered", target_id=str(version.pk)).exists()
    action = "learning.model_promoted" if promoted else "learning.model_gate_declined"
    assert AuditEvent.objects.filter(action=action, target_id=str(version.pk)).exists()


def test_retrain_of_an_unknown_pair_is_a_clear_error(db):
    from learning.errors import LearningDataError

    with pytest.raises(LearningDataError, match=r"DOGE/USD: not in the synced spot USD universe"):
        retrain.apply(args=("DOGE/USD", 60), throw=True)


def test_thresholds_start_from_audited_defaults(firm):
    row = services.thresholds_ensure(actor=firm.owner, account=firm.alice_account)
    assert (row.entry_probability, row.stop_atr_multiple, row.take_atr_multiple) == (
        D("0.55"),
        D("2"),
        D("3"),
    )
    (event,) = AuditEvent.objects.filter(action="learning.thresholds_created")
    assert event.account_id == firm.alice_account.pk


def closed(returns, *, end):
    """(closed_at, net_return) pairs, one an hour, the last closing at ``end``."""
    return [(end - timedelta(hours=len(returns) - 1 - i), D(value)) for i, value in enumerate(returns)]


def test_adaptation_changes_within_bounds_audits_its_reason_and_is_rate_limited(firm):
    now = timezone.now()
    losing = closed(["0.01", "-0.02"] * 6, end=now - timedelta(minutes=5))
    outcome = services.thresholds_adapt(
        actor=SYSTEM, account=firm.alice_account, recent_trades=losing, now=now
    )
    row = StrategyThresholds.objects.get(account=firm.alice_account)
    assert outcome.changed
    assert (row.entry_probability, row.stop_atr_multiple, row.take_atr_multiple) == (
        D("0.56"),
        D("1.75"),
        D("3.25"),
    )
    (event,) = AuditEvent.objects.filter(action="learning.thresholds_adapted")
    assert event.details["before"]["entry_probability"] == "0.5500"
    assert event.details["after"]["entry_probability"] == "0.5600"
    assert "entry probability up" in event.details["reason"]
    assert event.details["stats"]["trades"] == "12"
    assert row.history.count() == 2

    fresh = closed(["0.01", "-0.02"] * 6, end=now + timedelta(hours=12))  # closed after `now`
    again = services.thresholds_adapt(
        actor=SYSTEM, account=firm.alice_account, recent_trades=losing + fresh, now=now + timedelta(hours=13)
    )
    assert not again.changed
    assert again.reason.startswith("rate limited")
    assert AuditEvent.objects.filter(action="learning.thresholds_adapted").count() == 1
    # A day later the same trades do not move the thresholds again: they were already used.
    reused = services.thresholds_adapt(
        actor=SYSTEM, account=firm.alice_account, recent_trades=losing, now=now + timedelta(hours=25)
    )
    assert not reused.changed
    assert reused.reason == f"only 0 trade(s) closed since the last adaptation at {now.isoformat()}; need 10"
    assert AuditEvent.objects.filter(action="learning.thresholds_adapted").count() == 1
    # Trades closed since the last adaptation do.
    later = services.thresholds_adapt(
        actor=SYSTEM, account=firm.alice_account, recent_trades=losing + fresh, now=now + timedelta(hours=25)
    )
    assert later.changed
    assert later.stats["trades"] == 12
    assert later.after.entry_probability == D("0.57")


def test_directors_set_thresholds_within_bounds_viewers_and_outsiders_may_not(firm):
    row = services.thresholds_update(
        actor=firm.owner, account=firm.alice_account, reason="calmer", entry_probability=D("0.6")
    )
    assert row.entry_probability == D("0.6")
    event = AuditEvent.objects.get(action="learning.thresholds_set")
    assert (event.details["before"]["entry_probability"], event.details["after"]["entry_probability"]) == (
        "0.5500",
        "0.6000",
    )
    with pytest.raises(ValueError, match=r"entry probability 0.9000 is outside its bounds 0.5000 … 0.7500"):
        services.thresholds_update(
            actor=firm.owner, account=firm.alice_account, reason="x", entry_probability=D("0.9")
        )
    for user in (firm.viewer, firm.outsider, firm.director):
        with pytest.raises(PermissionDenied):
            services.thresholds_update(
                actor=user, account=firm.alice_account, reason="x", entry_probability=D("0.7")
            )
    assert StrategyThresholds.objects.get(account=firm.alice_account).entry_probability == D("0.6")
