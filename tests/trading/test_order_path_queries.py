"""The order path's statements, counted as production runs them (each order its own transaction), and the
shortcuts that keep that count low doing exactly what the long way did: the order's history rows, the
audit chain's head reused within a transaction, balances moved by conditional updates."""

from __future__ import annotations

from decimal import Decimal as D

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from governance.services import audit_record
from trading import ledger
from trading.brokers.sim import SimBroker
from trading.models import Balance, FeedStatus, Order, OrderStatus, Position
from trading.services.orders import order_submit, sim_balance_set

ENGINE = SystemActor("strategy_cycle")

#: Statements of one simulated market order once the account has traded the pair (its position and
#: base balance exist), in its own transaction. Counted when written: 17 for a buy, 18 for a sell that
#: closes the round trip (its Trade row), on PostgreSQL (where the first audit event's deferred-constraint
#: check, chain lock and head read go as one query string) and on SQLite alike. Before the order path was
#: trimmed the same orders took 35 and 37 on PostgreSQL, then 24 and 25, then 21 and 22, then 20 and 21
#: (the two audit events now go in one INSERT and no savepoint surrounds the matching). A guard against
#: regressions, not a target.
BOUND = {"postgresql": {"buy": 17, "sell": 18}, "sqlite": {"buy": 17, "sell": 18}}


def set_price(instrument, price: str) -> None:
    FeedStatus.objects.update_or_create(
        instrument=instrument,
        defaults={"last_price": D(price), "last_message_at": timezone.now(), "stale": False},
    )


@pytest.fixture
def funded(firm, universe, audit_transactional_db):
    """Alice's simulated account with 10,000 USD and a BTC/USD price of 50,000: ``(account, btc)``."""
    btc = universe["BTC/USD"]
    set_price(btc, "50000")
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test")
    return account, btc


def submit(account, instrument, side: str, quantity: str = "0.01") -> Order:
    return order_submit(
        account=account,
        actor=ENGINE,
        instrument=instrument,
        side=side,
        order_type="market",
        quantity=D(quantity),
    )


def statements(captured) -> list[str]:
    # BEGIN and COMMIT are not captured; savepoints would be (a simulated order has none).
    return [query["sql"] for query in captured.captured_queries]


@pytest.mark.django_db(transaction=True)
def test_one_simulated_order_in_its_own_transaction_stays_within_the_statement_bound(
    firm, universe, audit_transactional_db, funded
):
    account, btc = funded
    assert submit(account, btc, "buy").status == OrderStatus.FILLED  # creates the position and BTC row
    assert submit(account, btc, "sell").status == OrderStatus.FILLED
    bounds = BOUND.get(connection.vendor, BOUND["postgresql"])
    for side in ("buy", "sell"):
        bound = bounds[side]
        with CaptureQueriesContext(connection) as captured:
            order = submit(account, btc, side)
        assert order.status == OrderStatus.FILLED
        sql = statements(captured)
        assert len(sql) <= bound, f"{side}: {len(sql)} statements\n" + "\n".join(q[:150] for q in sql)
    assert audit_chain_verify() is None
    usd = Balance.objects.get(account=account, broker="sim", asset="USD")
    btc_balance = Balance.objects.get(account=account, broker="sim", asset="BTC")
    assert usd.reserved == 0
    assert btc_balance.reserved == 0
    assert btc_balance.total == 0
    assert Position.objects.get(account=account, broker="sim", instrument=btc).quantity == 0


@pytest.mark.django_db(transaction=True)
def test_a_simulated_order_has_the_history_rows_the_signal_wrote(
    firm, universe, audit_transactional_db, funded
):
    account, btc = funded
    order = submit(account, btc, "buy")
    rows = list(order.history.order_by("history_id"))
    assert [(row.history_type, row.status) for row in rows] == [("+", "NEW"), ("~", "FILLED")]
    intent, filled = rows
    assert intent.history_user is None
    assert filled.history_user is None
    assert intent.history_change_reason is None
    assert filled.history_change_reason is None
    assert intent.history_date <= filled.history_date
    assert intent.reserved_amount > 0
    assert intent.filled_quantity == 0
    assert intent.kraken_order_id == ""
    # The last row is the order as stored, field for field (what simple_history's post_save copies).
    stored = Order.objects.get(pk=order.pk)
    for field in type(filled).tracked_fields:
        assert getattr(filled, field.attname) == getattr(stored, field.attname), field.name
    # A plain save of the order still goes through simple_history's signal, as before.
    stored.reason = "edited"
    stored.save()
    assert order.history.count() == 3


