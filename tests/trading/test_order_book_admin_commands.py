"""The order book in the admin (scoped, read-only, cancel through the service) and its operator commands."""

from __future__ import annotations

import csv
import io
from decimal import Decimal as D

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse
from django.utils import timezone

from governance.actors import SystemActor
from governance.models import AuditEvent
from trading.models import Balance, FeedStatus, Order, OrderStatus
from trading.services.orders import order_submit, sim_balance_set

ENGINE = SystemActor("strategy_cycle")


@pytest.fixture
def book(firm, universe):
    """Alice's account with a filled buy, a filled sell and a resting limit; Bob's with one filled buy."""
    btc = universe["BTC/USD"]
    FeedStatus.objects.create(
        instrument=btc, last_price=D("50000"), last_message_at=timezone.now(), stale=False
    )
    for account in (firm.alice_account, firm.bob_account):
        sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=ENGINE, reason="test")

    def place(account, side, qty, **kwargs):
        kwargs.setdefault("order_type", "market")
        return order_submit(
            account=account, actor=ENGINE, instrument=btc, side=side, quantity=D(qty), **kwargs
        )

    orders = {
        "buy": place(firm.alice_account, "buy", "0.02", reason="entry"),
        "sell": place(firm.alice_account, "sell", "0.01", reason="partial exit"),
        "resting": place(firm.alice_account, "buy", "0.01", order_type="limit", limit_price=D("40000")),
        "bob": place(firm.bob_account, "buy", "0.01"),
    }
    assert orders["resting"].status == OrderStatus.OPEN
    return orders


def test_export_trades_writes_every_fill_with_fee_and_pnl(book, firm):
    out, err = io.StringIO(), io.StringIO()
    call_command("export_trades", "--account", "alice", "--since", "2020-01-01", stdout=out, stderr=err)
    rows = list(csv.DictReader(io.StringIO(out.getvalue())))
    assert [row["side"] for row in rows] == ["buy", "sell"]
    buy, sell = rows
    assert buy["client_order_id"] == book["buy"].client_order_id
    assert D(buy["quantity"]) == D("0.02")
    assert D(buy["fee"]) > 0
    assert D(buy["realised_pnl_usd"]) == 0
    fill = book["sell"].fills.get()
    assert D(sell["realised_pnl_usd"]) == fill.realised_pnl
    assert D(sell["position_after"]) == D("0.01")
    assert D(sell["notional_usd"]) == fill.price * fill.quantity
    assert "2 fills of alice" in err.getvalue()
    # Bob's fills never appear in Alice's export, and a later --since leaves out the past.
    assert book["bob"].client_order_id not in out.getvalue()
    later = io.StringIO()
    call_command(
        "export_trades", "--account", "alice", "--since", "2999-01-01", stdout=later, stderr=io.StringIO()
    )
    assert later.getvalue().strip().splitlines() == [",".join(next(csv.reader(io.StringIO(out.getvalue()))))]


def test_export_trades_refuses_an_unknown_account_or_a_bad_date(book):
    with pytest.raises(CommandError, match="no such account"):
        call_command("export_trades", "--account", "nobody", "--since", "2020-01-01", stdout=io.StringIO())
    with pytest.raises(CommandError, match="expected a date"):
        call_command("export_trades", "--account", "alice", "--since", "last tuesday", stdout=io.StringIO())


def test_reconcile_command_reports_and_exits_nonzero_on_drift(book, settings):
    out = io.StringIO()
    call_command("reconcile", "--account", "alice", stdout=out, stderr=io.StringIO())
    assert "reconcile alice (sim)" in out.getvalue()
    Balance.objects.filter(account=book["buy"].account, asset="USD").update(reserved=D("1"))
    with pytest.raises(SystemExit) as exit_info:
        call_command("reconcile", "--account", "alice", stdout=out, stderr=io.StringIO())
    assert exit_info.value.code == 1
    with pytest.raises(CommandError, match="no such account"):
        call_command("reconcile", "--account", "nobody", stdout=io.StringIO(), stderr=io.StringIO())


def test_set_sim_balance_command_is_audited(firm):
    out = io.StringIO()
    call_command("set_sim_balance", "--account", "bob", "--amount", "2500", "--reason", "seed", stdout=out)
    assert "simulated USD = 2500" in out.getvalue()
    event = AuditEvent.objects.filter(action="sim_balance.set").latest("seq")
    assert event.details["after"] == "2500"
    with pytest.raises(CommandError, match="not a number"):
        call_command("set_sim_balance", "--account", "bob", "--amount", "lots", "--reason", "x", stdout=out)


@pytest.mark.parametrize(
    ("persona", "sees_alice", "sees_bob"),
    [("owner", True, False), ("viewer", True, False), ("outsider", False, True), ("superuser", True, True)],
)
def test_the_order_admin_shows_only_the_users_accounts(client, book, firm, persona, sees_alice, sees_bob):
    user = getattr(firm, persona)
    user.is_staff = True
    user.save()
    client.force_login(user)
    page = client.get(reverse("admin:trading_order_changelist"))
    assert page.status_code == 200
    text = page.content.decode()
    assert (f"/trading/order/{book['buy'].pk}/" in text) == sees_alice
    assert (f"/trading/order/{book['bob'].pk}/" in text) == sees_bob
    detail = client.get(reverse("admin:trading_order_change", args=[book["bob"].pk]))
    assert detail.status_code == (200 if sees_bob else 404)
    for name in ("fill", "position", "balance", "trade"):
        assert client.get(reverse(f"admin:trading_{name}_changelist")).status_code == 200


def test_cancel_action_goes_through_the_service_and_viewers_cannot_use_it(client, book, firm):
    resting = book["resting"]
    for user in (firm.viewer, firm.owner):
        user.is_staff = True
        user.save()
    client.force_login(firm.viewer)
    url = reverse("admin:trading_order_changelist")
    client.post(url, {"action": "cancel_orders", "_selected_action": [resting.pk]})
    resting.refresh_from_db()
    assert resting.status == OrderStatus.OPEN
    client.force_login(firm.owner)
    response = client.post(url, {"action": "cancel_orders", "_selected_action": [resting.pk]}, follow=True)
    assert "1 order(s) canceled." in response.content.decode()
    resting.refresh_from_db()
    assert resting.status == OrderStatus.CANCELED
    event = AuditEvent.objects.filter(action="order.canceled").latest("seq")
    assert event.actor == "user:alice"
    assert Order.objects.get(pk=resting.pk).reserved_amount == 0
