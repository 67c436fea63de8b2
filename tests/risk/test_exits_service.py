"""Exits stored on the position and watched bar by bar: the plan on an entry fill, a trailing stop that never
loosens (persisted), a stop that sells the position, a take-profit that clears the fees, and on a live
account the protective stop resting on (the fake) Kraken, canceled before the exit's sell."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.utils import timezone

from accounts.models import Account
from governance.actors import SystemActor
from governance.models import AuditEvent
from risk import engine
from risk.exits import exits_evaluate
from risk.pretrade import order_submit_checked
from risk.services import killswitch_halt, risk_policy_update
from trading.brokers.kraken import KrakenBroker, KrakenKeys
from trading.fees import published_rates
from trading.matching import Bar, Quote
from trading.models import Candle, FeedStatus, Order, OrderStatus, Position, Trade
from trading.quotes import MemoryQuoteSource
from trading.services.orders import sim_balance_set
from trading.services.reconcile import reconcile_account

ENGINE = SystemActor("strategy_cycle")
EDGE = D("2")
PERCENT_EXITS = {
    "stop_loss_kind": "percent",
    "stop_loss_value": D("2"),
    "take_profit_kind": "percent",
    "take_profit_value": D("4"),
    "trailing_kind": "percent",
    "trailing_value": D("3"),
}


def fresh(price: str) -> Quote:
    return Quote.from_last(D(price), timezone.now() - timedelta(seconds=5))


def bar(low: str, high: str, *, hour: int = 0) -> Bar:
    """A bar after the entry (the plan ignores bars that closed before it was made)."""
    opened = timezone.now() + timedelta(hours=hour)
    mid = (D(low) + D(high)) / 2
    return Bar(mid, D(high), D(low), mid, D("5"), opened, opened + timedelta(hours=1))


def events(account, action: str):
    return list(AuditEvent.objects.filter(account=account, action=action).order_by("seq"))


def position_of(account, instrument, broker="sim") -> Position:
    return Position.objects.get(account=account, broker=broker, instrument=instrument)


@pytest.fixture
def book(firm, universe):
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("100000"), actor=firm.owner, reason="test funds")
    risk_policy_update(account=account, actor=firm.owner, **PERCENT_EXITS)
    quotes = MemoryQuoteSource({"BTC/USD": fresh("50000")})
    return account, universe["BTC/USD"], quotes


def enter(book, qty="0.1"):
    account, btc, quotes = book
    return order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D(qty),
        reason="strategy",
        expected_edge_pct=EDGE,
        quotes=quotes,
    )


# --- The plan ---------------------------------------------------------------------------------------------


def test_an_entry_fill_stores_its_exit_plan_on_the_position_audited(book):
    account, btc, _ = book
    order = enter(book).order
    assert order.status == OrderStatus.FILLED
    entry = order.average_fill_price  # 50,000 plus 5 bps of slippage
    assert entry == D("50025")
    position = position_of(account, btc)
    assert position.exit_entry_price == entry
    assert position.stop_price == position.initial_stop_price == D("49024.5")  # 2 % below, up to the tick
    assert position.take_profit_price == D("52026")  # 4 % above
    assert position.trail_high == entry
    assert (position.trailing_pct, position.trailing_distance) == (D("3"), None)
    assert position.exit_planned_at is not None
    (event,) = events(account, "risk.exits_planned")
    assert event.actor == "system:strategy_cycle"
    assert event.details["stop_price"] == "49024.500000000000"
    assert event.target_id == str(position.pk)


def test_an_atr_plan_reads_the_closed_candles(book, firm, settings):
    account, btc, _ = book
    risk_policy_update(
        account=account,
        actor=firm.owner,
        stop_loss_kind="atr",
        stop_loss_value=D("2"),
        take_profit_kind="atr",
        take_profit_value=D("3"),
        trailing_kind="atr",
        trailing_value=D("2.5"),
    )
    start = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=20)
    Candle.objects.bulk_create(
        Candle(
            instrument=btc,
            timeframe=settings.AETHER_TIMEFRAME,
            open_time=start + timedelta(hours=i),
            open=D("50000"),
            high=D("50250"),
            low=D("49750"),
            close=D("50000"),
            volume=D("3"),
            source="replay",
        )
        for i in range(20)
    )
    enter(book)
    position = position_of(account, btc)
    # ATR = 500: stop 2 ATR below 50,025, take-profit 3 ATR above, the trail fixed at 2.5 ATR.
    assert position.stop_price == D("49025")
    assert position.take_profit_price == D("51525")
    assert position.trailing_distance == D("1250")


def test_an_atr_plan_without_any_volatility_is_audited_as_unplanned_and_the_fill_stands(book, firm):
    account, btc, _ = book
    risk_policy_update(
        account=account,
        actor=firm.owner,
        stop_loss_kind="atr",
        stop_loss_value=D("2"),
        take_profit_kind="atr",
        take_profit_value=D("3"),
        trailing_kind="atr",
        trailing_value=D("2.5"),
    )
    order = enter(book).order
    assert order.status == OrderStatus.FILLED
    assert position_of(account, btc).exit_planned_at is None
    (event,) = events(account, "risk.exits_unplanned")
    assert "volatility" in event.details["problem"]


# --- Watching bars ----------------------------------------------------------------------------------------


def test_the_trailing_stop_rises_with_the_high_and_never_loosens_across_bars(book):
    account, btc, quotes = book
    enter(book)
    exits_evaluate(instrument=btc, bar=bar("50000", "51000"), quotes=quotes)
    position = position_of(account, btc)
    assert (position.trail_high, position.stop_price) == (D("51000"), D("49470"))  # 3 % under the high
    exits_evaluate(instrument=btc, bar=bar("49600", "50500", hour=1), quotes=quotes)
    position = position_of(account, btc)
    assert (position.trail_high, position.stop_price) == (D("51000"), D("49470"))  # not loosened
    exits_evaluate(instrument=btc, bar=bar("50900", "52000", hour=2), quotes=quotes)
    position = position_of(account, btc)
    assert (position.trail_high, position.stop_price) == (D("52000"), D("50440"))
    assert position.initial_stop_price == D("49024.5")
    assert [e.details["to"] for e in events(account, "risk.stop_ratcheted")] == [
        "49470.000000000000",
        "50440.000000000000",
    ]
    assert position.quantity == D("0.1")


def test_a_stop_hit_on_a_bar_sells_the_whole_position_and_clears_the_plan(book):
    account, btc, quotes = book
    enter(book)
    quotes.set("BTC/USD", fresh("49000"))
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("48900", "50100"), quotes=quotes)
    assert outcome.signal.reason == engine.ExitReason.STOP_LOSS
    sell = outcome.checked.order
    assert (sell.side, sell.order_type, sell.quantity, sell.status) == ("sell", "market", D("0.1"), "FILLED")
    assert sell.reason == "price fell to 48900, through the stop-loss at 49024.5"
    assert sell.placed_by == "system:risk_exits"
    position = position_of(account, btc)
    assert position.quantity == 0
    assert position.exit_planned_at is None
    assert position.stop_price is None
    assert [e.action for e in AuditEvent.objects.filter(account=account).order_by("seq")][-4:] == [
        "risk.exit_signal",
        "order.submit",
        "order.filled",
        "risk.exits_cleared",
    ]


def test_a_stop_exit_goes_through_while_the_account_is_halted(book, firm):
    account, btc, quotes = book
    enter(book)
    killswitch_halt(account=account, actor=firm.owner, reason="director's halt")
    quotes.set("BTC/USD", fresh("49000"))
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("48900", "50100"), quotes=quotes)
    assert outcome.checked.order.status == OrderStatus.FILLED
    assert position_of(account, btc).quantity == 0


def test_a_take_profit_clears_the_round_trip_fees(book, firm):
    account, btc, quotes = book
    # A take-profit of 0.2 % would not even pay the 2 x 0.40 % taker fees: the plan lifts it.
    risk_policy_update(
        account=account,
        actor=firm.owner,
        stop_loss_value=D("0.1"),
        take_profit_value=D("0.2"),
        trailing_enabled=False,
    )
    enter(book)
    position = position_of(account, btc)
    entry = position.exit_entry_price
    assert position.take_profit_price > entry * D("1.002")
    breakeven = engine.breakeven_price(entry_price=entry, fees=published_rates(), slippage_pct=D("0.05"))
    assert position.take_profit_price >= breakeven * D("1.001")
    assert position.trail_high is None
    target = position.take_profit_price
    quotes.set("BTC/USD", fresh(str(target)))
    (outcome,) = exits_evaluate(instrument=btc, bar=bar(str(entry), str(target)), quotes=quotes)
    assert outcome.signal.reason == engine.ExitReason.TAKE_PROFIT
    assert outcome.checked.order.status == OrderStatus.FILLED
    trade = Trade.objects.get(account=account, instrument=btc)
    assert trade.net_pnl > 0  # after both taker fees and the exit's slippage


def test_a_bar_from_before_the_entry_is_ignored(book):
    account, btc, quotes = book
    enter(book)
    outcomes = exits_evaluate(instrument=btc, bar=bar("40000", "50100", hour=-3), quotes=quotes)
    assert outcomes == []
    assert position_of(account, btc).quantity == D("0.1")


# --- Live: the protective stop on Kraken ------------------------------------------------------------------


@pytest.fixture
def kraken_env(fake_kraken, settings, universe, firm):
    """Alice's account live on the fake Kraken with 100,000 USD (as in tests/trading/test_order_kraken.py)."""
    settings.KRAKEN_API_URL = fake_kraken.url
    settings.KRAKEN_PRIVATE_TIMEOUT_MS = 1500
    settings.RECONCILE_GRACE_SECONDS = 0
    creds = fake_kraken.add_account(balances={"ZUSD": "100000"})
    fake_kraken.set_price("XXBTZUSD", "50000", bid="49999.9", ask="50000.1")
    account = firm.alice_account
    Account.objects.filter(pk=account.pk).update(simulation_mode=False)
    account.refresh_from_db()
    keys = KrakenKeys(api_key=creds.api_key, secret=creds.secret)

    def factory(account, name):
        assert name == "kraken"
        return KrakenBroker(account, keys=keys)

    btc = universe["BTC/USD"]
    FeedStatus.objects.create(
        instrument=btc, last_price=D("50000"), last_message_at=timezone.now(), stale=False
    )
    risk_policy_update(account=account, actor=firm.owner, **PERCENT_EXITS)
    reconcile_account(account=account, actor=SystemActor("reconcile"), broker_factory=factory)
    return fake_kraken, creds, account, factory, btc