@pytest.mark.django_db(transaction=True)
def test_a_simulator_failure_leaves_the_intent_with_its_own_history_audit_and_reservation(
    firm, universe, audit_transactional_db, monkeypatch, funded
):
    account, btc = funded

    def broken(self, request):
        raise RuntimeError("simulator down")

    monkeypatch.setattr(SimBroker, "submit", broken)
    with pytest.raises(RuntimeError, match="simulator down"):
        submit(account, btc, "buy")
    order = Order.objects.get(account=account)
    assert order.status == OrderStatus.NEW
    assert order.reserved_amount > 0
    assert list(order.history.values_list("history_type", "status")) == [("+", "NEW")]
    actions = AuditEvent.objects.filter(target_type="trading.order", target_id=str(order.pk))
    assert list(actions.values_list("action", flat=True)) == ["order.submit"]
    assert Balance.objects.get(account=account, broker="sim", asset="USD").reserved == order.reserved_amount
    assert audit_chain_verify() is None


@pytest.mark.django_db(transaction=True)
def test_the_chain_head_is_reused_in_a_transaction_but_never_from_a_rolled_back_savepoint(
    firm, audit_transactional_db
):
    account = firm.alice_account
    with transaction.atomic():
        first = audit_record(actor=ENGINE, action="test.first", account=account)
        with CaptureQueriesContext(connection) as captured:
            second = audit_record(actor=ENGINE, action="test.second", account=account)
        assert second.seq == first.seq + 1
        assert second.prev_hash == first.hash
        assert len(captured.captured_queries) == 1  # the INSERT alone: lock, row share and head are held
        try:
            with transaction.atomic():
                audit_record(actor=ENGINE, action="test.rolled_back", account=account)
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
        third = audit_record(actor=ENGINE, action="test.third", account=firm.bob_account)
        assert third.seq == second.seq + 1
        assert third.prev_hash == second.hash
        with transaction.atomic():  # a released savepoint keeps its event: the head moves on from it
            fourth = audit_record(actor=ENGINE, action="test.fourth", account=account)
        fifth = audit_record(actor=ENGINE, action="test.fifth")
        assert fifth.seq == fourth.seq + 1
        assert fifth.prev_hash == fourth.hash
    with transaction.atomic():  # a new transaction reads the head again
        sixth = audit_record(actor=ENGINE, action="test.sixth", account=account)
    assert sixth.seq == fifth.seq + 1
    assert sixth.prev_hash == fifth.hash
    try:
        with transaction.atomic():
            audit_record(actor=ENGINE, action="test.lost", account=account)
            raise RuntimeError("roll the transaction back")
    except RuntimeError:
        pass
    with transaction.atomic():
        seventh = audit_record(actor=ENGINE, action="test.seventh", account=account)
    assert seventh.seq == sixth.seq + 1
    assert seventh.prev_hash == sixth.hash
    assert audit_chain_verify() is None
    assert not AuditEvent.objects.filter(action__in=["test.rolled_back", "test.lost"]).exists()


@pytest.mark.django_db(transaction=True)
def test_balances_moved_by_conditional_updates_keep_the_old_refusals(firm, universe, audit_transactional_db):
    """Enough available: one UPDATE. Not enough: the row is read and the same message as before."""
    btc = universe["BTC/USD"]
    set_price(btc, "50000")
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("600"), actor=firm.owner, reason="test")
    assert submit(account, btc, "buy").status == OrderStatus.FILLED
    usd = Balance.objects.get(account=account, broker="sim", asset="USD")
    assert usd.reserved == 0
    assert D("0") < usd.total < D("100")
    refused = submit(account, btc, "buy")
    assert refused.status == OrderStatus.REJECTED
    assert refused.status_reason.startswith("insufficient USD: the order needs ")
    assert f"but {usd.total} is available in the simulated balance" in refused.status_reason
    too_much = submit(account, btc, "sell", quantity="0.02")
    assert too_much.status == OrderStatus.REJECTED
    assert "exceeds the 0.010000000000 BTC Aether holds" in too_much.status_reason
    # The fill path's floor: a simulated total never goes negative, with the ledger's message.
    from trading.services.orders import AppliedFills, _write_balances

    applied = AppliedFills()
    applied.move("USD", total=-(usd.total + 1))
    with (
        pytest.raises(ledger.LedgerError, match=r"simulated USD balance of .* would go negative"),
        transaction.atomic(),
    ):
        _write_balances(refused, applied)
    assert Balance.objects.get(account=account, broker="sim", asset="USD").total == usd.total


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_the_first_event_checks_deferred_constraints_then_locks_the_chain_then_reads_the_head(
    firm, audit_transactional_db
):
    """One round trip, the three steps in their order: a deferred foreign-key violation of the
    transaction surfaces there (before the chain lock), and the lock is held afterwards."""
    from django.db import IntegrityError

    account = firm.alice_account
    with transaction.atomic():
        head = audit_record(actor=ENGINE, action="test.head", account=account)
    with transaction.atomic():
        with CaptureQueriesContext(connection) as captured:
            event = audit_record(actor=ENGINE, action="test.next", account=account)
        assert (event.seq, event.prev_hash) == (head.seq + 1, head.hash)
        sql = statements(captured)
        assert len(sql) == 3  # the account's key share, constraints + lock + head, the INSERT
        first = sql[1]
        assert first.index("SET CONSTRAINTS ALL IMMEDIATE") < first.index("pg_advisory_xact_lock")
        assert first.index("pg_advisory_xact_lock") < first.index("governance_auditevent")
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()"
            )
            assert cursor.fetchone()[0] == 1
    with transaction.atomic():
        # A row pointing at no account: PostgreSQL defers the check to COMMIT unless told otherwise.
        Balance.objects.create(account_id=10**9, broker="sim", asset="USD")
        with pytest.raises(IntegrityError), transaction.atomic():
            audit_record(actor=ENGINE, action="test.never", account=account)
        transaction.set_rollback(True)
    assert not AuditEvent.objects.filter(action="test.never").exists()
    assert audit_chain_verify() is None


