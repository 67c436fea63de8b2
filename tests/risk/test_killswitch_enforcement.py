"""Review fixes of the kill switch and the NAV snapshots: external flows are not profit or loss, enforcement
is owed until it is done, flattening never believes the account flat when it is not, concurrent snapshots
are applied in order, and every fill queues a snapshot."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest

from governance.models import AuditEvent
from risk import services
from risk.models import KillSwitch, NavSnapshot
from risk.selectors import entries_allowed
from risk.services import nav_snapshot_record, risk_policy_update
from tests.risk.test_models_services import ENGINE, NOW, SCHEDULE, last_event, quotes_at
from trading.brokers.base import BalanceReport, BrokerRefused
from trading.brokers.sim import SimBroker
from trading.models import Balance, Order, OrderStatus, Position
from trading.services.orders import order_submit, sim_balance_set
from trading.services.reconcile import ReconcileReport, _sync_balances


def snap(account, at, **prices) -> NavSnapshot:
    return nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=at, quotes=quotes_at(**prices)
    )


# --- 1. Deposits and withdrawals are not profit or loss ------------------------------------------------


def test_a_simulated_withdrawal_of_5_percent_does_not_trip_but_a_5_percent_loss_does(firm, universe):
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="funding")
    bought = order_submit(
        account=account,
        actor=ENGINE,
        instrument=universe["BTC/USD"],
        side="buy",
        order_type="market",
        quantity=D("0.1"),
        quotes=quotes_at(BTC="50000"),
    )
    assert bought.status == OrderStatus.FILLED
    high = snap(account, NOW, BTC="50000")
    cash = Balance.objects.get(account=account, broker="sim", asset="USD").total
    withdrawal = (high.equity * D("0.05")).quantize(D("0.01"))
    sim_balance_set(
        account=account, asset="USD", amount=cash - withdrawal, actor=firm.owner, reason="director withdraws"
    )
    after = snap(account, NOW + timedelta(minutes=5), BTC="50000")
    assert after.equity == high.equity - withdrawal
    assert (after.drawdown_pct, after.kill_switch_status) == (0, "armed")
    assert after.day_high == high.day_high - withdrawal
    flow = last_event(account, "risk.external_flow")
    assert flow.actor == "user:alice"
    assert D(flow.details["amount"]) == -withdrawal
    assert D(flow.details["before"]["day_high"]) == high.day_high
    assert D(flow.details["after"]["day_high"]) == high.day_high - withdrawal
    assert entries_allowed(account) is True
    # A real loss of about 5 % (0.1 BTC from 50,000 to 45,000 on ~9,460 of equity) trips.
    loss = snap(account, NOW + timedelta(minutes=10), BTC="45000")
    assert loss.drawdown_pct > D("5")
    assert loss.kill_switch_status == "tripped"


def test_a_deposit_is_not_a_new_high_that_a_later_snapshot_measures_a_drawdown_from(firm):
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="funding")
    snap(account, NOW)
    sim_balance_set(account=account, asset="USD", amount=D("15000"), actor=firm.owner, reason="top-up")
    switch = KillSwitch.objects.get(account=account)
    assert (switch.day_high, switch.day_equity) == (D("15000"), D("15000"))
    later = snap(account, NOW + timedelta(minutes=5))
    assert (later.equity, later.day_high, later.drawdown_pct) == (D("15000"), D("15000"), 0)


def _live(account) -> None:
    account.simulation_mode = False  # test setup: the mode service's checks are not the point here
    account.save()


def test_a_live_withdrawal_seen_by_reconcile_does_not_trip(firm):
    account = firm.alice_account
    _live(account)
    Balance.objects.create(account=account, broker="kraken", asset="USD", total=D("10000"))
    snap(account, NOW)
    report = ReconcileReport(account=account.slug, broker="kraken")
    _sync_balances(account=account, report=report, actor=SCHEDULE, exchange=[BalanceReport("USD", D("9500"))])
    assert report.balance_drift == {"USD": {"ours": "10000.000000000000", "kraken": "9500"}}
    after = snap(account, NOW + timedelta(minutes=5))
    assert (after.equity, after.day_high, after.drawdown_pct) == (D("9500"), D("9500"), 0)
    assert after.kill_switch_status == "armed"
    flow = last_event(account, "risk.external_flow")
    assert (flow.details["broker"], flow.details["amount"]) == ("kraken", "-500.000000000000")
    # Kraken's rounding (within the tolerance) is not a flow.
    before = AuditEvent.objects.filter(action="risk.external_flow").count()
    _sync_balances(
        account=account, report=report, actor=SCHEDULE, exchange=[BalanceReport("USD", D("9499.995"))]
    )
    assert AuditEvent.objects.filter(action="risk.external_flow").count() == before


def test_a_live_loss_still_trips(firm):
    account = firm.alice_account
    _live(account)
    balance = Balance.objects.create(account=account, broker="kraken", asset="USD", total=D("10000"))
    snap(account, NOW)
    balance.total = D("9500")  # what fills would do: no external flow
    balance.save()
    assert snap(account, NOW + timedelta(minutes=5)).kill_switch_status == "tripped"


# --- 2. Enforcement is owed until it is done -----------------------------------------------------------


@pytest.fixture
def exposed(firm, universe):
    """Alice funded with 10,000 USD, 0.1 BTC bought at 50,000, an open limit buy (an entry order) and the
    day's high marked at 50,000."""
    account = firm.alice_account
    btc = universe["BTC/USD"]
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test")
    market = quotes_at(BTC="50000")
    order_submit(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.1"),
        quotes=market,
    )
    resting = order_submit(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="limit",
        quantity=D("0.01"),
        limit_price=D("30000"),
        quotes=market,
    )
    snap(account, NOW, BTC="50000")
    return {"account": account, "btc": btc, "resting": resting}