def test_a_live_entry_rests_one_protective_stop_on_kraken_canceled_before_the_exit_sell(kraken_env):
    fake, creds, account, factory, btc = kraken_env
    entry = order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        reason="strategy",
        expected_edge_pct=EDGE,
        broker_factory=factory,
    )
    assert entry.order.status == OrderStatus.FILLED
    position = position_of(account, btc, broker="kraken")
    assert position.stop_price == D("49000.1")  # 2 % under the 50,000.1 fill, up to the tick

    _buy, stop = fake.orders(creds.api_key)
    assert (stop.side, stop.ordertype, stop.status) == ("sell", "stop-loss", "open")
    resting = Order.objects.get(account=account, order_type="stop-loss")
    assert (stop.volume, stop.price, stop.cl_ord_id) == (D("0.01"), D("49000.1"), resting.client_order_id)
    assert (resting.reason, resting.status, resting.stop_price) == ("protective stop", "OPEN", D("49000.1"))

    # The engine sees a bar through the stop before Kraken's trigger does (the fake's last price is 50,000).
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("48900", "50100"), broker_factory=factory)
    assert outcome.problems == ()
    assert outcome.checked.order.status == OrderStatus.FILLED

    orders = fake.orders(creds.api_key)
    assert [(o.side, o.ordertype) for o in orders] == [
        ("buy", "market"),
        ("sell", "stop-loss"),
        ("sell", "market"),
    ]
    assert orders[1].status == "canceled"
    resting.refresh_from_db()
    assert resting.status == OrderStatus.CANCELED
    assert resting.closed_at <= outcome.checked.order.created_at
    assert position_of(account, btc, broker="kraken").quantity == 0


