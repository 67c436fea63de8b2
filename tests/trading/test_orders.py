"""The order service on the simulated broker: intent first, idempotent, reservations, fills, PnL, audit."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from governance.actors import SystemActor
from governance.models import AuditEvent
from trading.matching import Bar
from trading.models import Balance, FeedStatus, Fill, Order, OrderStatus, Position, Trade
from trading.services.orders import (
    OrderError,
    order_cancel,
    order_record,
    order_submit,
    sim_balance_set,
    sim_orders_match_bar,
)
from trading.services.reconcile import reconcile_account

ENGINE = SystemActor("strategy_cycle")


def set_price(instrument, price) -> None:
    """The live feed's last price, fresh now."""
    FeedStatus.objects.update_or_create(
        instrument=instrument,
        defaults={"last_price": D(price), "last_message_at": timezone.now(), "stale": False},
    )


def order_actions(order) -> list[str]:
    events = AuditEvent.objects.filter(target_type="trading.order", target_id=str(order.pk)).order_by("seq")
    return list(events.values_list("action", flat=True))


def balance(account, asset, broker="sim") -> Balance:
    return Balance.objects.get(account=account, broker=broker, asset=asset)


@pytest.fixture
def btc(universe):
    instrument = universe["BTC/USD"]
    set_price(instrument, "50000")
    return instrument


@pytest.fixture
def funded(firm):
    sim_balance_set(
        account=firm.alice_account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test"
    )
    return firm.alice_account


def buy(account, instrument, qty, **kwargs):
    kwargs.setdefault("order_type", "market")
    return order_submit(
        account=account, actor=ENGINE, instrument=instrument, side="buy", quantity=D(qty), **kwargs
    )


def sell(account, instrument, qty, **kwargs):
    kwargs.setdefault("order_type", "market")
    return order_submit(
        account=account, actor=ENGINE, instrument=instrument, side="sell", quantity=D(qty), **kwargs
    )


def test_a_market_buy_fills_in_simulation_net_of_the_taker_fee(funded, btc):
    order = buy(funded, btc, "0.1", reason="test entry")
    assert order.status == OrderStatus.FILLED
    assert order.broker == "sim"
    fill = Fill.objects.get(order=order)
    # Market buy at the touch (50,000) plus the default slippage, taker fee 0.40 % of the notional.
    assert fill.price >= D("50000")
    assert fill.liquidity == "taker"
    notional = fill.price * fill.quantity
    assert fill.fee == (notional * D("0.004")).quantize(D("0.0001"), rounding="ROUND_UP")
    position = Position.objects.get(account=funded, broker="sim", instrument=btc)
    assert position.quantity == D("0.1")
    assert position.average_cost == ((notional + fill.fee) / D("0.1")).quantize(D("1e-12"))
    usd = balance(funded, "USD")
    assert usd.total == D("10000") - notional - fill.fee
    assert usd.reserved == 0  # the reservation is released once the order is done
    assert balance(funded, "BTC").total == D("0.1")
    assert order_actions(order) == ["order.submit", "order.filled"]


def test_the_same_client_order_id_returns_the_existing_order_and_sends_nothing(funded, btc):
    first = buy(funded, btc, "0.01", client_order_id="intent-1")
    again = buy(funded, btc, "0.01", client_order_id="intent-1")
    assert again.pk == first.pk
    assert Order.objects.filter(client_order_id="intent-1").count() == 1
    assert Fill.objects.filter(order=first).count() == 1
    with pytest.raises(OrderError, match="already used by a different order"):
        buy(funded, btc, "0.02", client_order_id="intent-1")


def test_a_buy_beyond_available_usd_is_rejected_with_the_numbers_and_reserves_nothing(funded, btc):
    order = buy(funded, btc, "0.5")  # 25,000 USD against 10,000
    assert order.status == OrderStatus.REJECTED
    assert "insufficient USD" in order.status_reason
    assert "10000" in order.status_reason
    assert balance(funded, "USD").reserved == 0
    assert not Fill.objects.exists()
    assert order_actions(order) == ["order.rejected"]


def test_a_sell_never_exceeds_what_is_held(funded, btc):
    buy(funded, btc, "0.01")
    order = sell(funded, btc, "0.02")
    assert order.status == OrderStatus.REJECTED
    assert "exceeds the 0.01" in order.status_reason
    assert "never sold" in order.status_reason
    assert Position.objects.get(account=funded, instrument=btc).quantity == D("0.01")


