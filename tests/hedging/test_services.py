"""The hedge shell: policy edits, the directors' override, evaluation, rebalancing through risk, history."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from prometheus_client import REGISTRY

from governance.actors import SystemActor
from governance.models import AuditEvent
from hedging import policy as core
from hedging.models import HedgePolicy, HedgeSnapshot
from hedging.selectors import hedge_target_for, hedge_target_pct_for
from hedging.services import (
    HEDGE,
    HedgeUnavailable,
    hedge_evaluate,
    hedge_performance,
    hedge_policy_for,
    hedge_policy_update,
    hedge_set_auto,
    hedge_set_manual,
)
from risk.models import NavSnapshot
from risk.services import nav_snapshot_record
from tests.hedging.conftest import make_stormy
from trading.models import Order, OrderStatus, Position

CYCLE = SystemActor("strategy_cycle")


def actions(account) -> list[str]:
    return list(AuditEvent.objects.filter(account=account).order_by("seq").values_list("action", flat=True))


def last_event(account, action: str) -> AuditEvent:
    return AuditEvent.objects.filter(account=account, action=action).order_by("-seq").first()


def events(account) -> list[str]:
    return list(
        HedgeSnapshot.objects.filter(account=account)
        .order_by("taken_at", "id")
        .values_list("event", flat=True)
    )


def evaluate(book, *, at=None, actor=HEDGE):
    return hedge_evaluate(account=book.account, actor=actor, now=at or book.now, quotes=book.quotes)


# --- Policy ------------------------------------------------------------------------------------------------


def test_a_policy_is_created_with_the_cores_defaults_and_audited(firm):
    policy = hedge_policy_for(account=firm.alice_account)
    assert policy.to_params() == core.HedgeParams()
    assert policy.mode == "auto"
    created = last_event(firm.alice_account, "hedge_policy.created")
    assert created.actor == "system:hedge_policy"
    assert created.details["after"]["floor_pct"] == "10.0000"
    assert policy.history.count() == 1


def test_a_director_edits_parameters_audited_before_and_after_with_history(firm):
    policy = hedge_policy_update(
        account=firm.alice_account, actor=firm.owner, ceiling_pct=D(60), band_pct=D(8)
    )
    event = last_event(firm.alice_account, "hedge_policy.updated")
    assert event.actor == "user:alice"
    assert event.details == {
        "before": {"band_pct": "10.0000", "ceiling_pct": "70.0000"},
        "after": {"band_pct": "8.0000", "ceiling_pct": "60.0000"},
    }
    assert policy.history.count() == 2


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director"])
def test_only_a_director_of_the_account_changes_the_hedge(firm, persona):
    actor = getattr(firm, persona)
    with pytest.raises(PermissionDenied, match="directors only"):
        hedge_policy_update(account=firm.alice_account, actor=actor, floor_pct=D(20))
    with pytest.raises(PermissionDenied, match="directors only"):
        hedge_set_manual(account=firm.alice_account, actor=actor, target_pct=D(50), reason="x")
    with pytest.raises(PermissionDenied, match="directors only"):
        hedge_set_auto(account=firm.alice_account, actor=actor)
    assert not HedgeSnapshot.objects.filter(account=firm.alice_account).exists()


def test_the_platform_may_not_override_the_hedge(firm):
    with pytest.raises(PermissionDenied, match="a director of the account must"):
        hedge_set_manual(account=firm.alice_account, actor=HEDGE, target_pct=D(50), reason="x")


def test_an_invalid_policy_or_the_mode_through_update_is_refused(firm):
    with pytest.raises(ValidationError) as refused:
        hedge_policy_update(account=firm.alice_account, actor=firm.owner, floor_pct=D(80), vol_weight=D(3))
    assert len(refused.value.messages) == 2
    with pytest.raises(ValidationError, match="hedge_set_manual"):
        hedge_policy_update(account=firm.alice_account, actor=firm.owner, mode="manual")


# --- Override ----------------------------------------------------------------------------------------------


def test_manual_override_is_audited_with_before_and_after_and_a_snapshot(book, firm):
    expires = book.now + timedelta(hours=6)
    hedge_set_manual(
        account=book.account,
        actor=firm.owner,
        target_pct=D("55"),
        expires_at=expires,
        reason="elections",
        now=book.now,
        quotes=book.quotes,
    )
    event = last_event(book.account, "hedge.manual_set")
    assert event.details["before"]["mode"] == "auto"
    assert event.details["after"] == {
        "mode": "manual",
        "manual_target_pct": "55.0000",
        "manual_expires_at": expires.isoformat(),
        "manual_reason": "elections",
    }
    snapshot = HedgeSnapshot.objects.get(account=book.account, event="manual_set")
    assert (snapshot.mode, snapshot.target_pct) == ("manual", D("55"))
    assert D(19) < snapshot.actual_pct < D(21)  # the book was marked: about 20 % in USD
    assert hedge_target_for(account=book.account, now=book.now) == D("0.55")
    policy = HedgePolicy.objects.get(account=book.account)
    assert [row.mode for row in policy.history.order_by("history_id")][-1] == "manual"


def test_manual_targets_and_expiries_are_checked(book, firm):
    for target, expires, message in (
        (D(101), None, "between 0 % and 100 %"),
        (D(50), book.now - timedelta(minutes=1), "not in the future"),
        (D(50), book.now.replace(tzinfo=None) + timedelta(hours=1), "no time zone"),
    ):
        with pytest.raises(ValidationError, match=message):
            hedge_set_manual(
                account=book.account,
                actor=firm.owner,
                target_pct=target,
                expires_at=expires,
                reason="x",
                now=book.now,
            )
    with pytest.raises(ValidationError, match="say why"):
        hedge_set_manual(account=book.account, actor=firm.owner, target_pct=D(50), reason=" ")


def test_manual_wins_until_expiry_then_auto_resumes_all_audited(book, firm):
    make_stormy(book)
    expires = book.now + timedelta(hours=2)
    hedge_set_manual(
        account=book.account,
        actor=firm.owner,
        target_pct=D("15"),
        expires_at=expires,
        reason="hold on",
        now=book.now,
    )
    during = evaluate(book, at=book.now + timedelta(hours=1))
    assert during.decision.mode == "manual"
    assert during.decision.target_pct == D(15)
    assert during.decision.auto_pct > D(40)  # the storm would say more, but the director decides
    assert during.plan.action == core.Action.HOLD  # about 20 % in USD: within 5 points of 15 %

    after = evaluate(book, at=expires)
    assert after.decision.mode == "auto"
    assert after.decision.expired
    assert after.decision.target_pct == after.decision.auto_pct > D(40)
    policy = HedgePolicy.objects.get(account=book.account)
    assert (policy.mode, policy.manual_target_pct, policy.manual_expires_at) == ("auto", None, None)
    lapsed = last_event(book.account, "hedge.manual_expired")
    assert lapsed.actor == "system:hedge"
    assert lapsed.details["before"]["mode"] == "manual"
    assert lapsed.details["after"]["mode"] == "auto"
    assert events(book.account) == ["manual_set", "manual_expired", "rebalance"]
    assert after.plan.action == core.Action.SELL  # and the automatic target is acted on at once


def test_the_selector_sees_an_expired_override_as_automatic_before_the_next_evaluation(book, firm):
    evaluate(book)  # calm: the floor
    expires = book.now + timedelta(hours=1)
    hedge_set_manual(
        account=book.account, actor=firm.owner, target_pct=D(80), expires_at=expires, reason="x", now=book.now
    )
    assert hedge_target_pct_for(account=book.account, now=book.now) == D(80)
    assert hedge_target_pct_for(account=book.account, now=expires) == D(10)


def test_back_to_auto_is_audited_and_a_second_call_records_nothing(book, firm):
    hedge_set_manual(account=book.account, actor=firm.owner, target_pct=D(30), reason="x", now=book.now)
    hedge_set_auto(account=book.account, actor=firm.owner, reason="calm again", now=book.now)
    event = last_event(book.account, "hedge.auto_set")
    assert event.details["before"]["manual_target_pct"] == "30.0000"
    assert event.details["after"] == {
        "mode": "auto",
        "manual_target_pct": None,
        "manual_expires_at": None,
        "manual_reason": "",
    }
    count = len(actions(book.account))
    hedge_set_auto(account=book.account, actor=firm.owner, now=book.now)
    assert len(actions(book.account)) == count
    assert events(book.account) == ["manual_set", "auto_set"]


# --- Evaluation and rebalancing ----------------------------------------------------------------------------


def test_a_calm_market_gives_the_floor_and_writes_one_snapshot(book):
    result = evaluate(book)
    assert result.decision.target_pct == D(10)
    assert result.inputs["driver"] in {"BTC/USD", "ETH/USD", "SOL/USD"}
    assert result.plan.action == core.Action.RELEASE  # about 20 % in USD: 10 points above the floor
    assert events(book.account) == ["target_changed", "release"]
    # Nothing changed: the next evaluation writes nothing (the release waits for the minimum interval).
    evaluate(book, at=book.now + timedelta(minutes=30))
    assert events(book.account) == ["target_changed", "release"]
    assert hedge_target_for(account=book.account, now=book.now) == D("0.1")


def test_turmoil_raises_the_target_and_sells_through_the_risk_engine(book, firm):
    make_stormy(book)
    result = evaluate(book)
    assert result.inputs["driver"] == "ETH/USD"
    assert D(result.inputs["vol_ratio"]) > 3
    assert result.decision.target_pct == D(46)  # volatility alone, saturated: 10 + 60 x 0.6
    assert result.plan.action == core.Action.SELL
    # ETH is the most volatile holding: it is sold first; a sell never exceeds the holding.
    assert result.plan.orders[0].symbol == "ETH/USD"
    assert all(o.verdict == "accept" and o.status == OrderStatus.FILLED for o in result.outcomes)
    orders = Order.objects.filter(account=book.account, side="sell").order_by("id")
    assert orders.count() == len(result.outcomes)
    assert all(o.reason.startswith("hedge: rebalance to 46") for o in orders)
    assert {o.client_order_id for o in orders} == {o.client_order_id for o in result.outcomes}
    for position in Position.objects.filter(account=book.account, broker="sim"):
        assert position.quantity >= 0
    rebalance = HedgeSnapshot.objects.get(account=book.account, event="rebalance")
    assert rebalance.orders[0]["outcome"]["status"] == OrderStatus.FILLED
    audited = last_event(book.account, "hedge.rebalanced")
    assert audited.details["target_pct"] == "46.00"
    assert "order.submitted" in actions(book.account) or any(
        a.startswith("order.") for a in actions(book.account)
    )
    # The account is now near the target.
    again = evaluate(book, at=book.now + timedelta(hours=5))
    assert abs(again.plan.actual_pct - D(46)) < D(1)
    assert again.plan.action == core.Action.HOLD


def test_the_risk_engine_cuts_a_hedge_sell_to_what_is_free(book, firm, monkeypatch):
    """The plan is made from free quantities; if the book changes between plan and order (a resting sell
    placed meanwhile), the risk engine's pre-trade check still cuts the sell to what is held and free."""
    from risk import pretrade

    make_stormy(book)
    seen = []
    real = pretrade.order_submit_checked

    def spy(**kwargs):
        kwargs["quantity"] = kwargs["quantity"] * 100  # a runaway quantity
        checked = real(**kwargs)
        seen.append(checked)
        return checked

    monkeypatch.setattr(pretrade, "order_submit_checked", spy)
    result = evaluate(book)
    assert seen
    assert all(c.decision.verdict == "resize" for c in seen)
    assert all("sell_exceeds_holding" in c.decision.codes for c in seen)
    assert all(o.verdict == "resize" for o in result.outcomes)
    for position in Position.objects.filter(account=book.account, broker="sim"):
        assert position.quantity >= 0
    assert last_event(book.account, "risk.resized").details["reason"].startswith("hedge:")