def test_when_the_protective_stop_already_sold_there_is_nothing_left_to_sell(kraken_env):
    fake, creds, account, factory, btc = kraken_env
    order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        reason="strategy",
        expected_edge_pct=EDGE,
        broker_factory=factory,
    )
    fake.set_price("XXBTZUSD", "48000", bid="47999.9", ask="48000.1")  # the crash triggers the stop on Kraken
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("47900", "50100"), broker_factory=factory)
    assert outcome.problems == ()
    assert outcome.checked is None  # the cancel found it FILLED: no second sell
    assert [(o.side, o.ordertype) for o in fake.orders(creds.api_key)] == [
        ("buy", "market"),
        ("sell", "stop-loss"),
    ]
    position = position_of(account, btc, broker="kraken")
    assert position.quantity == 0
    assert position.exit_planned_at is None


def test_the_celery_task_watches_a_stored_closed_bar_by_ids(book, settings):
    from risk.tasks import exits_evaluate as task

    account, btc, _ = book
    enter(book)
    opened = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    Candle.objects.create(
        instrument=btc,
        timeframe=settings.AETHER_TIMEFRAME,
        open_time=opened,
        open=D("50000"),
        high=D("51000"),
        low=D("50000"),
        close=D("50800"),
        volume=D("4"),
        source="replay",
    )
    assert task(btc.pk, opened.isoformat()) == 1
    assert position_of(account, btc).stop_price == D("49470")