def test_kraken_precision_and_minimums_are_enforced_before_any_broker(funded, btc):
    too_precise = buy(funded, btc, "0.000010001")  # BTC/USD lots have 8 decimals
    assert too_precise.status == OrderStatus.REJECTED
    assert "decimal" in too_precise.status_reason or "precision" in too_precise.status_reason
    too_small = buy(funded, btc, "0.00001")  # below Kraken's ordermin of 0.00005 BTC
    assert too_small.status == OrderStatus.REJECTED
    assert "minimum" in too_small.status_reason
    assert not Fill.objects.exists()


def test_a_round_trip_writes_a_trade_with_net_pnl(funded, btc):
    entry = buy(funded, btc, "0.1")
    set_price(btc, "55000")
    exit_ = sell(funded, btc, "0.1")
    assert exit_.status == OrderStatus.FILLED
    trade = Trade.objects.get(account=funded)
    buy_fill, sell_fill = Fill.objects.get(order=entry), Fill.objects.get(order=exit_)
    expected = (sell_fill.price * D("0.1") - sell_fill.fee) - (buy_fill.price * D("0.1") + buy_fill.fee)
    assert trade.net_pnl == expected
    assert trade.fees == buy_fill.fee + sell_fill.fee
    assert sell_fill.realised_pnl == expected
    assert Position.objects.get(account=funded, instrument=btc).quantity == 0
    assert balance(funded, "BTC").total == 0
    assert balance(funded, "USD").total == D("10000") + expected


def test_a_resting_limit_order_reserves_then_fills_on_the_next_bar_as_maker(funded, btc):
    order = buy(funded, btc, "0.1", order_type="limit", limit_price=D("49000"))
    assert order.status == OrderStatus.OPEN
    # Reserved at the limit plus the taker fee (the worst it could pay): 0.1 x 49,000 x 1.004 = 4,919.60.
    assert order.reserved_amount == D("4919.60000")
    assert balance(funded, "USD").reserved == D("4919.60000")
    now = timezone.now()
    bar = Bar(
        open=D("49500"),
        high=D("49800"),
        low=D("48900"),
        close=D("49100"),
        volume=D("10"),
        open_time=now - timedelta(hours=1),
        close_time=now,
    )
    touched = sim_orders_match_bar(instrument=btc, bar=bar)
    assert [o.pk for o in touched] == [order.pk]
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED
    fill = Fill.objects.get(order=order)
    assert (fill.price, fill.liquidity) == (D("49000"), "maker")
    assert fill.fee == D("12.2500")  # 4,900 x 0.25 % maker
    assert balance(funded, "USD").reserved == 0
    assert balance(funded, "USD").total == D("10000") - D("4900") - D("12.25")


def test_canceling_a_resting_order_releases_its_reservation(funded, btc, firm):
    order = buy(funded, btc, "0.1", order_type="limit", limit_price=D("40000"))
    canceled = order_cancel(order=order, actor=firm.owner, reason="changed my mind")
    assert canceled.status == OrderStatus.CANCELED
    assert canceled.status_reason == "changed my mind"
    assert balance(funded, "USD").reserved == 0
    assert order_actions(order) == ["order.submit", "order.open", "order.canceled"]


def test_only_directors_and_the_engine_place_orders(funded, btc, firm):
    with pytest.raises(PermissionDenied):
        order_submit(
            account=funded,
            actor=firm.viewer,
            instrument=btc,
            side="buy",
            order_type="market",
            quantity=D("0.01"),
        )
    with pytest.raises(PermissionDenied):
        order_submit(
            account=funded,
            actor=firm.director,
            instrument=btc,
            side="buy",
            order_type="market",
            quantity=D("0.01"),
        )
    placed = order_submit(
        account=funded, actor=firm.owner, instrument=btc, side="buy", order_type="market", quantity=D("0.01")
    )
    assert placed.placed_by == "user:alice"
    assert placed.placed_by_user == firm.owner


def test_without_a_market_price_an_order_is_rejected_with_the_reason(funded, universe):
    order = buy(funded, universe["ETH/USD"], "0.1")
    assert order.status == OrderStatus.REJECTED
    assert "no market price for ETH/USD" in order.status_reason


def test_a_worker_killed_before_sending_is_closed_by_reconciliation_never_resent(funded, btc, settings):
    settings.RECONCILE_GRACE_SECONDS = 0
    order, created = order_record(
        account=funded, actor=ENGINE, instrument=btc, side="buy", order_type="market", quantity=D("0.01")
    )
    assert created
    assert order.status == OrderStatus.NEW
    assert balance(funded, "USD").reserved > 0
    report = reconcile_account(account=funded, actor=SystemActor("reconcile"))
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED
    assert "not resent" in order.status_reason
    assert report.never_arrived == [order.client_order_id]
    assert not Fill.objects.exists()
    assert balance(funded, "USD").reserved == 0