def test_the_band_and_the_minimum_interval_suppress_churn(book, firm):
    make_stormy(book)
    evaluate(book)  # sells to 46 %
    sells = Order.objects.filter(account=book.account, side="sell").count()
    # A director moves the target by less than the band: no trade.
    hedge_set_manual(
        account=book.account, actor=firm.owner, target_pct=D(49), reason="a little more", now=book.now
    )
    assert evaluate(book, at=book.now + timedelta(hours=1)).plan.action == core.Action.HOLD
    # Outside the band but within the minimum interval of the last rebalance: no trade either.
    hedge_set_manual(
        account=book.account, actor=firm.owner, target_pct=D(70), reason="much more", now=book.now
    )
    too_soon = evaluate(book, at=book.now + timedelta(hours=2))
    assert too_soon.plan.action == core.Action.HOLD
    assert "less than 4:00:00 ago" in too_soon.plan.reason
    assert Order.objects.filter(account=book.account, side="sell").count() == sells
    # Once the interval has passed, it trades.
    assert evaluate(book, at=book.now + timedelta(hours=4)).plan.action == core.Action.SELL
    assert HedgeSnapshot.objects.filter(account=book.account, event="rebalance").count() == 2


def test_drawdown_from_the_high_water_mark_raises_the_target(book):
    NavSnapshot.objects.create(
        account=book.account,
        broker="sim",
        taken_at=book.now - timedelta(days=3),
        equity=D(130000),
        cash=D(130000),
        positions_value=D(0),
        day=(book.now - timedelta(days=3)).date(),
        day_high=D(130000),
        drawdown_pct=D(0),
        kill_switch_status="armed",
        reason="schedule",
    )
    result = evaluate(book)
    assert D(result.inputs["drawdown_pct"]) > D(23)  # about 99,600 against 130,000
    assert result.decision.target_pct == D(46)  # drawdown alone, saturated