def test_a_bar_is_evaluated_once_even_when_two_paths_see_it(book):
    """The feed's task and the account's cycle may both watch the same bar: the second look does nothing
    (a ratchet or an exit is never counted twice)."""
    account, btc, quotes = book
    enter(book)
    same = bar("50000", "51000")
    exits_evaluate(instrument=btc, bar=same, quotes=quotes)
    exits_evaluate(instrument=btc, bar=same, quotes=quotes, account=account)
    assert len(events(account, "risk.stop_ratcheted")) == 1
    through = bar("48000", "50500", hour=1)
    (first,) = exits_evaluate(instrument=btc, bar=through, quotes=quotes)
    again = exits_evaluate(instrument=btc, bar=through, quotes=quotes)
    assert first.signal is not None
    assert [outcome for outcome in again if outcome.signal is not None] == []
    assert Order.objects.filter(account=account, side="sell").count() == 1
    assert len(events(account, "risk.exit_signal")) == 1


def test_only_the_given_accounts_position_is_watched(book, firm, universe):
    account, btc, quotes = book
    enter(book)
    assert (
        exits_evaluate(instrument=btc, bar=bar("50000", "51000"), quotes=quotes, account=firm.bob_account)
        == []
    )
    assert position_of(account, btc).trail_high != D("51000")


def test_the_resting_stop_on_kraken_follows_the_trailing_stop_in_steps(kraken_env, settings):
    fake, creds, account, factory, btc = kraken_env
    settings.PROTECTIVE_STOP_STEP_PCT = D("1")
    order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        reason="strategy",
        expected_edge_pct=EDGE,
        broker_factory=factory,
    )
    first = Order.objects.get(account=account, order_type="stop-loss", status="OPEN")
    assert first.stop_price == D("49000.1")
    # A small rise (the stop moves up less than 1 %): the resting stop stays where it is.
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("50000", "50600"), broker_factory=factory)
    assert outcome.problems == ()
    position = position_of(account, btc, broker="kraken")
    assert position.stop_price > first.stop_price
    assert position.stop_price < first.stop_price * D("1.01")
    assert Order.objects.filter(account=account, order_type="stop-loss").count() == 1
    # A larger rise: the old stop is canceled on Kraken and a new one rests at the ratcheted stop.
    fake.set_price("XXBTZUSD", "51800", bid="51799.9", ask="51800.1")
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("51000", "52000", hour=1), broker_factory=factory)
    assert outcome.problems == ()
    position = position_of(account, btc, broker="kraken")
    first.refresh_from_db()
    assert first.status == OrderStatus.CANCELED
    moved = Order.objects.get(account=account, order_type="stop-loss", status="OPEN")
    assert moved.stop_price == position.stop_price == D("50440")
    stops = [o for o in fake.orders(creds.api_key) if o.ordertype == "stop-loss"]
    assert [(o.status, o.price) for o in stops] == [("canceled", D("49000.1")), ("open", D("50440"))]
    assert position.quantity == D("0.01")