class FlakyBroker:
    """The simulator, except for what a test makes fail."""

    def __init__(self, account, quotes, *, cancel_fails=False, submit_refused=False):
        self.inner = SimBroker(account, quotes=quotes)
        self.cancel_fails, self.submit_refused = cancel_fails, submit_refused

    def submit(self, request):
        if self.submit_refused:
            raise BrokerRefused("EOrder:Insufficient funds (test)")
        return self.inner.submit(request)

    def cancel(self, **kwargs):
        if self.cancel_fails:
            raise ConnectionError("exchange unreachable (test)")
        return self.inner.cancel(**kwargs)


def flaky(quotes, **faults):
    return lambda account, name: FlakyBroker(account, quotes, **faults)


def trip(account, django_capture_on_commit_callbacks, *, broker_factory=None, price="40000"):
    quotes = quotes_at(BTC=price)
    with django_capture_on_commit_callbacks(execute=True):
        snapshot = nav_snapshot_record(
            account=account,
            actor=SCHEDULE,
            reason="schedule",
            now=NOW + timedelta(minutes=5),
            quotes=quotes,
            broker_factory=broker_factory,
        )
    assert snapshot.kill_switch_status == "tripped"
    return snapshot


def test_a_cancel_that_raises_leaves_enforcement_due_and_the_next_snapshot_finishes_it(
    exposed, django_capture_on_commit_callbacks, celery_sent
):
    account, resting = exposed["account"], exposed["resting"]
    trip(account, django_capture_on_commit_callbacks, broker_factory=flaky(quotes_at(), cancel_fails=True))
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN
    switch = KillSwitch.objects.get(account=account)
    assert switch.enforcement_due is True
    assert "exchange unreachable (test)" in switch.enforcement_problems
    assert f"live entry orders left: {resting.client_order_id}" in switch.enforcement_problems
    incomplete = last_event(account, "killswitch.enforcement_incomplete")
    assert incomplete.details["left"] == [f"live entry orders left: {resting.client_order_id}"]
    # The worker task is queued to retry.
    assert [name for name, _, _ in celery_sent if name == "risk.killswitch_enforce"] == [
        "risk.killswitch_enforce"
    ]
    # The next snapshot (the exchange answers again) runs the sweep after its commit and finishes it.
    with django_capture_on_commit_callbacks(execute=True):
        snap(account, NOW + timedelta(minutes=10), BTC="40000")
    resting.refresh_from_db()
    assert resting.status == OrderStatus.CANCELED
    switch.refresh_from_db()
    assert (switch.enforcement_due, switch.enforcement_problems) == (False, "")
    assert last_event(account, "killswitch.enforced").details["canceled_order_ids"] == [resting.pk]
    # Nothing left to do: later snapshots do not sweep again.
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        snap(account, NOW + timedelta(minutes=15), BTC="40000")
    assert callbacks == []


def test_the_enforcement_task_finishes_what_the_trip_left(exposed, django_capture_on_commit_callbacks):
    from risk import tasks

    account = exposed["account"]
    trip(account, django_capture_on_commit_callbacks, broker_factory=flaky(quotes_at(), cancel_fails=True))
    assert "cancel_entry_orders" in last_event(account, "killswitch.tripped").details["actions"]
    assert "entry order(s) canceled" in tasks.killswitch_enforce(account.pk)
    assert KillSwitch.objects.get(account=account).enforcement_due is False


