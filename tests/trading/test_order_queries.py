"""How many queries one simulated order costs (a regression guard for the order path)."""

from __future__ import annotations

from decimal import Decimal as D

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from governance.actors import SystemActor
from trading.models import FeedStatus, OrderStatus
from trading.services.orders import order_submit, sim_balance_set


def test_a_simulated_market_order_is_recorded_sent_and_applied_in_a_bounded_number_of_queries(firm, universe):
    btc = universe["BTC/USD"]
    FeedStatus.objects.create(
        instrument=btc, last_price=D("50000"), last_message_at=timezone.now(), stale=False
    )
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("10000"), actor=firm.owner, reason="test")
    with CaptureQueriesContext(connection) as queries:
        order = order_submit(
            account=account,
            actor=SystemActor("strategy_cycle"),
            instrument=btc,
            side="buy",
            order_type="market",
            quantity=D("0.01"),
        )
    assert order.status == OrderStatus.FILLED
    # One transaction: the intent (account lock, id check, kill switch, quote, fee tier, reservation,
    # order + history, audit), then the simulator's reads and the fill applied (position, fill, balances,
    # order + history, audit). 37 statements with the savepoints when this was written (the first order of
    # an account also creates its position and base balance), plus, on PostgreSQL, two per audit event:
    # the account row's key share and the chain's advisory lock.
    bound = 37 + (4 if connection.vendor == "postgresql" else 0)
    assert len(queries.captured_queries) <= bound, "\n".join(q["sql"][:120] for q in queries.captured_queries)