def test_an_exit_that_failed_half_way_is_sent_again_by_a_retry_of_the_same_bar(book, monkeypatch):
    """The bar's stop fired but its sell never went out (here the cancel of a resting sell raised): the bar
    is not marked watched, so the retried cycle evaluates it again and sells."""
    from risk import exits

    account, btc, quotes = book
    enter(book)
    through = bar("48000", "50500")
    real = exits.resting_sells_cancel

    def unreachable(**kwargs):
        raise ConnectionError("exchange unreachable (test)")

    monkeypatch.setattr(exits, "resting_sells_cancel", unreachable)
    with pytest.raises(ConnectionError):
        exits_evaluate(instrument=btc, bar=through, quotes=quotes)
    assert not Order.objects.filter(account=account, side="sell").exists()
    monkeypatch.setattr(exits, "resting_sells_cancel", real)
    (outcome,) = exits_evaluate(instrument=btc, bar=through, quotes=quotes)
    assert outcome.checked.order.status == OrderStatus.FILLED
    assert position_of(account, btc).quantity == 0
    assert len(events(account, "risk.exit_signal")) == 2  # seen twice, sold once


def test_a_rejected_replacement_stop_is_reported_and_audited_as_unprotected(
    kraken_env, settings, monkeypatch
):
    from risk import exits

    fake, _creds, account, factory, btc = kraken_env
    order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        reason="strategy",
        expected_edge_pct=EDGE,
        broker_factory=factory,
    )
    fake.set_price("XXBTZUSD", "51800", bid="51799.9", ask="51800.1")
    real = exits.protective_stop_place

    def refused(**kwargs):
        placed = real(**kwargs)
        Order.objects.filter(pk=placed.pk).update(status=OrderStatus.REJECTED, status_reason="EOrder:test")
        placed.refresh_from_db()
        return placed

    monkeypatch.setattr(exits, "protective_stop_place", refused)
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("51000", "52000"), broker_factory=factory)
    assert outcome.problems
    assert "REJECTED" in outcome.problems[0]
    (event,) = events(account, "risk.position_unprotected")
    assert event.details["pair"] == "BTC/USD"


def test_a_directors_resting_sell_is_left_alone_and_reported(kraken_env):
    from trading.services.orders import order_cancel, order_submit

    fake, _creds, account, factory, btc = kraken_env
    order_submit_checked(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        reason="strategy",
        expected_edge_pct=EDGE,
        broker_factory=factory,
    )
    stop = Order.objects.get(account=account, order_type="stop-loss")
    order_cancel(order=stop, actor=ENGINE, reason="a director's limit instead", broker_factory=factory)
    limit = order_submit(
        account=account,
        actor=ENGINE,
        instrument=btc,
        side="sell",
        order_type="limit",
        quantity=D("0.01"),
        limit_price=D("60000"),
        reason="director: take profit at 60k",
        broker_factory=factory,
    )
    fake.set_price("XXBTZUSD", "51800", bid="51799.9", ask="51800.1")
    (outcome,) = exits_evaluate(instrument=btc, bar=bar("51000", "52000"), broker_factory=factory)
    assert "other resting sells hold the position" in outcome.problems[0]
    limit.refresh_from_db()
    assert limit.status == OrderStatus.OPEN
