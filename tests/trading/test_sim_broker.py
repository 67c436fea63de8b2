"""SimBroker against the database: it reads the simulated book (Order/Fill/Balance rows with broker="sim")
of its own account only, answers with the broker interface's values, and never writes a row."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from trading.brokers.base import Broker, OrderRequest, Side, Status
from trading.brokers.sim import SimBroker
from trading.fees import published_rates
from trading.matching import Bar, Quote, SlippageModel, log_return_volatility
from trading.models import AccountFeeTier, Balance, Candle, FeedStatus, Fill, Order, OrderStatus
from trading.quotes import DatabaseQuoteSource, MemoryQuoteSource
from trading.services.orders import order_request

D = Decimal
NOW = datetime(2026, 9, 25, 12, 0, tzinfo=UTC)
FIVE_BPS = SlippageModel(bps=D(5), impact=D(0))
_ids = itertools.count(1)


@pytest.fixture
def btc(universe):
    return universe["BTC/USD"]


def live_quote(price="60000.0", **extra) -> Quote:
    extra.setdefault("fresh_until", NOW + timedelta(seconds=30))
    return Quote.from_last(D(price), NOW - timedelta(seconds=2), **extra)


def broker_for(account, quote: Quote | None = None, symbol="BTC/USD") -> SimBroker:
    quotes = MemoryQuoteSource({symbol: quote} if quote is not None else {})
    return SimBroker(account, quotes=quotes, slippage=FIVE_BPS, clock=lambda: NOW)


def fund(account, asset, total, reserved="0", broker="sim") -> Balance:
    return Balance.objects.create(
        account=account, broker=broker, asset=asset, total=D(total), reserved=D(reserved)
    )


def make_order(
    account,
    instrument,
    *,
    side="buy",
    order_type="market",
    quantity="0.01",
    limit=None,
    stop=None,
    status=OrderStatus.SUBMITTED,
    broker="sim",
    kraken_order_id="",
    reserved_asset="",
    reserved_amount="0",
) -> Order:
    return Order.objects.create(
        account=account,
        client_order_id=f"cid-{next(_ids)}",
        kraken_order_id=kraken_order_id,
        broker=broker,
        instrument=instrument,
        side=side,
        order_type=order_type,
        quantity=D(quantity),
        limit_price=None if limit is None else D(limit),
        stop_price=None if stop is None else D(stop),
        status=status,
        reserved_asset=reserved_asset,
        reserved_amount=D(reserved_amount),
        placed_by="system:tests",
    )


def request_of(order: Order) -> OrderRequest:
    """The request exactly as the order service builds it from the row."""
    return order_request(order)


def book_snapshot(account):
    return (
        list(
            Order.objects.filter(account=account).values_list("status", "kraken_order_id", "reserved_amount")
        ),
        list(Balance.objects.filter(account=account).values_list("asset", "total", "reserved")),
        Fill.objects.count(),
    )


def test_sim_broker_speaks_the_broker_interface(firm):
    broker = SimBroker(firm.alice_account)
    assert isinstance(broker, Broker)
    assert broker.name == "sim"


# --- submit --------------------------------------------------------------------------------------------


def test_market_buy_fills_at_once_with_the_published_taker_fee_and_writes_nothing(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000", reserved="700")
    order = make_order(account, btc, reserved_asset="USD", reserved_amount="700")
    before = book_snapshot(account)

    report = broker_for(account, live_quote()).submit(request_of(order))

    # 60,000.0 * 1.0005 = 60,030.0; 0.01 * 60,030.0 = 600.300 USD * 0.40 % (published taker) = 2.4012 USD.
    assert report.status == Status.FILLED
    assert report.exchange_order_id.startswith("SIM-O")
    assert (report.filled_quantity, report.average_price) == (D("0.01"), D("60030.0"))
    (fill,) = report.fills
    assert fill.trade_id.startswith("SIM-")
    assert fill.trade_id != report.exchange_order_id
    assert (fill.exchange_order_id, fill.client_order_id, fill.symbol, fill.side) == (
        report.exchange_order_id,
        order.client_order_id,
        "BTC/USD",
        Side.BUY,
    )
    assert (fill.price, fill.quantity, fill.fee, fill.fee_currency, fill.liquidity, fill.executed_at) == (
        D("60030.0"),
        D("0.01"),
        D("2.4012"),
        "USD",
        "taker",
        NOW,
    )
    assert book_snapshot(account) == before


def test_fees_follow_the_accounts_recorded_kraken_tier(firm, btc):
    account = firm.alice_account
    AccountFeeTier.objects.create(
        account=account,
        instrument=btc,
        maker_pct=D("0.14"),
        taker_pct=D("0.24"),
        volume_30d_usd=D(60000),
        fetched_at=NOW,
    )
    fund(account, "USD", "10000")
    report = broker_for(account, live_quote()).submit(request_of(make_order(account, btc)))
    # 600.300 USD * 0.24 % = 1.44072 → rounded up to USD's 4 decimals: 1.4408.
    assert report.fills[0].fee == D("1.4408")
    # Bob has no recorded tier: the published 0.40 % applies to him.
    fund(firm.bob_account, "USD", "10000")
    bob = broker_for(firm.bob_account, live_quote()).submit(request_of(make_order(firm.bob_account, btc)))
    assert bob.fills[0].fee == D("2.4012")


def test_ids_are_unique(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    broker = broker_for(account, live_quote())
    reports = [broker.submit(request_of(make_order(account, btc))) for _ in range(3)]
    assert len({report.exchange_order_id for report in reports}) == 3
    assert len({report.fills[0].trade_id for report in reports}) == 3


def test_a_limit_that_does_not_cross_rests_open(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    order = make_order(account, btc, order_type="limit", limit="59000.0")
    report = broker_for(account, live_quote()).submit(request_of(order))
    assert report.status == Status.OPEN
    assert report.exchange_order_id.startswith("SIM-O")
    assert report.fills == ()
    assert report.filled_quantity == 0


def test_kraken_rules_reject_with_every_reason(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    order = make_order(account, btc, order_type="limit", quantity="0.00001", limit="60000.05")
    report = broker_for(account, live_quote()).submit(request_of(order))
    assert report.status == Status.REJECTED
    assert report.reason == (
        "0.00001 BTC is below Kraken's minimum order of 0.00005 BTC for BTC/USD; "
        "the limit price 60000.05 is not a multiple of BTC/USD's tick of 0.1 USD"
    )
    assert report.exchange_order_id is None


def test_a_pair_kraken_has_halted_is_rejected(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    btc.status = "cancel_only"
    report = broker_for(account, live_quote()).submit(request_of(make_order(account, btc)))
    assert report.status == Status.REJECTED
    assert report.reason == "BTC/USD is cancel_only on Kraken: only cancellations are accepted"


def test_no_price_or_a_stale_price_rejects(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    report = broker_for(account, None).submit(request_of(make_order(account, btc)))
    assert report.status == Status.REJECTED
    assert report.reason.startswith("no market price for BTC/USD yet")

    stale = live_quote(fresh_until=NOW - timedelta(seconds=1))
    report = broker_for(account, stale).submit(request_of(make_order(account, btc)))
    assert report.status == Status.REJECTED
    assert report.reason == (
        "the last BTC/USD price (60000 USD at 2026-09-25 11:59:58 UTC) is stale: "
        "the simulator does not fill against an old price"
    )


def test_a_buy_beyond_the_usd_available_is_rejected(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "500")
    report = broker_for(account, live_quote()).submit(request_of(make_order(account, btc)))
    # 600.300 + 2.4012 fee = 602.7012 USD > 500.
    assert report.status == Status.REJECTED
    assert report.reason == (
        "insufficient funds: buying 0.01 BTC costs 602.7012 USD with fees, "
        "500 USD available in the simulated book"
    )


def test_the_orders_own_reservation_counts_as_available(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "1000", reserved="1000")
    mine = make_order(account, btc, reserved_asset="USD", reserved_amount="1000")
    assert broker_for(account, live_quote()).submit(request_of(mine)).status == Status.FILLED
    # The same balance, but reserved by another order: nothing is left for this one.
    other = make_order(account, btc)
    report = broker_for(account, live_quote()).submit(request_of(other))
    assert report.status == Status.REJECTED
    assert report.reason.endswith("0 USD available in the simulated book")


def test_a_reservation_taken_in_the_same_transaction_pays_without_reading_the_book_unless_short(
    firm, btc, django_assert_num_queries
):
    """``order_record`` tells the simulator what the new order reserved; when that covers the cost the
    balance is not read again, and when it does not (a fill dearer than the reservation's margin) the book
    decides as before."""
    account = firm.alice_account
    fund(account, "USD", "700", reserved="610")
    mine = make_order(account, btc, reserved_asset="USD", reserved_amount="610")
    taken = {mine.client_order_id: ("USD", D("610"))}
    quotes = MemoryQuoteSource({"BTC/USD": live_quote()})
    broker = SimBroker(
        account,
        quotes=quotes,
        slippage=FIVE_BPS,
        clock=lambda: NOW,
        reservations=taken.get,
        instruments={"BTC/USD": btc}.get,
        fees=lambda **_: published_rates(),
    )
    with django_assert_num_queries(0):
        assert broker.submit(request_of(mine)).status == Status.FILLED  # 602.7012 USD ≤ 610 reserved
    # Reserved less than the fill costs: the book is read, and 600 USD (all of it this order's) is short.
    short = make_order(account, btc, reserved_asset="USD", reserved_amount="600")
    taken[short.client_order_id] = ("USD", D("600"))
    Balance.objects.filter(account=account, asset="USD").update(total=D("600"), reserved=D("600"))
    report = broker.submit(request_of(short))
    assert report.status == Status.REJECTED
    assert report.reason.endswith("600 USD available in the simulated book")


def test_a_sell_beyond_the_base_available_is_rejected(firm, btc):
    account = firm.alice_account
    fund(account, "BTC", "0.005")
    fund(account, "BTC", "1", broker="kraken")  # the live book is not the simulated one
    report = broker_for(account, live_quote()).submit(request_of(make_order(account, btc, side="sell")))
    assert report.status == Status.REJECTED
    assert report.reason == (
        "insufficient funds: selling 0.01 BTC, 0.005 BTC available in the simulated book"
    )
    Balance.objects.filter(account=account, broker="sim", asset="BTC").update(total=D("0.02"))
    report = broker_for(account, live_quote()).submit(request_of(make_order(account, btc, side="sell")))
    # Sold at the bid less slippage: 60,000.0 * 0.9995 = 59,970.0.
    assert (report.status, report.average_price) == (Status.FILLED, D("59970.0"))


def test_a_resting_buy_limit_needs_its_limit_cost_and_maker_fee(firm, btc):
    account = firm.alice_account
    balance = fund(account, "USD", "591")
    order = make_order(account, btc, order_type="limit", limit="59000.0")
    # 0.01 * 59,000.0 = 590.000 + 0.25 % maker fee 1.4750 = 591.475 USD > 591.
    report = broker_for(account, live_quote()).submit(request_of(order))
    assert report.status == Status.REJECTED
    assert "costs 591.475 USD with fees, 591 USD available" in report.reason
    balance.total = D("592")
    balance.save()
    assert broker_for(account, live_quote()).submit(request_of(order)).status == Status.OPEN


# --- cancel and reads ----------------------------------------------------------------------------------


def test_cancel_reports_canceled_or_what_the_order_already_is(firm, btc):
    account = firm.alice_account
    broker = broker_for(account)
    resting = make_order(
        account, btc, order_type="limit", limit="59000.0", status=OrderStatus.OPEN, kraken_order_id="SIM-OA"
    )
    report = broker.cancel(client_order_id=resting.client_order_id, exchange_order_id="SIM-OA")
    assert (report.status, report.exchange_order_id, report.filled_quantity) == (Status.CANCELED, "SIM-OA", 0)

    filled = make_order(account, btc, status=OrderStatus.FILLED, kraken_order_id="SIM-OB")
    report = broker.cancel(client_order_id=filled.client_order_id, exchange_order_id="SIM-OB")
    assert (report.status, report.reason) == (Status.FILLED, "already filled: nothing to cancel")

    report = broker.cancel(client_order_id="nobody", exchange_order_id=None)
    assert report.status == Status.REJECTED
    assert "no order with this client order id" in report.reason
    # Bob's order is not alice's to cancel.
    bobs = make_order(firm.bob_account, btc, status=OrderStatus.OPEN, kraken_order_id="SIM-OC")
    assert (
        broker.cancel(client_order_id=bobs.client_order_id, exchange_order_id="SIM-OC").status
        == Status.REJECTED
    )
    assert Order.objects.get(pk=resting.pk).status == OrderStatus.OPEN  # the broker wrote nothing


def add_fill(order, *, trade_id, at, price="60030.0", quantity="0.01", fee="2.4012"):
    return Fill.objects.create(
        account=order.account,
        order=order,
        broker=order.broker,
        instrument=order.instrument,
        side=order.side,
        trade_id=trade_id,
        price=D(price),
        quantity=D(quantity),
        fee=D(fee),
        fee_currency="USD",
        liquidity="taker",
        executed_at=at,
        position_after=D(quantity),
    )


def test_fetch_order_reads_the_sim_book(firm, btc):
    account = firm.alice_account
    broker = broker_for(account)
    order = make_order(account, btc, status=OrderStatus.FILLED, kraken_order_id="SIM-O1")
    Order.objects.filter(pk=order.pk).update(filled_quantity=D("0.01"), average_fill_price=D("60030.0"))
    add_fill(order, trade_id="SIM-T1", at=NOW)

    report = broker.fetch_order(order.client_order_id)
    assert (report.status, report.exchange_order_id, report.filled_quantity, report.average_price) == (
        Status.FILLED,
        "SIM-O1",
        D("0.01"),
        D("60030.0"),
    )
    (fill,) = report.fills
    assert (fill.trade_id, fill.exchange_order_id, fill.price, fill.fee, fill.executed_at) == (
        "SIM-T1",
        "SIM-O1",
        D("60030.0"),
        D("2.4012"),
        NOW,
    )
    # Never accepted by the simulator: it has never seen them.
    assert broker.fetch_order(make_order(account, btc, status=OrderStatus.NEW).client_order_id) is None
    assert broker.fetch_order(make_order(account, btc, status=OrderStatus.SUBMITTED).client_order_id) is None
    assert broker.fetch_order("nobody") is None
    # A rejection has no sim id but is still an answer.
    rejected = make_order(account, btc, status=OrderStatus.REJECTED)
    assert broker.fetch_order(rejected.client_order_id).status == Status.REJECTED
    # Another account's order, and this account's live order, are not in this sim book.
    bobs = make_order(firm.bob_account, btc, status=OrderStatus.OPEN, kraken_order_id="SIM-O2")
    live = make_order(account, btc, status=OrderStatus.OPEN, broker="kraken", kraken_order_id="OABC-1")
    assert broker.fetch_order(bobs.client_order_id) is None
    assert broker.fetch_order(live.client_order_id) is None


def test_open_orders_balances_and_fills_since_are_this_accounts_sim_book_only(firm, btc):
    account = firm.alice_account
    broker = broker_for(account)
    mine = make_order(
        account, btc, order_type="limit", limit="59000.0", status=OrderStatus.OPEN, kraken_order_id="SIM-O1"
    )
    make_order(account, btc, status=OrderStatus.FILLED, kraken_order_id="SIM-O2")
    make_order(account, btc, order_type="limit", limit="59000.0", status=OrderStatus.OPEN, broker="kraken")
    make_order(
        firm.bob_account,
        btc,
        order_type="limit",
        limit="59000.0",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O3",
    )
    assert [report.client_order_id for report in broker.open_orders()] == [mine.client_order_id]

    fund(account, "USD", "1000", reserved="590")
    fund(account, "BTC", "0.5")
    fund(account, "USD", "999999", broker="kraken")
    fund(firm.bob_account, "USD", "5")
    assert [(b.asset, b.total, b.reserved) for b in broker.balances()] == [
        ("BTC", D("0.5"), D(0)),
        ("USD", D("1000"), D("590")),
    ]

    filled = make_order(account, btc, status=OrderStatus.FILLED, kraken_order_id="SIM-O4")
    add_fill(filled, trade_id="SIM-OLD", at=NOW - timedelta(hours=2))
    add_fill(filled, trade_id="SIM-B", at=NOW, quantity="0.004")
    add_fill(filled, trade_id="SIM-A", at=NOW - timedelta(minutes=30), quantity="0.004")
    live = make_order(account, btc, status=OrderStatus.FILLED, broker="kraken", kraken_order_id="OX")
    add_fill(live, trade_id="TX-1", at=NOW)
    bobs = make_order(firm.bob_account, btc, status=OrderStatus.FILLED, kraken_order_id="SIM-O5")
    add_fill(bobs, trade_id="SIM-BOB", at=NOW)
    fills = broker.fills_since(NOW - timedelta(hours=1))
    assert [fill.trade_id for fill in fills] == ["SIM-A", "SIM-B"]
    assert all(fill.exchange_order_id == "SIM-O4" for fill in fills)


# --- resting orders against new market data ------------------------------------------------------------

BAR = Bar(
    open=D("60000.0"),
    high=D("60500.0"),
    low=D("59500.0"),
    close=D("60200.0"),
    volume=D("10"),
    open_time=NOW,
    close_time=NOW + timedelta(hours=1),
)


def test_match_bar_fills_this_accounts_resting_orders_the_bar_reaches(firm, btc, universe):
    account = firm.alice_account
    fund(account, "USD", "10000", reserved="600")
    fund(account, "BTC", "1")
    hit = make_order(
        account,
        btc,
        order_type="limit",
        limit="59800.0",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O1",
        reserved_asset="USD",
        reserved_amount="600",
    )
    make_order(
        account,
        btc,
        side="sell",
        order_type="stop-loss",
        stop="59000.0",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O2",
    )
    make_order(
        account,
        universe["ETH/USD"],
        order_type="limit",
        limit="5000.00",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O3",
    )
    make_order(
        account,
        btc,
        order_type="limit",
        limit="59800.0",
        status=OrderStatus.OPEN,
        broker="kraken",
        kraken_order_id="O-LIVE",
    )
    make_order(account, btc, order_type="limit", limit="59800.0", status=OrderStatus.NEW)
    make_order(
        firm.bob_account,
        btc,
        order_type="limit",
        limit="59800.0",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O4",
    )
    before = book_snapshot(account)

    reports = broker_for(account).match_bar(instrument=btc, bar=BAR)

    (report,) = reports
    assert (report.client_order_id, report.status, report.exchange_order_id) == (
        hit.client_order_id,
        Status.FILLED,
        "SIM-O1",
    )
    (fill,) = report.fills
    # min(59,800, open 60,000) = 59,800.0 as maker; 598.000 USD * 0.25 % = 1.4950; at the bar's close.
    assert (fill.price, fill.quantity, fill.fee, fill.liquidity, fill.executed_at) == (
        D("59800.0"),
        D("0.01"),
        D("1.4950"),
        "maker",
        BAR.close_time,
    )
    assert book_snapshot(account) == before


def test_a_triggered_buy_stop_its_funds_cannot_pay_for_is_canceled(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "604", reserved="604")
    gap = Bar(D("70000.0"), D("70500.0"), D("69900.0"), D("70200.0"), D("10"), NOW, NOW + timedelta(hours=1))
    order = make_order(
        account,
        btc,
        order_type="stop-loss",
        stop="60300.0",
        status=OrderStatus.OPEN,
        kraken_order_id="SIM-O1",
        reserved_asset="USD",
        reserved_amount="604",
    )
    (report,) = broker_for(account).match_bar(instrument=btc, bar=gap)
    # Gap up: 70,000 * 1.0005 = 70,035.0; 700.35 + 2.8014 fee = 703.1514 USD > 604 reserved.
    assert report.status == Status.CANCELED
    assert report.client_order_id == order.client_order_id
    assert report.reason.startswith("canceled by the simulator when it triggered: insufficient funds")
    assert report.fills == ()


def test_match_quote_fills_a_reached_limit_at_its_limit_and_ignores_stale_quotes(firm, btc):
    account = firm.alice_account
    fund(account, "USD", "10000")
    order = make_order(
        account, btc, order_type="limit", limit="59900.0", status=OrderStatus.OPEN, kraken_order_id="SIM-O1"
    )
    broker = broker_for(account)
    assert broker.match_quote(instrument=btc, quote=live_quote("59950.0")) == []
    assert (
        broker.match_quote(
            instrument=btc, quote=live_quote("59850.0", fresh_until=NOW - timedelta(seconds=1))
        )
        == []
    )
    (report,) = broker.match_quote(instrument=btc, quote=live_quote("59850.0"))
    assert report.client_order_id == order.client_order_id
    assert (report.fills[0].price, report.fills[0].liquidity) == (D("59900.0"), "maker")


# --- the database quote source -------------------------------------------------------------------------


def add_candles(instrument, closes, *, start, closed=True, timeframe=60):
    for index, close in enumerate(closes):
        close = D(close)
        Candle.objects.create(
            instrument=instrument,
            timeframe=timeframe,
            open_time=start + timedelta(minutes=timeframe * index),
            open=close,
            high=close + 10,
            low=close - 10,
            close=close,
            volume=D(2),
            closed=closed,
            source="kraken_rest",
        )


def test_database_quotes_from_closed_candles(btc, settings):
    settings.AETHER_TIMEFRAME = 60
    source = DatabaseQuoteSource()
    assert source.quote(btc) is None
    start = NOW - timedelta(hours=3)
    add_candles(btc, ["60000.0", "60600.0", "60300.0"], start=start)
    add_candles(btc, ["99999.0"], start=NOW, closed=False)  # still forming: never a price
    quote = source.quote(btc)
    last_close_time = NOW
    assert (quote.bid, quote.ask, quote.last, quote.at) == (D("60300.0"),) * 3 + (last_close_time,)
    assert quote.fresh_until == last_close_time + timedelta(hours=2)
    assert quote.volatility == log_return_volatility([D("60000.0"), D("60600.0"), D("60300.0")])
    # Bar notionals 2 * close: 120,000 + 121,200 + 120,600 = 361,800 / 3 = 120,600.
    assert quote.bar_notional == D("120600")


def test_database_quotes_prefer_a_newer_live_tick_unless_the_feed_is_stale(btc, settings):
    settings.AETHER_TIMEFRAME = 60
    settings.MARKET_STALE_SECONDS = 90
    add_candles(btc, ["60000.0", "60600.0", "60300.0"], start=NOW - timedelta(hours=3))
    tick_at = NOW + timedelta(minutes=5)
    status = FeedStatus.objects.create(
        instrument=btc, last_price=D("60450.5"), last_message_at=tick_at, stale=False
    )
    quote = DatabaseQuoteSource().quote(btc)
    assert (quote.last, quote.at, quote.fresh_until) == (
        D("60450.5"),
        tick_at,
        tick_at + timedelta(seconds=90),
    )
    assert quote.volatility is not None  # measured on the candles all the same

    status.stale = True
    status.save()
    quote = DatabaseQuoteSource().quote(btc)
    assert (quote.last, quote.at) == (D("60300.0"), NOW)

    # Without any candle, a tick the feed calls stale is stale at once.
    Candle.objects.all().delete()
    quote = DatabaseQuoteSource().quote(btc)
    assert (quote.last, quote.fresh_until) == (D("60450.5"), tick_at)


def test_sim_broker_refuses_to_fill_on_old_candles(firm, btc, settings):
    settings.AETHER_TIMEFRAME = 60
    account = firm.alice_account
    fund(account, "USD", "10000")
    add_candles(btc, ["60000.0", "60600.0", "60300.0"], start=NOW - timedelta(hours=3))
    order = make_order(account, btc)
    # One bar after the last close: still fresh.
    fresh = SimBroker(account, slippage=FIVE_BPS, clock=lambda: NOW + timedelta(hours=1))
    assert fresh.submit(request_of(order)).status == Status.FILLED
    # More than two bars after it: stale.
    late = SimBroker(account, slippage=FIVE_BPS, clock=lambda: NOW + timedelta(hours=2, seconds=1))
    report = late.submit(request_of(order))
    assert report.status == Status.REJECTED
    assert "is stale" in report.reason


def test_default_slippage_comes_from_settings(firm, settings):
    settings.SIM_SLIPPAGE_BPS = D("7")
    settings.SIM_SLIPPAGE_IMPACT = D("0.5")
    assert SimBroker(firm.alice_account).slippage == SlippageModel(bps=D(7), impact=D("0.5"))