def test_reconciliation_repairs_a_reservation_that_drifted_and_says_so(funded, btc):
    Balance.objects.filter(account=funded, asset="USD").update(reserved=D("123"))
    report = reconcile_account(account=funded, actor=SystemActor("reconcile"))
    assert report.balance_drift == {"USD": {"reserved": "123.000000000000", "open_orders": "0"}}
    assert balance(funded, "USD").reserved == 0
    event = AuditEvent.objects.filter(action="reconcile").latest("seq")
    assert event.details["balance_drift"]["USD"]["reserved"] == "123.000000000000"


def test_simulated_balances_cannot_be_set_below_reservations(funded, btc, firm):
    buy(funded, btc, "0.1", order_type="limit", limit_price=D("40000"))
    with pytest.raises(Exception, match="reserved by open simulated orders"):
        sim_balance_set(account=funded, asset="USD", amount=D("100"), actor=firm.owner, reason="test")


def test_simulated_accounts_are_funded_in_usd_only(firm):
    with pytest.raises(Exception, match="funded in USD only"):
        sim_balance_set(account=firm.alice_account, asset="BTC", amount=D("1"), actor=firm.owner, reason="x")


def test_an_open_sell_order_counts_against_what_may_still_be_sold(funded, btc):
    buy(funded, btc, "0.02")
    resting = sell(funded, btc, "0.015", order_type="limit", limit_price=D("60000"))
    assert resting.status == OrderStatus.OPEN
    second = sell(funded, btc, "0.01")
    assert second.status == OrderStatus.REJECTED
    assert "0.005" in second.status_reason  # 0.02 held, 0.015 already offered


def test_a_simulator_failure_keeps_the_committed_intent_and_is_raised(funded, btc):
    def broken(account, name):
        raise RuntimeError("simulator bug")

    with pytest.raises(RuntimeError, match="simulator bug"):
        order_submit(
            account=funded,
            actor=ENGINE,
            instrument=btc,
            side="buy",
            order_type="market",
            quantity=D("0.01"),
            client_order_id="intent-kept",
            broker_factory=broken,
        )
    order = Order.objects.get(client_order_id="intent-kept")
    assert order.status == OrderStatus.NEW
    assert order.reserved_amount > 0
    assert order_actions(order) == ["order.submit"]
    assert not Fill.objects.exists()


def test_a_new_simulated_order_left_by_a_failure_can_be_sent_once(funded, btc):
    from trading.services.orders import order_send

    def broken(account, name):
        raise RuntimeError("simulator bug")

    with pytest.raises(RuntimeError):
        buy(funded, btc, "0.01", client_order_id="retry-me", broker_factory=broken)
    order = Order.objects.get(client_order_id="retry-me")
    sent = order_send(order_id=order.pk, actor=ENGINE)
    assert sent.status == OrderStatus.FILLED
    again = order_send(order_id=order.pk, actor=ENGINE)  # a second send changes nothing
    assert again.status == OrderStatus.FILLED
    assert Fill.objects.filter(order=order).count() == 1
    assert balance(funded, "USD").reserved == 0


@pytest.mark.parametrize("gate", ["halted", "latched", "trading_disabled"])
def test_no_buy_is_recorded_while_the_account_may_not_open_positions_but_sells_pass(funded, btc, firm, gate):
    from datetime import date

    from accounts.services import account_set_trading_enabled
    from risk.models import KillSwitch

    buy(funded, btc, "0.02")
    if gate == "trading_disabled":
        account_set_trading_enabled(actor=firm.owner, account=funded, enabled=False, reason="test")
    else:
        KillSwitch.objects.create(
            account=funded,
            status="tripped" if gate == "latched" else "armed",
            tripped_on=date(2026, 11, 21) if gate == "latched" else None,
            reason="daily drawdown 3.1 % >= 3 %" if gate == "latched" else "",
            halted=gate == "halted",
            halt_reason="director's halt" if gate == "halted" else "",
        )
    funded.refresh_from_db()
    refused = buy(funded, btc, "0.01")
    assert refused.status == OrderStatus.REJECTED
    assert "no new positions" in refused.status_reason
    exit_ = sell(funded, btc, "0.02")
    assert exit_.status == OrderStatus.FILLED
