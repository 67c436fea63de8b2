"""The risk shell's services: policy edits, the kill switch's transitions, NAV snapshots and the trip path."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from prometheus_client import REGISTRY

from governance.actors import SystemActor
from governance.models import AuditEvent
from risk import engine
from risk.models import KillSwitch, NavSnapshot, RiskPolicy
from risk.selectors import engine_policy_for, entries_allowed
from risk.services import (
    NavUnavailable,
    killswitch_halt,
    killswitch_rearm,
    killswitch_resume,
    nav_snapshot_record,
    risk_policy_for,
    risk_policy_update,
)
from trading.matching import Quote
from trading.models import AccountFeeTier, Balance, Order, OrderStatus, Position
from trading.quotes import MemoryQuoteSource
from trading.services.orders import order_submit, sim_balance_set

ENGINE = SystemActor("strategy_cycle")
SCHEDULE = SystemActor("nav_snapshot")
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)  # a Saturday, 10:00 UTC
NEXT_DAY = datetime(2026, 11, 22, 0, 5, tzinfo=UTC)


def quotes_at(**prices) -> MemoryQuoteSource:
    """Quotes by base asset (``BTC="50000"``), never stale: the tests control the clock."""
    return MemoryQuoteSource(
        {f"{base}/USD": Quote.from_last(D(price), NOW - timedelta(hours=1)) for base, price in prices.items()}
    )


def actions(account) -> list[str]:
    return list(AuditEvent.objects.filter(account=account).order_by("seq").values_list("action", flat=True))


def last_event(account, action: str) -> AuditEvent:
    return AuditEvent.objects.filter(account=account, action=action).order_by("-seq").first()


def trips(slug: str) -> float:
    return REGISTRY.get_sample_value("aether_kill_switch_trips_total", {"account": slug}) or 0.0


# --- Policy ---------------------------------------------------------------------------------------------


def test_a_policy_is_created_with_the_engines_defaults_on_first_use_and_audited(firm):
    account = firm.alice_account
    assert engine_policy_for(account=account) == engine.RiskPolicy()  # before any row: the defaults
    policy = risk_policy_for(account=account)
    assert policy.to_engine() == engine.RiskPolicy()
    assert risk_policy_for(account=account).pk == policy.pk  # once only
    created = AuditEvent.objects.get(account=account, action="risk_policy.created")
    assert created.actor == "system:risk_policy"
    assert created.details["after"]["max_daily_drawdown_pct"] == "3.0000"
    assert policy.history.count() == 1


def test_a_director_edits_the_policy_audited_with_before_and_after_and_history(firm):
    account = firm.alice_account
    policy = risk_policy_update(
        account=account,
        actor=firm.owner,
        max_daily_drawdown_pct=D("2.5"),
        flatten_on_breach=True,
        stop_loss_kind="percent",
        stop_loss_value=D("1.5"),
        take_profit_kind="percent",
        take_profit_value=D("4"),
    )
    policy.refresh_from_db()
    assert policy.max_daily_drawdown_pct == D("2.5")
    assert policy.to_engine().stop_loss == engine.ExitRule(engine.Distance.PERCENT, D("1.5"))
    event = last_event(account, "risk_policy.updated")
    assert event.actor == "user:alice"
    assert event.target_id == str(policy.pk)
    assert event.details["before"] == {
        "flatten_on_breach": False,
        "max_daily_drawdown_pct": "3.0000",
        "stop_loss_kind": "atr",
        "stop_loss_value": "2.0000",
        "take_profit_kind": "atr",
        "take_profit_value": "3.0000",
    }
    assert event.details["after"]["max_daily_drawdown_pct"] == "2.5000"
    assert event.details["after"]["flatten_on_breach"] is True
    assert policy.history.count() == 2
    assert [row.flatten_on_breach for row in policy.history.order_by("history_id")] == [False, True]


def test_a_change_that_changes_nothing_records_nothing(firm):
    risk_policy_for(account=firm.alice_account)
    before = actions(firm.alice_account)
    risk_policy_update(account=firm.alice_account, actor=firm.owner, max_daily_drawdown_pct=D("3"))
    assert actions(firm.alice_account) == before


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director"])
def test_only_a_director_of_the_account_edits_its_policy(firm, persona):
    # bob ("director") directs the company and his own account, not alice's.
    with pytest.raises(PermissionDenied, match="directors only"):
        risk_policy_update(
            account=firm.alice_account, actor=getattr(firm, persona), max_daily_drawdown_pct=D("1")
        )
    assert not RiskPolicy.objects.filter(account=firm.alice_account, max_daily_drawdown_pct=D("1")).exists()


def test_the_platform_may_not_edit_a_policy(firm):
    with pytest.raises(PermissionDenied, match="a director of the account must"):
        risk_policy_update(account=firm.alice_account, actor=ENGINE, flatten_on_breach=True)


def test_an_invalid_policy_is_refused_with_every_problem_listed_and_nothing_changes(firm):
    with pytest.raises(ValidationError) as refused:
        risk_policy_update(
            account=firm.alice_account,
            actor=firm.owner,
            risk_per_trade_pct=D("0"),
            max_daily_drawdown_pct=D("150"),
            correlation_threshold=D("0"),
            max_orders_per_minute=100,
            max_orders_per_hour=60,
        )
    messages = refused.value.messages
    assert any(m.startswith("risk per trade must be above 0 %") for m in messages)
    assert any(m.startswith("maximum daily drawdown must be above 0 % and at most 100 %") for m in messages)
    assert any(m.startswith("correlation threshold must be in (0, 1]") for m in messages)
    assert any("maximum orders per minute (100) is above maximum orders per hour (60)" in m for m in messages)
    assert len(messages) == 4
    policy = RiskPolicy.objects.get(account=firm.alice_account)
    assert policy.to_engine() == engine.RiskPolicy()
    assert "risk_policy.updated" not in actions(firm.alice_account)


def test_contradictory_limits_are_refused_with_the_engines_sentences(firm):
    with pytest.raises(ValidationError) as refused:
        risk_policy_update(
            account=firm.alice_account,
            actor=firm.owner,
            max_position_pct=D("40"),
            risk_per_trade_pct=D("3"),
        )
    text = " | ".join(refused.value.messages)
    assert "maximum position per pair (40 %) is above the maximum exposure per correlated group" in text
    assert "one stopped-out trade would trip the kill switch" in text


def test_values_of_the_wrong_type_and_unknown_fields_are_refused(firm):
    with pytest.raises(ValidationError) as refused:
        risk_policy_update(account=firm.alice_account, actor=firm.owner, risk_per_trade_pct="lots")
    assert "risk per trade pct" in refused.value.messages[0]
    with pytest.raises(ValidationError, match="unknown risk policy field"):
        risk_policy_update(account=firm.alice_account, actor=firm.owner, leverage=D("5"))


# --- NAV ------------------------------------------------------------------------------------------------


def test_nav_is_cash_plus_each_position_at_its_price_less_the_taker_fee(firm, universe):
    """Hand-checked: 1,000 USD + 0.5 BTC x 20,000 (10,000, fee 0.40 % = 40) + 2 ETH x 1,000.05 (2,000.10,
    fee 0.26 % = 5.20026 → 5.2003 rounded up) = 1,000 + 9,960 + 1,994.8997 = 12,954.8997."""
    account = firm.alice_account
    btc, eth = universe["BTC/USD"], universe["ETH/USD"]
    for instrument, taker in ((btc, "0.40"), (eth, "0.26")):
        AccountFeeTier.objects.create(
            account=account,
            instrument=instrument,
            maker_pct=D("0.16"),
            taker_pct=D(taker),
            volume_30d_usd=0,
            fetched_at=NOW,
        )
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("1000"), reserved=D("100"))
    Position.objects.create(account=account, broker="sim", instrument=btc, quantity=D("0.5"))
    Position.objects.create(account=account, broker="sim", instrument=eth, quantity=D("2"))
    Position.objects.create(account=account, broker="kraken", instrument=btc, quantity=D("9"))  # other book

    snapshot = nav_snapshot_record(
        account=account,
        actor=SCHEDULE,
        reason="schedule",
        now=NOW,
        quotes=quotes_at(BTC="20000", ETH="1000.05"),
    )
    assert snapshot.broker == "sim"
    assert snapshot.cash == D("1000")
    assert snapshot.positions_value == D("11954.8997")
    assert snapshot.equity == D("12954.8997")
    assert (snapshot.day, snapshot.day_high, snapshot.drawdown_pct) == (NOW.date(), D("12954.8997"), 0)
    assert snapshot.kill_switch_status == "armed"


def test_a_held_pair_without_a_price_fails_loudly_and_writes_nothing(firm, universe):
    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("1000"))
    Position.objects.create(account=account, broker="sim", instrument=universe["SOL/USD"], quantity=D("3"))
    with pytest.raises(NavUnavailable, match=r"SOL/USD: no price to mark 3"):
        nav_snapshot_record(account=account, actor=SCHEDULE, reason="schedule", now=NOW, quotes=quotes_at())
    stale = MemoryQuoteSource(
        {"SOL/USD": Quote.from_last(D("150"), NOW - timedelta(hours=3), fresh_until=NOW - timedelta(hours=2))}
    )
    with pytest.raises(NavUnavailable, match=r"SOL/USD: the last price \(150 at .*\) is stale"):
        nav_snapshot_record(account=account, actor=SCHEDULE, reason="schedule", now=NOW, quotes=stale)
    assert not NavSnapshot.objects.exists()


def test_drawdown_is_measured_from_the_days_high_not_its_first_equity(firm, universe):
    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("5000"))
    Position.objects.create(account=account, broker="sim", instrument=universe["BTC/USD"], quantity=D("0.1"))

    def snap(price, at):
        return nav_snapshot_record(
            account=account, actor=SCHEDULE, reason="schedule", now=at, quotes=quotes_at(BTC=price)
        )

    first = snap("50000", NOW)  # 5,000 + 5,000 - 20 = 9,980
    high = snap("54000", NOW + timedelta(hours=1))  # 5,000 + 5,400 - 21.6 = 10,378.4
    later = snap("52000", NOW + timedelta(hours=2))  # 5,000 + 5,200 - 20.8 = 10,179.2
    assert first.equity == D("9980")
    assert (high.equity, high.day_high, high.drawdown_pct) == (D("10378.4"), D("10378.4"), 0)
    assert later.equity == D("10179.2")
    assert later.day_high == D("10378.4")
    # (10,378.4 - 10,179.2) / 10,378.4 x 100 = 1.919371 % (above the first equity, yet a drawdown)
    assert later.drawdown_pct == D("1.919371")
    switch = KillSwitch.objects.get(account=account)
    assert (switch.day, switch.day_high, switch.day_equity) == (NOW.date(), D("10378.4"), D("10179.2"))
    # A new UTC day starts a new high-water mark.
    next_day = snap("51000", NEXT_DAY)
    assert (next_day.day, next_day.day_high, next_day.drawdown_pct) == (NEXT_DAY.date(), next_day.equity, 0)
    # Observations arrive in time order.
    with pytest.raises(NavUnavailable, match="older than the last one"):
        snap("51000", NEXT_DAY - timedelta(minutes=1))


def test_the_switchs_history_keeps_its_state_changes_not_every_snapshots_day_record(
    book, django_capture_on_commit_callbacks
):
    """Each snapshot moves the switch's day record (stored on the snapshot's own row too) without a history
    row of the switch; a trip is a state change, saved with one."""
    account = book["account"]
    first = nav_snapshot_record(
        account=account,
        actor=SCHEDULE,
        reason="schedule",
        now=NOW - timedelta(minutes=2),
        quotes=quotes_at(BTC="50000"),
    )
    switch = KillSwitch.objects.get(account=account)
    rows = switch.history.count()
    assert rows >= 1  # created armed on first use
    later = nav_snapshot_record(
        account=account,
        actor=SCHEDULE,
        reason="schedule",
        now=NOW - timedelta(minutes=1),
        quotes=quotes_at(BTC="49000"),
    )
    switch.refresh_from_db()
    assert (switch.day_equity, switch.day_high, switch.day_at) == (
        later.equity,
        first.equity,
        NOW - timedelta(minutes=1),
    )
    assert switch.history.count() == rows
    snapshot, _ = crash(book, django_capture_on_commit_callbacks)
    assert snapshot.kill_switch_status == "tripped"
    assert switch.history.count() > rows
    tripped = switch.history.order_by("history_id").last()
    assert (tripped.status, tripped.day_equity) == ("tripped", snapshot.equity)


@pytest.mark.parametrize("persona", ["viewer", "outsider"])
def test_a_non_director_may_not_record_a_snapshot(firm, persona):
    with pytest.raises(PermissionDenied):
        nav_snapshot_record(
            account=firm.alice_account, actor=getattr(firm, persona), reason="manual", now=NOW
        )


def test_a_director_records_a_manual_snapshot_and_a_bad_reason_is_refused(firm):
    Balance.objects.create(account=firm.alice_account, broker="sim", asset="USD", total=D("250"))
    snapshot = nav_snapshot_record(account=firm.alice_account, actor=firm.owner, reason="manual", now=NOW)
    assert (snapshot.equity, snapshot.reason) == (D("250"), "manual")
    with pytest.raises(ValidationError, match="reason must be one of"):
        nav_snapshot_record(account=firm.alice_account, actor=firm.owner, reason="whim", now=NOW)


# --- The trip -------------------------------------------------------------------------------------------


@pytest.fixture
def book(firm, universe):
    """Alice's simulated book: 10,000 USD funded, 0.1 BTC bought at 50,000 (market), and an open limit buy
    of 0.01 BTC at 30,000 (an entry order still resting)."""
    account = firm.alice_account
    btc = universe["BTC/USD"]
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test")
    market = quotes_at(BTC="50000")
    bought = order_submit(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.1"),
        quotes=market,
    )
    assert bought.status == OrderStatus.FILLED
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
    assert resting.status == OrderStatus.OPEN
    return {"account": account, "btc": btc, "resting": resting}


def crash(book, django_capture_on_commit_callbacks, *, to="40000"):
    """A high-water snapshot at 50,000, then one at ``to``: 0.1 BTC loses 1,000 of ~10,000 (about 10 %)."""
    account = book["account"]
    nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=NOW, quotes=quotes_at(BTC="50000")
    )
    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        snapshot = nav_snapshot_record(
            account=account,
            actor=SCHEDULE,
            reason="schedule",
            now=NOW + timedelta(minutes=5),
            quotes=quotes_at(BTC=to),
        )
    return snapshot, callbacks


def test_a_drawdown_at_the_limit_trips_blocks_entries_and_cancels_open_entry_orders(
    book, firm, django_capture_on_commit_callbacks
):
    account = book["account"]
    before = trips("alice")
    snapshot, _ = crash(book, django_capture_on_commit_callbacks)
    assert snapshot.drawdown_pct >= D("3")
    assert snapshot.kill_switch_status == "tripped"
    switch = KillSwitch.objects.get(account=account)
    assert (switch.status, switch.tripped_on, switch.tripped_at) == ("tripped", NOW.date(), snapshot.taken_at)
    assert "reached the limit of 3.0000 %" in switch.reason
    assert entries_allowed(account) is False
    book["resting"].refresh_from_db()
    assert book["resting"].status == OrderStatus.CANCELED
    assert book["resting"].status_reason == "kill switch: entries blocked"
    # Without flatten_on_breach the position is kept.
    assert Position.objects.get(account=account, broker="sim", instrument=book["btc"]).quantity == D("0.1")
    assert not Order.objects.filter(account=account, side="sell").exists()
    tripped = last_event(account, "killswitch.tripped")
    assert tripped.actor == "system:kill_switch"
    assert tripped.details["nav_snapshot_id"] == snapshot.pk
    assert tripped.details["actions"] == ["block_entries", "cancel_entry_orders", "alert"]
    enforced = last_event(account, "killswitch.enforced")
    assert enforced.details == {
        "canceled_order_ids": [book["resting"].pk],
        "flatten_order_ids": [],
        "problems": [],
        "left": [],
        "dust_below_ordermin": [],
    }
    switch.refresh_from_db()
    assert (switch.enforcement_due, switch.enforcement_problems) == (False, "")
    assert trips("alice") == before + 1
    assert switch.history.filter(status="tripped").exists()


def test_a_drawdown_just_below_the_limit_does_not_trip(book, django_capture_on_commit_callbacks):
    # 0.1 BTC from 50,000 to 48,800 loses ~120 of ~9,975: about 1.2 %, under the 3 % default.
    snapshot, callbacks = crash(book, django_capture_on_commit_callbacks, to="48800")
    assert snapshot.kill_switch_status == "armed"
    assert entries_allowed(book["account"]) is True
    assert callbacks == []


def test_with_flatten_on_breach_the_trip_sells_every_position(book, firm, django_capture_on_commit_callbacks):
    account = book["account"]
    risk_policy_update(account=account, actor=firm.owner, flatten_on_breach=True)
    crash(book, django_capture_on_commit_callbacks)
    sell = Order.objects.get(account=account, side="sell")
    assert (sell.status, sell.reason, sell.placed_by) == (
        OrderStatus.FILLED,
        "kill switch: flatten",
        "system:kill_switch",
    )
    assert Position.objects.get(account=account, broker="sim", instrument=book["btc"]).quantity == 0
    enforced = last_event(account, "killswitch.enforced")
    assert enforced.details["flatten_order_ids"] == [sell.pk]
    assert last_event(account, "killswitch.tripped").details["actions"] == [
        "block_entries",
        "cancel_entry_orders",
        "flatten",
        "alert",
    ]


def test_a_tripped_switch_stays_latched_on_later_snapshots_of_the_same_day(
    book, django_capture_on_commit_callbacks
):
    account = book["account"]
    crash(book, django_capture_on_commit_callbacks)
    later = nav_snapshot_record(
        account=account,
        actor=SCHEDULE,
        reason="fill",
        now=NOW + timedelta(hours=3),
        quotes=quotes_at(BTC="60000"),
    )
    assert later.kill_switch_status == "tripped"
    assert entries_allowed(account) is False
    assert actions(account).count("killswitch.tripped") == 1


# --- Re-arm, halt, resume -------------------------------------------------------------------------------


def test_rearm_is_refused_on_the_day_of_the_trip_and_allowed_the_next_day_by_a_director(
    book, firm, django_capture_on_commit_callbacks
):
    account = book["account"]
    crash(book, django_capture_on_commit_callbacks)
    with pytest.raises(ValidationError, match="stays latched until the next UTC day"):
        killswitch_rearm(account=account, actor=firm.owner, now=NOW + timedelta(hours=13, minutes=59))
    for actor in (firm.viewer, firm.outsider, firm.director, ENGINE):
        with pytest.raises(PermissionDenied):
            killswitch_rearm(account=account, actor=actor, now=NEXT_DAY)
    assert entries_allowed(account) is False
    switch = killswitch_rearm(account=account, actor=firm.owner, reason="checked the book", now=NEXT_DAY)
    assert (switch.status, switch.tripped_on, switch.reason) == ("armed", None, "")
    assert entries_allowed(account) is True
    event = last_event(account, "killswitch.rearmed")
    assert event.actor == "user:alice"
    assert event.details["before"]["status"] == "tripped"
    assert event.details["after"]["status"] == "armed"
    assert event.details["note"] == "checked the book"
    with pytest.raises(ValidationError, match="already armed"):
        killswitch_rearm(account=account, actor=firm.owner, now=NEXT_DAY)


def test_without_auto_rearm_the_next_days_snapshot_keeps_the_switch_latched(
    book, django_capture_on_commit_callbacks
):
    account = book["account"]
    crash(book, django_capture_on_commit_callbacks)
    snapshot = nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=NEXT_DAY, quotes=quotes_at(BTC="40000")
    )
    assert (snapshot.kill_switch_status, snapshot.drawdown_pct) == ("tripped", 0)
    assert entries_allowed(account) is False


def test_auto_rearm_at_day_change_when_the_policy_says_so(book, firm, django_capture_on_commit_callbacks):
    account = book["account"]
    risk_policy_update(account=account, actor=firm.owner, auto_rearm_at_day_change=True)
    crash(book, django_capture_on_commit_callbacks)
    same_day = nav_snapshot_record(
        account=account,
        actor=SCHEDULE,
        reason="schedule",
        now=NOW + timedelta(hours=13),
        quotes=quotes_at(BTC="40000"),
    )
    assert same_day.kill_switch_status == "tripped"
    snapshot = nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=NEXT_DAY, quotes=quotes_at(BTC="40000")
    )
    assert snapshot.kill_switch_status == "armed"
    assert entries_allowed(account) is True
    event = last_event(account, "killswitch.rearmed")
    assert (event.actor, event.details["note"]) == ("system:kill_switch", "auto re-arm at day change")


def test_a_director_halts_which_cancels_entry_orders_and_resumes(
    book, firm, django_capture_on_commit_callbacks
):
    account = book["account"]
    with django_capture_on_commit_callbacks(execute=True):
        switch = killswitch_halt(account=account, actor=firm.owner, reason="news due")
    assert (switch.halted, switch.halt_reason) == (True, "news due")
    assert entries_allowed(account) is False
    book["resting"].refresh_from_db()
    assert book["resting"].status == OrderStatus.CANCELED
    halted = last_event(account, "killswitch.halted")
    assert (halted.actor, halted.details["before"]["halted"], halted.details["after"]["halted"]) == (
        "user:alice",
        False,
        True,
    )
    switch = killswitch_resume(account=account, actor=firm.owner)
    assert switch.halted is False
    assert entries_allowed(account) is True
    assert last_event(account, "killswitch.resumed").details["after"]["halted"] is False
    with pytest.raises(ValidationError, match="not halted"):
        killswitch_resume(account=account, actor=firm.owner)


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director"])
def test_non_directors_may_not_halt_or_resume(firm, persona):
    actor = getattr(firm, persona)
    with pytest.raises(PermissionDenied):
        killswitch_halt(account=firm.alice_account, actor=actor, reason="x")
    killswitch_halt(account=firm.alice_account, actor=firm.owner, reason="x")
    with pytest.raises(PermissionDenied):
        killswitch_resume(account=firm.alice_account, actor=actor)
    assert entries_allowed(firm.alice_account) is False


def test_the_platform_may_halt_but_not_resume(firm):
    switch = killswitch_halt(account=firm.alice_account, actor=SystemActor("reconcile"), reason="book drift")
    assert switch.halted is True
    with pytest.raises(PermissionDenied):
        killswitch_resume(account=firm.alice_account, actor=SystemActor("reconcile"))
    with pytest.raises(ValidationError, match="say why"):
        killswitch_halt(account=firm.alice_account, actor=firm.owner, reason="  ")


def test_resume_never_rearms_a_tripped_switch(book, firm, django_capture_on_commit_callbacks):
    account = book["account"]
    crash(book, django_capture_on_commit_callbacks)
    killswitch_halt(account=account, actor=firm.owner, reason="investigating")
    switch = killswitch_resume(account=account, actor=firm.owner)
    assert (switch.halted, switch.status) == (False, "tripped")
    assert entries_allowed(account) is False


def test_an_untouched_account_allows_entries(firm):
    assert entries_allowed(firm.alice_account) is True
    assert not KillSwitch.objects.exists()


def test_a_switch_of_book_starts_a_new_high_water_mark_instead_of_tripping(firm):
    """The day's record is per book: the live book's equity is not a drawdown from the simulated one's."""
    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("10000"))
    Balance.objects.create(account=account, broker="kraken", asset="USD", total=D("500"))
    nav_snapshot_record(account=account, actor=SCHEDULE, reason="schedule", now=NOW, quotes=quotes_at())
    account.simulation_mode = False  # test setup: the mode service's checks are not the point here
    account.save()
    live = nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=NOW + timedelta(hours=1), quotes=quotes_at()
    )
    assert (live.broker, live.equity, live.day_high, live.drawdown_pct) == ("kraken", D("500"), D("500"), 0)
    assert live.kill_switch_status == "armed"