def test_a_killswitch_recommendation_is_recorded_once_a_day_and_not_acted_on(
    book, django_capture_on_commit_callbacks
):
    from risk.models import KillSwitch

    nav_snapshot_record(account=book.account, actor=CYCLE, reason="manual", now=book.now, quotes=book.quotes)
    switch = KillSwitch.objects.get(account=book.account)
    switch.day_high = switch.day_equity * D("1.025")  # 2.4 % below the day's high: 80 % of the 3 % limit
    switch.save()
    before = (
        REGISTRY.get_sample_value("aether_hedge_killswitch_recommendations_total", {"account": "alice"}) or 0
    )
    with django_capture_on_commit_callbacks(execute=True):
        evaluate(book)
        evaluate(book, at=book.now + timedelta(minutes=5))
    recommended = AuditEvent.objects.filter(account=book.account, action="hedge.killswitch_recommended")
    assert recommended.count() == 1
    assert "recommends halting new entries" in recommended.get().details["reason"]
    after = REGISTRY.get_sample_value("aether_hedge_killswitch_recommendations_total", {"account": "alice"})
    assert after == before + 1
    switch.refresh_from_db()
    assert (switch.status, switch.halted) == ("armed", False)  # not acted on


def test_a_day_without_drawdown_recommends_nothing_and_leaves_the_risk_policy_unread(book):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from risk.services import risk_policy_for

    risk_policy_for(account=book.account)  # stored: its absence would not explain a missing read
    nav_snapshot_record(account=book.account, actor=CYCLE, reason="manual", now=book.now, quotes=book.quotes)
    with CaptureQueriesContext(connection) as captured:
        result = evaluate(book)
    assert D(result.inputs["day_drawdown_pct"]) == 0
    assert result.killswitch_recommendation is None
    assert not [query for query in captured.captured_queries if "risk_riskpolicy" in query["sql"]]
    assert not AuditEvent.objects.filter(account=book.account, action="hedge.killswitch_recommended").exists()