@pytest.mark.django_db(transaction=True)
def test_the_fee_tier_read_with_the_account_lock_prices_the_reservation_and_the_fill(
    firm, universe, audit_transactional_db, funded
):
    from django.conf import settings

    from trading.fees import published_rates
    from trading.matching import fee_for
    from trading.models import AccountFeeTier

    account, btc = funded
    published = published_rates()
    default = submit(account, btc, "buy")
    default_fill = default.fills.get()
    assert default_fill.fee == fee_for(default_fill.price * default_fill.quantity, published.taker_pct)
    AccountFeeTier.objects.create(
        account=account,
        instrument=btc,
        maker_pct=D("0.1000"),
        taker_pct=D("0.2000"),
        volume_30d_usd=D("100000"),
        fetched_at=timezone.now(),
    )
    assert published.taker_pct != D("0.2000")
    order = submit(account, btc, "buy")
    fill = order.fills.get()
    intent = order.history.order_by("history_id").first()
    need = ledger.reservation_for(
        side="buy",
        quantity=D("0.01"),
        price=D("50000"),
        taker_pct=D("0.2000"),
        buffer_pct=settings.ORDER_RESERVE_BUFFER_PCT,
        base_asset="BTC",
        cost_decimals=btc.cost_decimals,
    )
    assert intent.reserved_amount == need.amount
    assert fill.fee == fee_for(fill.price * fill.quantity, D("0.2000"))
    other = firm.bob_account  # another account's tier is not this one's
    sim_balance_set(account=other, asset="USD", amount=D("10000"), actor=ENGINE, reason="test")
    other_fill = submit(other, btc, "buy").fills.get()
    assert other_fill.fee == fee_for(other_fill.price * other_fill.quantity, published.taker_pct)


@pytest.mark.django_db(transaction=True)
def test_a_simulated_order_writes_its_two_audit_events_in_one_insert_after_its_other_writes(
    firm, universe, audit_transactional_db, funded
):
    """The chain (one lock for the whole platform) is taken by the transaction's last statements: the
    intent's and the fill's events go together, chained, after the order, fill, position and balances."""
    account, btc = funded
    with CaptureQueriesContext(connection) as captured:
        order = submit(account, btc, "buy")
    assert order.status == OrderStatus.FILLED
    sql = statements(captured)
    inserts = [n for n, text in enumerate(sql) if text.startswith('INSERT INTO "governance_auditevent"')]
    assert len(inserts) == 1
    assert all(
        not text.startswith(("INSERT", "UPDATE")) for text in sql[inserts[0] + 1 :] if "history" not in text
    )
    events = list(AuditEvent.objects.filter(target_id=str(order.pk)).order_by("seq"))
    assert [event.action for event in events] == ["order.submit", "order.filled"]
    assert events[1].seq == events[0].seq + 1
    assert events[1].prev_hash == events[0].hash
    assert events[0].details["status"] == "NEW"
    assert events[1].details["status"] == "FILLED"
    assert audit_chain_verify() is None


