"""``aether_site.rows``: the order path's hand-built statements store and read exactly what the ORM does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from aether_site.rows import insert_rows, select_rows, select_values, update_row
from trading.models import Candle, Order, Position

pytestmark = pytest.mark.django_db


def stored(model, pk) -> dict:
    """Every column of a row as the ORM reads it."""
    row = model.objects.get(pk=pk)
    return {field.attname: getattr(row, field.attname) for field in model._meta.concrete_fields}


def new_order(account, instrument, client_order_id: str) -> Order:
    return Order(
        account=account,
        client_order_id=client_order_id,
        broker="sim",
        instrument=instrument,
        side="buy",
        order_type="limit",
        quantity=D("0.012345"),
        limit_price=D("61234.5"),
        reason="rows test",
        placed_by="system:tests",
    )


def test_insert_rows_stores_what_save_stores_and_reads_the_keys_back(firm, universe):
    btc = universe["BTC/USD"]
    by_save = new_order(firm.alice_account, btc, "by-save")
    by_save.save()
    ours = [new_order(firm.alice_account, btc, f"by-rows-{n}") for n in range(3)]
    before = timezone.now()
    with CaptureQueriesContext(connection) as captured:
        insert_rows(ours)
    assert len(captured.captured_queries) == 1
    assert len({order.pk for order in ours}) == 3
    assert all(order.pk is not None and not order._state.adding for order in ours)
    assert all(order._state.db == "default" for order in ours)
    assert all(order.created_at >= before and order.updated_at >= before for order in ours)  # auto_now(_add)
    reference = stored(Order, by_save.pk)
    for order in ours:
        row = stored(Order, order.pk)
        assert row["client_order_id"] == order.client_order_id
        assert row["created_at"] == order.created_at
        for name, value in row.items():
            if name not in ("id", "client_order_id", "created_at", "updated_at"):
                assert value == reference[name], name
    assert insert_rows([]) is None  # nothing to write: no statement


def test_insert_rows_refuses_mixed_models_and_objects_already_stored(firm, universe):
    btc = universe["BTC/USD"]
    order = new_order(firm.alice_account, btc, "stored")
    order.save()
    with pytest.raises(ValueError, match="already has one"):
        insert_rows([order])
    with pytest.raises(TypeError, match="one model"):
        insert_rows([new_order(firm.alice_account, btc, "x"), Position(account=firm.alice_account)])


def test_update_row_writes_the_fields_named_and_auto_now(firm, universe):
    btc = universe["BTC/USD"]
    order = new_order(firm.alice_account, btc, "updated")
    order.save()
    stale_update = order.updated_at
    order.status = "OPEN"
    order.reason = "not written: not named"
    update_row(order, ["status", "updated_at"])
    row = stored(Order, order.pk)
    assert row["status"] == "OPEN"
    assert row["reason"] == "rows test"
    assert row["updated_at"] > stale_update
    order.reason = "written with every field"
    update_row(order)
    assert stored(Order, order.pk)["reason"] == "written with every field"
    Order.objects.filter(pk=order.pk).delete()
    with pytest.raises(Order.DoesNotExist):
        update_row(order)
    with pytest.raises(ValueError, match="stored object"):
        update_row(new_order(firm.alice_account, btc, "never-saved"))


def test_select_rows_and_values_convert_as_the_orm_does(firm, universe):
    btc = universe["BTC/USD"]
    opened = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)
    position = Position.objects.create(
        account=firm.alice_account,
        broker="sim",
        instrument=btc,
        quantity=D("0.5"),
        average_cost=D("60123.456789"),
        opened_at=opened,
        stop_price=None,
    )
    with transaction.atomic():
        (locked,) = select_rows(
            Position,
            "account_id = %s AND broker = %s AND instrument_id = %s",
            [firm.alice_account.pk, "sim", btc.pk],
            limit=1,
            for_update=True,
        )
    assert not locked._state.adding
    assert stored(Position, position.pk) == {
        field.attname: getattr(locked, field.attname) for field in Position._meta.concrete_fields
    }
    assert select_rows(Position, "account_id = %s", [firm.bob_account.pk]) == []

    start = datetime(2026, 1, 1, tzinfo=UTC)
    for n in range(5):
        Candle.objects.create(
            instrument=btc,
            timeframe=60,
            open_time=start + timedelta(hours=n),
            open=D(100 + n),
            high=D(101 + n),
            low=D(99 + n),
            close=D("100.25") + n,
            volume=D("1.5") * (n + 1),
            closed=n < 4,
        )
    ours = select_values(
        Candle,
        ("open_time", "close", "volume"),
        "instrument_id = %s AND timeframe = %s AND closed = %s",
        [btc.pk, 60, True],
        order_by="open_time DESC",
        limit=3,
    )
    orm = list(
        Candle.objects.filter(instrument=btc, timeframe=60, closed=True)
        .order_by("-open_time")
        .values_list("open_time", "close", "volume")[:3]
    )
    assert ours == orm
    assert [type(value) for value in ours[0]] == [datetime, D, D]


@pytest.mark.parametrize(("strength", "clause"), [(True, " FOR UPDATE"), ("no key", " FOR NO KEY UPDATE")])
def test_select_rows_locks_with_the_strength_asked_where_the_engine_has_row_locks(firm, strength, clause):
    account = firm.alice_account
    with transaction.atomic(), CaptureQueriesContext(connection) as captured:
        (locked,) = select_rows(type(account), "id = %s", [account.pk], limit=1, for_update=strength)
    assert locked.pk == account.pk
    assert locked.slug == account.slug
    sql = captured.captured_queries[-1]["sql"]
    if connection.vendor == "postgresql":
        assert sql.endswith(f"LIMIT 1{clause}")
    else:
        assert "FOR " not in sql  # SQLite has no row locks (it locks the database on write)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_select_rows_refuses_a_lock_outside_a_transaction(firm):
    from django.db.transaction import TransactionManagementError

    account = firm.alice_account
    with pytest.raises(TransactionManagementError, match="inside a transaction"):
        select_rows(type(account), "id = %s", [account.pk], limit=1, for_update=True)