def test_the_nav_list_is_scoped_and_reads_in_a_fixed_number_of_queries(firm, django_assert_num_queries):
    from risk.selectors import nav_snapshot_list

    for account in (firm.alice_account, firm.bob_account):
        Balance.objects.create(account=account, broker="sim", asset="USD", total=D("100"))
        for hour in range(3):
            nav_snapshot_record(
                account=account,
                actor=SCHEDULE,
                reason="schedule",
                now=NOW + timedelta(hours=hour),
                quotes=quotes_at(),
            )
    with django_assert_num_queries(1):
        rows = [(row.account.slug, row.equity) for row in nav_snapshot_list(user=firm.viewer)]
    assert rows == [("alice", D("100"))] * 3
    assert {row.account.slug for row in nav_snapshot_list(user=firm.outsider)} == {"bob"}


def test_a_book_the_caller_already_read_marks_the_same_as_one_read_here(firm, universe):
    from risk.services import MarkedBook, nav_mark_book

    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("1000"), reserved=D("100"))
    Position.objects.create(account=account, broker="sim", instrument=universe["ETH/USD"], quantity=D("2"))
    Position.objects.create(account=account, broker="sim", instrument=universe["BTC/USD"], quantity=D("0.5"))
    quotes = quotes_at(BTC="20000", ETH="1000.05")
    read_here = nav_mark_book(account=account, broker="sim", quotes=quotes, now=NOW)
    positions = list(Position.objects.filter(account=account, broker="sim").select_related("instrument"))
    given = nav_mark_book(
        account=account, broker="sim", quotes=quotes, now=NOW, cash=D("1000"), positions=positions
    )
    assert given == read_here
    assert read_here.cash == D("1000")
    assert read_here.positions_value > D("11900")
    # What the caller passes is what is marked (nothing is read again): another cash, no positions.
    assert nav_mark_book(
        account=account, broker="sim", quotes=quotes, now=NOW, cash=D("5"), positions=[]
    ) == MarkedBook(broker="sim", cash=D("5"), positions_value=D(0))
    # A given position without a price still fails loudly.
    with pytest.raises(NavUnavailable, match=r"BTC/USD: no price to mark 0.5"):
        nav_mark_book(
            account=account, broker="sim", quotes=quotes_at(ETH="1000"), now=NOW, positions=positions
        )


def test_the_first_snapshot_creates_the_policy_with_the_engines_defaults_audited(firm):
    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("1000"))
    assert not RiskPolicy.objects.filter(account=account).exists()
    snapshot = nav_snapshot_record(
        account=account, actor=SCHEDULE, reason="schedule", now=NOW, quotes=quotes_at()
    )
    assert snapshot.equity == D("1000")
    assert RiskPolicy.objects.get(account=account).to_engine() == engine.RiskPolicy()
    assert actions(account).count("risk_policy.created") == 1