def test_a_halt_sets_enforcement_due_in_its_transaction_and_resume_clears_it(firm):
    account = firm.alice_account
    switch = services.killswitch_halt(account=account, actor=firm.owner, reason="news")  # hooks not run
    assert KillSwitch.objects.get(pk=switch.pk).enforcement_due is True
    services.killswitch_resume(account=account, actor=firm.owner)
    assert KillSwitch.objects.get(pk=switch.pk).enforcement_due is False


# --- 3. Flattening ---------------------------------------------------------------------------------------


def _resting_sell(exposed, price="70000"):
    return order_submit(
        account=exposed["account"],
        actor=ENGINE,
        instrument=exposed["btc"],
        side="sell",
        order_type="limit",
        quantity=D("0.1"),
        limit_price=D(price),
        quotes=quotes_at(BTC="50000"),
    )


def test_flatten_cancels_the_resting_sell_confirms_it_then_sells_at_market(
    exposed, firm, django_capture_on_commit_callbacks
):
    account = exposed["account"]
    risk_policy_update(account=account, actor=firm.owner, flatten_on_breach=True)
    take_profit = _resting_sell(exposed)
    assert take_profit.status == OrderStatus.OPEN
    trip(account, django_capture_on_commit_callbacks)
    take_profit.refresh_from_db()
    assert (take_profit.status, take_profit.status_reason) == (OrderStatus.CANCELED, "kill switch: flatten")
    sell = Order.objects.get(account=account, side="sell", order_type="market")
    assert sell.status == OrderStatus.FILLED
    assert Position.objects.get(account=account, broker="sim", instrument=exposed["btc"]).quantity == 0
    assert KillSwitch.objects.get(account=account).enforcement_due is False
    assert last_event(account, "killswitch.enforced").details["flatten_order_ids"] == [sell.pk]


def test_a_resting_sell_that_cannot_be_canceled_blocks_the_market_sell_and_is_reported(
    exposed, firm, django_capture_on_commit_callbacks
):
    account = exposed["account"]
    risk_policy_update(account=account, actor=firm.owner, flatten_on_breach=True)
    take_profit = _resting_sell(exposed)
    trip(account, django_capture_on_commit_callbacks, broker_factory=flaky(quotes_at(), cancel_fails=True))
    take_profit.refresh_from_db()
    assert take_profit.status == OrderStatus.OPEN
    assert not Order.objects.filter(account=account, side="sell", order_type="market").exists()
    switch = KillSwitch.objects.get(account=account)
    assert switch.enforcement_due is True
    assert f"resting sell {take_profit.client_order_id} failed" in switch.enforcement_problems
    assert "positions left: BTC/USD 0.1" in switch.enforcement_problems


def test_a_rejected_flattening_sell_is_reported_and_audited_never_believed_flat(
    exposed, firm, django_capture_on_commit_callbacks
):
    account = exposed["account"]
    risk_policy_update(account=account, actor=firm.owner, flatten_on_breach=True)
    _resting_sell(exposed)
    trip(
        account,
        django_capture_on_commit_callbacks,
        broker_factory=flaky(quotes_at(BTC="40000"), submit_refused=True),
    )
    sell = Order.objects.get(account=account, side="sell", order_type="market")
    assert sell.status == OrderStatus.REJECTED
    assert Position.objects.get(account=account, broker="sim", instrument=exposed["btc"]).quantity == D("0.1")
    switch = KillSwitch.objects.get(account=account)
    assert switch.enforcement_due is True
    assert "rejected: EOrder:Insufficient funds (test)" in switch.enforcement_problems
    assert "BTC/USD is unprotected" in switch.enforcement_problems
    event = last_event(account, "killswitch.enforcement_incomplete")
    assert any("rejected" in problem for problem in event.details["problems"])
    assert event.details["left"] == ["positions left: BTC/USD 0.1"]
    # The next snapshot (the exchange takes the sell now) finishes the job.
    with django_capture_on_commit_callbacks(execute=True):
        snap(account, NOW + timedelta(minutes=10), BTC="40000")
    assert Position.objects.get(account=account, broker="sim", instrument=exposed["btc"]).quantity == 0
    assert KillSwitch.objects.get(account=account).enforcement_due is False