def test_an_unmarkable_book_or_no_candles_writes_nothing(book):
    from trading.models import Candle

    book.quotes.quotes.pop("ETH/USD")
    with pytest.raises(HedgeUnavailable, match="no price"):
        evaluate(book)
    book.quotes.quotes["ETH/USD"] = book.quotes.quotes["BTC/USD"].__class__.from_last(D(3000), book.now)
    Candle.objects.all().delete()
    with pytest.raises(HedgeUnavailable, match="volatility and drawdown inputs"):
        evaluate(book)
    assert not HedgeSnapshot.objects.filter(account=book.account).exists()


def test_a_viewer_may_not_evaluate(book, firm):
    with pytest.raises(PermissionDenied):
        evaluate(book, actor=firm.viewer)


# --- Performance -------------------------------------------------------------------------------------------


def test_performance_compares_with_the_hedge_at_the_floor_fees_included(book, firm):
    from trading.matching import Quote

    make_stormy(book)
    nav_snapshot_record(account=book.account, actor=CYCLE, reason="manual", now=book.now, quotes=book.quotes)
    evaluate(book)  # sells to 46 % USD
    later = book.now + timedelta(hours=1)
    for symbol, price in (("BTC/USD", "40000"), ("ETH/USD", "2400")):  # the market falls 20 %
        book.quotes.set(symbol, Quote.from_last(D(price), later))
    nav_snapshot_record(
        account=book.account,
        actor=CYCLE,
        reason="manual",
        now=later + timedelta(seconds=1),
        quotes=book.quotes,
    )
    result = hedge_performance(
        account=book.account, start=book.now - timedelta(minutes=1), end=later + timedelta(minutes=1)
    )
    assert result.steps == 1
    assert result.hedge_fees > 0
    assert result.account_return_pct < 0
    # With more USD than the floor while the market fell, the hedge was worth something.
    assert result.hedge_value_pct > D(5)
    with pytest.raises(HedgeUnavailable, match="at least two"):
        hedge_performance(
            account=book.account, start=later + timedelta(hours=1), end=later + timedelta(hours=2)
        )