@pytest.mark.django_db(transaction=True)
def test_a_database_error_while_matching_rolls_the_whole_transaction_back_and_keeps_the_intent(
    firm, universe, audit_transactional_db, monkeypatch, funded
):
    """Without a savepoint, a failed statement inside the matching aborts the intent's transaction (on
    PostgreSQL nothing more runs in it): it rolls back whole and the intent is recorded again, alone."""
    from django.db import DatabaseError

    import trading.services.orders as orders

    account, btc = funded

    def broken_store(position, book):
        with connection.cursor() as cursor:
            cursor.execute("SELECT * FROM no_such_table_here")

    monkeypatch.setattr(orders, "_store_book", broken_store)
    with pytest.raises(DatabaseError):
        order_submit(
            account=account,
            actor=ENGINE,
            instrument=btc,
            side="buy",
            order_type="market",
            quantity=D("0.01"),
            client_order_id="kept-after-db-error",
        )
    order = Order.objects.get(account=account)
    assert order.client_order_id == "kept-after-db-error"
    assert order.status == OrderStatus.NEW
    assert list(order.history.values_list("history_type", "status")) == [("+", "NEW")]
    assert not order.fills.exists()
    actions = AuditEvent.objects.filter(target_type="trading.order").values_list("action", flat=True)
    assert list(actions) == ["order.submit"]
    usd = Balance.objects.get(account=account, broker="sim", asset="USD")
    assert usd.reserved == order.reserved_amount > 0
    assert usd.total == D("10000")
    assert not Balance.objects.filter(account=account, broker="sim", asset="BTC").exists()
    assert audit_chain_verify() is None


@pytest.mark.django_db(transaction=True)
def test_the_written_out_balance_updates_take_clamp_and_refuse_as_the_orm_expressions_did(
    firm, audit_transactional_db
):
    """``_take_reservation`` and ``_move_balance``: reserved kept between zero and the new total, nothing
    moved when the total would go negative or the reservation is not available, a missing row untouched."""
    from trading.services.orders import _move_balance, _take_reservation

    account = firm.alice_account
    Balance.objects.create(account=account, broker="sim", asset="USD", total=D("100"), reserved=D("10"))

    def usd() -> tuple[D, D]:
        row = Balance.objects.get(account=account, broker="sim", asset="USD")
        return row.total, row.reserved

    with transaction.atomic():
        assert _take_reservation(account.pk, "sim", "USD", D("90"))  # exactly what is available
        assert usd() == (D("100"), D("100"))
        assert not _take_reservation(account.pk, "sim", "USD", D("0.01"))
        assert not _take_reservation(account.pk, "sim", "BTC", D("1"))  # no such row
        # A fill of 40 that used 45 of the reservation: 55 reserved of 60.
        assert _move_balance(account.pk, "sim", "USD", D("-40"), D("-45"))
        assert usd() == (D("60"), D("55"))
        # The reservation never exceeds the new total …
        assert _move_balance(account.pk, "sim", "USD", D("-10"), D("0"))
        assert usd() == (D("50"), D("50"))
        # … and never goes below zero.
        assert _move_balance(account.pk, "sim", "USD", D("0.123456"), D("-80"))
        assert usd() == (D("50.123456"), D("0"))
        # A total that would go negative: nothing moves.
        assert not _move_balance(account.pk, "sim", "USD", D("-50.123457"), D("0"))
        assert usd() == (D("50.123456"), D("0"))
        assert _move_balance(account.pk, "sim", "USD", D("-50.123456"), D("0"))  # to zero exactly
        assert usd() == (D("0"), D("0"))
        assert not _move_balance(account.pk, "sim", "BTC", D("1"), D("0"))  # no such row
    assert not Balance.objects.filter(account=account, asset="BTC").exists()


@pytest.mark.django_db(transaction=True)
def test_the_simulator_error_is_raised_even_when_the_intent_cannot_be_recorded_again(
    firm, universe, audit_transactional_db, monkeypatch, funded
):
    """The second error is the cause of the simulator's, which stays the one raised; nothing is stored."""
    import trading.services.orders as orders

    account, btc = funded

    def broken(self, request):
        raise RuntimeError("simulator down")

    real_record = orders._record

    def record(**kwargs):
        if kwargs["simulate_with"] is None:
            raise ValueError("database gone")
        return real_record(**kwargs)

    monkeypatch.setattr(SimBroker, "submit", broken)
    monkeypatch.setattr(orders, "_record", record)
    with pytest.raises(RuntimeError, match="simulator down") as raised:
        submit(account, btc, "buy")
    assert isinstance(raised.value.__cause__, ValueError)
    assert not Order.objects.filter(account=account).exists()
    assert Balance.objects.get(account=account, broker="sim", asset="USD").reserved == 0
    assert audit_chain_verify() is None