def test_dust_below_the_minimum_order_does_not_keep_enforcement_due_forever(
    exposed, firm, django_capture_on_commit_callbacks
):
    """A remainder no order can sell (below Kraken's ordermin) is reported as dust, not as a position the
    sweep still owes: otherwise every snapshot would retry a sell that can never be placed."""
    account, btc = exposed["account"], exposed["btc"]
    risk_policy_update(account=account, actor=firm.owner, flatten_on_breach=True)
    # The trip's flattening sell is refused, so enforcement stays due ...
    trip(
        account,
        django_capture_on_commit_callbacks,
        broker_factory=flaky(quotes_at(BTC="40000"), submit_refused=True),
    )
    assert KillSwitch.objects.get(account=account).enforcement_due is True
    # ... then almost all of the position is sold, leaving less than any order can sell.
    dust = D("0.00001")
    assert dust < btc.ordermin
    order_submit(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="sell",
        order_type="market",
        quantity=D("0.1") - dust,
        quotes=quotes_at(BTC="40000"),
    )
    assert Position.objects.get(account=account, broker="sim", instrument=btc).quantity == dust
    sells_before = Order.objects.filter(account=account, side="sell").count()
    result = services.killswitch_enforce(account_id=account.pk, broker_factory=flaky(quotes_at(BTC="40000")))
    assert result.complete is True
    assert Order.objects.filter(account=account, side="sell").count() == sells_before  # no sell of dust
    switch = KillSwitch.objects.get(account=account)
    assert (switch.enforcement_due, switch.enforcement_problems) == (False, "")
    event = last_event(account, "killswitch.enforced")
    assert event.details["dust_below_ordermin"] == ["BTC/USD 0.00001"]
    assert event.details["left"] == []


# --- 4. Concurrent snapshots -----------------------------------------------------------------------------


def test_a_snapshot_that_waited_for_the_lock_is_marked_after_the_one_that_held_it(firm, monkeypatch):
    """Snapshot A asks for the lock, snapshot B gets it first and commits; A must then read the clock, so it
    is not refused as older than B."""
    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("100"))
    real_lock = services._lock_account
    interleaved = []

    def lock_after_another_snapshot(target):
        if not interleaved:
            interleaved.append(None)  # the other snapshot takes the lock at once
            interleaved[0] = nav_snapshot_record(account=account, actor=SCHEDULE, reason="schedule")
        return real_lock(target)

    monkeypatch.setattr(services, "_lock_account", lock_after_another_snapshot)
    first = nav_snapshot_record(account=account, actor=SCHEDULE, reason="fill")
    assert first.taken_at >= interleaved[0].taken_at
    assert NavSnapshot.objects.filter(account=account).count() == 2


# --- 5. A snapshot on every fill --------------------------------------------------------------------------


def test_every_applied_fill_queues_a_nav_snapshot_after_the_commit(
    firm, universe, django_capture_on_commit_callbacks, celery_sent
):
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test")
    market = quotes_at(BTC="50000")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        order_submit(
            account=account,
            actor=ENGINE,
            instrument=universe["BTC/USD"],
            side="buy",
            order_type="market",
            quantity=D("0.01"),
            quotes=market,
        )
    assert celery_sent == []  # not before the commit
    for callback in callbacks:
        callback()
    assert [sent for sent in celery_sent if sent[0] == "risk.nav_snapshot"] == [
        ("risk.nav_snapshot", (account.pk, "fill"), {})
    ]
    celery_sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        order_submit(  # rests: no fill, no snapshot
            account=account,
            actor=ENGINE,
            instrument=universe["BTC/USD"],
            side="buy",
            order_type="limit",
            quantity=D("0.01"),
            limit_price=D("30000"),
            quotes=market,
        )
    assert [sent for sent in celery_sent if sent[0] == "risk.nav_snapshot"] == []


def test_in_a_replay_the_rearm_waits_for_the_replays_next_day_not_the_wall_clocks(firm, universe, settings):
    """The trip's day is on the platform clock; re-arming compares with the same clock."""
    from datetime import UTC, datetime

    from trading.candles import CandleRow
    from trading.services import candles_upsert

    settings.AETHER_MARKET_DATA = "replay"
    opened = datetime(2024, 3, 1, 10, tzinfo=UTC)
    candles_upsert(
        instrument=universe["BTC/USD"],
        timeframe=settings.AETHER_TIMEFRAME,
        rows=[CandleRow(opened, D(1), D(2), D(1), D(2), D(3))],
        source="replay",
    )
    account = firm.alice_account
    switch = KillSwitch.objects.create(
        account=account, status="tripped", tripped_on=opened.date(), tripped_at=opened, reason="test trip"
    )
    with pytest.raises(Exception, match="UTC day"):
        services.killswitch_rearm(account=account, actor=firm.owner, reason="too soon")
    switch.refresh_from_db()
    assert switch.status == "tripped"
