"""KrakenBroker against the fake Kraken server, through the real ccxt client: outcomes, walls, faults.

Every fault test counts what reached the exchange (the fake's request log and its orders)."""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from accounts.models import Account
from tests.fakes.kraken_rest import Fault, KrakenError
from trading.brokers import private_lock
from trading.brokers.base import (
    Broker,
    BrokerRefused,
    BrokerUnavailable,
    OrderKind,
    OrderRequest,
    PairRules,
    Side,
    Status,
)
from trading.brokers.kraken import (
    KrakenBroker,
    KrakenKeys,
    check_credentials,
    order_params,
    private_client,
)
from trading.selectors import pair_rules_for

BTC_USD = "BTC/USD"
ALLOWED_ADDORDER_PARAMS = {"nonce", "pair", "type", "ordertype", "volume", "price", "cl_ord_id", "oflags"}


@pytest.fixture(autouse=True)
def close_lock_connections():
    """The PostgreSQL lock keeps a connection per thread: close them so the test database can be dropped."""
    yield
    private_lock.close_lock_connections()


@pytest.fixture
def kraken(fake_kraken, settings, tmp_path, db):
    settings.KRAKEN_API_URL = fake_kraken.url
    settings.KRAKEN_LOCK_DIR = str(tmp_path / "locks")
    settings.KRAKEN_PRIVATE_BACKOFF_MS = 1
    settings.KRAKEN_PRIVATE_RETRIES = 3
    fake_kraken.set_price(BTC_USD, "84000", bid="83990", ask="84010")
    return fake_kraken


@pytest.fixture
def creds(kraken):
    return kraken.add_account(balances={"ZUSD": "100000", "XXBT": "2"})


@pytest.fixture
def keys(creds):
    return KrakenKeys(creds.api_key, creds.secret)


@pytest.fixture
def live_account(firm):
    account = firm.alice_account
    account.simulation_mode = False
    account.save()
    return account


@pytest.fixture
def sleeps():
    return []


@pytest.fixture
def make_broker(kraken, keys, live_account, universe, sleeps):
    brokers = []

    def make(account=None, *, timeout_ms=None):
        def factory(keys, *, account_id):
            return private_client(keys, account_id=account_id, timeout_ms=timeout_ms)

        broker = KrakenBroker(account or live_account, keys=keys, client_factory=factory, sleep=sleeps.append)
        brokers.append(broker)
        return broker

    yield make
    for broker in brokers:
        broker.close()


@pytest.fixture
def broker(make_broker):
    return make_broker()


def rules(instrument, **changes) -> PairRules:
    return replace(pair_rules_for(instrument), **changes)


_counter = iter(range(1, 10**6))


def order(
    universe,
    account,
    kind=OrderKind.MARKET,
    side=Side.BUY,
    quantity="0.01",
    *,
    limit=None,
    stop=None,
    cid=None,
    **pair_changes,
) -> OrderRequest:
    return OrderRequest(
        account_id=account.pk,
        client_order_id=cid or f"test-{next(_counter)}",
        pair=rules(universe[BTC_USD], **pair_changes),
        side=side,
        kind=kind,
        quantity=Decimal(quantity),
        limit_price=Decimal(limit) if limit is not None else None,
        stop_price=Decimal(stop) if stop is not None else None,
    )


# ---------------------------------------------------------------------------------------- credentials


def test_keys_and_broker_never_show_the_key_or_secret(keys, broker):
    for text in (repr(keys), str(keys), repr(broker), str(broker), repr(broker._client)):
        assert keys.secret not in text
        assert keys.api_key not in text
    assert repr(keys) == "KrakenKeys(api_key=<hidden>, secret=<hidden>)"
    assert isinstance(broker, Broker)


def test_check_credentials_answers_with_krakens_verdict(kraken, keys, creds):
    ok, message = check_credentials(account_id=7, keys=keys)
    assert ok, message
    assert check_credentials(account_id=7, keys=KrakenKeys("unknown-key", keys.secret)) == (
        False,
        KrakenError.INVALID_KEY,
    )
    other_secret = kraken.add_account().secret
    ok, message = check_credentials(account_id=7, keys=KrakenKeys(keys.api_key, other_secret))
    assert (ok, message) == (False, KrakenError.INVALID_SIGNATURE)
    ok, message = check_credentials(account_id=7, keys=KrakenKeys(keys.api_key, "not base64 at all!"))
    assert not ok
    assert "not base64 at all!" not in message
    (balance, *_) = kraken.requests("Balance", api_key=creds.api_key)
    assert balance.outcome == "ok"


def test_check_credentials_reports_an_unreachable_kraken(keys, settings, tmp_path, db):
    settings.KRAKEN_API_URL = "http://127.0.0.1:9"  # discard port: nothing listens
    settings.KRAKEN_LOCK_DIR = str(tmp_path)
    settings.KRAKEN_PRIVATE_RETRIES = 0
    ok, message = check_credentials(account_id=7, keys=keys)
    assert not ok
    assert message.startswith("Kraken could not be reached")
    assert keys.secret not in message


def test_a_private_request_cannot_be_signed_outside_the_accounts_lock(kraken, keys):
    client = private_client(keys, account_id=3)
    with pytest.raises(private_lock.PrivateLockNotHeld, match="outside private_calls"):
        client.privatePostBalance()
    with private_lock.private_calls(4), pytest.raises(private_lock.PrivateLockNotHeld):
        client.privatePostBalance()  # another account's lock does not count
    assert kraken.requests("Balance") == []
    with private_lock.private_calls(3):
        assert "ZUSD" in client.privatePostBalance()["result"]
    client.close()


# ---------------------------------------------------------------------------------- the simulation wall


def test_a_simulated_account_never_reaches_trading_endpoints_but_may_read(
    kraken, creds, firm, universe, make_broker
):
    simulated = firm.bob_account
    assert simulated.simulation_mode
    broker = make_broker(simulated)
    with pytest.raises(BrokerRefused, match="is in simulation mode: Kraken's private trading endpoints"):
        broker.submit(order(universe, simulated))
    with pytest.raises(BrokerRefused, match="simulation mode"):
        broker.cancel(client_order_id="x", exchange_order_id=None)
    assert kraken.private_trading_calls() == []
    assert {b.asset for b in broker.balances()} == {"USD", "BTC"}  # reads are allowed
    assert broker.open_orders() == []


def test_the_wall_rereads_the_mode_from_the_database(kraken, creds, live_account, universe, broker):
    assert broker.submit(order(universe, live_account)).status == Status.FILLED
    Account.objects.filter(pk=live_account.pk).update(simulation_mode=True)  # switched elsewhere
    assert live_account.simulation_mode is False  # the broker's instance is stale: it must not trust it
    with pytest.raises(BrokerRefused):
        broker.submit(order(universe, live_account))
    assert [c.endpoint for c in kraken.private_trading_calls(creds.api_key)] == ["AddOrder"]


def test_an_order_of_another_account_is_refused(kraken, firm, universe, broker):
    with pytest.raises(BrokerRefused, match="belongs to account"):
        broker.submit(order(universe, firm.bob_account))
    assert kraken.private_trading_calls() == []


# -------------------------------------------------------------------------------------------- orders


def test_a_market_order_fills_and_carries_its_client_id_and_fciq(
    kraken, creds, live_account, universe, broker
):
    request = order(universe, live_account, quantity="0.01", cid="cid-market-1")
    report = broker.submit(request)

    (placed,) = kraken.orders(creds.api_key)
    assert (report.status, report.exchange_order_id, report.client_order_id) == (
        Status.FILLED,
        placed.txid,
        "cid-market-1",
    )
    assert (report.filled_quantity, report.average_price) == (Decimal("0.01"), Decimal("84010"))
    (fill,) = report.fills
    assert (fill.price, fill.quantity, fill.fee, fill.fee_currency, fill.liquidity, fill.symbol) == (
        Decimal("84010"),
        Decimal("0.01"),
        Decimal("3.3604"),  # 840.10 USD at the 0.40 % taker fee
        "USD",
        "taker",
        BTC_USD,
    )
    (add,) = kraken.requests("AddOrder")
    assert add.params == {
        "nonce": add.params["nonce"],
        "pair": "XXBTZUSD",
        "type": "buy",
        "ordertype": "market",
        "volume": "0.01000000",
        "cl_ord_id": "cid-market-1",
        "oflags": "fciq",
    }


def test_a_limit_order_rests_fills_partly_and_cancels_keeping_the_fill(
    kraken, creds, live_account, universe, broker
):
    request = order(universe, live_account, OrderKind.LIMIT, Side.SELL, "0.5", limit="90000.0")
    report = broker.submit(request)
    assert (report.status, report.filled_quantity, report.fills) == (Status.OPEN, Decimal(0), ())
    assert kraken.requests("AddOrder")[0].params["price"] == "90000.0"

    kraken.fill(report.exchange_order_id, "0.2")
    partial = broker.fetch_order(request.client_order_id)
    assert (partial.status, partial.filled_quantity, partial.average_price) == (
        Status.PARTIALLY_FILLED,
        Decimal("0.2"),
        Decimal("90000.0"),
    )
    (fill,) = partial.fills
    assert (fill.liquidity, fill.client_order_id, fill.exchange_order_id) == (
        "maker",
        request.client_order_id,
        report.exchange_order_id,
    )
    assert [o.client_order_id for o in broker.open_orders()] == [request.client_order_id]

    canceled = broker.cancel(client_order_id=request.client_order_id, exchange_order_id=None)
    assert (canceled.status, canceled.filled_quantity, len(canceled.fills)) == (
        Status.CANCELED,
        Decimal("0.2"),
        1,
    )
    assert broker.open_orders() == []
    assert kraken.requests("CancelOrder")[0].params["cl_ord_id"] == request.client_order_id


def test_cancel_after_a_fill_reports_the_fill(kraken, live_account, universe, broker):
    request = order(universe, live_account, OrderKind.LIMIT, Side.BUY, "0.1", limit="80000.0")
    report = broker.submit(request)
    kraken.cross(BTC_USD, "79000")
    after = broker.cancel(client_order_id=request.client_order_id, exchange_order_id=report.exchange_order_id)
    assert (after.status, after.filled_quantity, after.reason) == (Status.FILLED, Decimal("0.1"), "")
    (cancel,) = kraken.requests("CancelOrder")
    assert (cancel.params["txid"], cancel.errors) == (report.exchange_order_id, (KrakenError.UNKNOWN_ORDER,))


def test_stop_loss_and_take_profit_send_their_trigger_as_price(kraken, creds, live_account, universe, broker):
    stop = order(universe, live_account, OrderKind.STOP_LOSS, Side.SELL, "0.3", stop="80000.0")
    take = order(universe, live_account, OrderKind.TAKE_PROFIT, Side.SELL, "0.3", stop="90000.0")
    assert broker.submit(stop).status == Status.OPEN
    assert broker.submit(take).status == Status.OPEN
    sent = [(r.params["ordertype"], r.params["price"]) for r in kraken.requests("AddOrder")]
    assert sent == [("stop-loss", "80000.0"), ("take-profit", "90000.0")]

    kraken.set_price(BTC_USD, "79900", bid="79890", ask="79910")
    triggered = broker.fetch_order(stop.client_order_id)
    assert (triggered.status, triggered.average_price, triggered.fills[0].liquidity) == (
        Status.FILLED,
        Decimal("79890"),
        "taker",
    )
    assert broker.fetch_order(take.client_order_id).status == Status.OPEN


def test_no_margin_or_derivative_parameter_for_any_order_type(kraken, live_account, universe, broker):
    requests = [
        order(universe, live_account, OrderKind.MARKET, Side.BUY, "0.01"),
        order(universe, live_account, OrderKind.MARKET, Side.SELL, "0.01"),
        order(universe, live_account, OrderKind.LIMIT, Side.BUY, "0.01", limit="70000.0"),
        order(universe, live_account, OrderKind.STOP_LOSS, Side.SELL, "0.01", stop="70000.0"),
        order(universe, live_account, OrderKind.TAKE_PROFIT, Side.SELL, "0.01", stop="99000.0"),
    ]
    for request in requests:
        assert set(order_params(request)) | {"nonce"} <= ALLOWED_ADDORDER_PARAMS
        assert broker.submit(request).status in (Status.FILLED, Status.OPEN)
    assert kraken.margin_attempts() == []
    assert all(set(r.params) <= ALLOWED_ADDORDER_PARAMS for r in kraken.requests("AddOrder"))


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"quantity": "0.00001"}, "below Kraken's minimum order"),
        ({"quantity": "0.000000001"}, "more than 8 decimals"),
        ({"status": "cancel_only"}, "cancel_only"),
        ({"kind": OrderKind.LIMIT, "limit": "70000.05"}, "tick"),
    ],
)
def test_rules_are_checked_before_anything_is_sent(kraken, live_account, universe, broker, changes, problem):
    changes = dict(changes)
    kind = changes.pop("kind", OrderKind.MARKET)
    request = order(universe, live_account, kind, **changes)
    report = broker.submit(request)
    assert report.status == Status.REJECTED
    assert problem in report.reason
    assert kraken.private_trading_calls() == []


# ------------------------------------------------------------------------------------- Kraken refusals


def test_insufficient_funds_is_rejected_with_krakens_message(kraken, creds, live_account, universe, broker):
    report = broker.submit(order(universe, live_account, quantity="5"))
    assert (report.status, report.reason) == (Status.REJECTED, KrakenError.INSUFFICIENT_FUNDS)
    assert kraken.orders(creds.api_key) == []
    assert len(kraken.requests("AddOrder")) == 1  # not retried


@pytest.mark.parametrize(
    "error",
    [
        KrakenError.ORDER_MINIMUM,
        KrakenError.COST_MINIMUM,
        KrakenError.INVALID_ORDER,
        KrakenError.INVALID_ARGUMENTS,
        KrakenError.PERMISSION_DENIED,
    ],
)
def test_kraken_refusals_are_rejections(kraken, creds, live_account, universe, broker, error):
    kraken.inject("AddOrder", Fault.kraken_error(error))
    report = broker.submit(order(universe, live_account))
    assert (report.status, report.reason) == (Status.REJECTED, error)
    assert kraken.orders(creds.api_key) == []
    assert len(kraken.requests("AddOrder")) == 1


def test_a_market_in_cancel_only_mode_is_a_rejection_not_a_network_doubt(
    kraken, creds, live_account, universe, broker
):
    kraken.set_pair_status(BTC_USD, "cancel_only")  # our copy of the rules still says online
    report = broker.submit(order(universe, live_account))
    assert (report.status, report.reason) == (Status.REJECTED, KrakenError.CANCEL_ONLY)
    assert [r.endpoint for r in kraken.requests(api="private")] == ["AddOrder"]  # no lookup: Kraken answered


# ------------------------------------------------------------------------------------ retried answers


@pytest.mark.parametrize(
    "error", [KrakenError.RATE_LIMIT, KrakenError.ORDER_RATE_LIMIT, KrakenError.SERVICE_BUSY]
)
def test_a_passing_rate_limit_is_backed_off_and_the_order_placed_once(
    kraken, creds, live_account, universe, broker, sleeps, error
):
    kraken.inject("AddOrder", Fault.kraken_error(error), times=2)
    report = broker.submit(order(universe, live_account))
    (placed,) = kraken.orders(creds.api_key)
    assert (report.status, report.exchange_order_id) == (Status.FILLED, placed.txid)
    assert [r.outcome for r in kraken.requests("AddOrder")] == ["fault", "fault", "ok"]
    assert len(sleeps) == 2
    assert all(0 < delay <= 0.016 for delay in sleeps)  # jittered, from the 1 ms base


def test_a_lasting_rate_limit_is_rejected_as_not_placed(
    kraken, creds, live_account, universe, broker, sleeps
):
    kraken.inject("AddOrder", Fault.kraken_error(KrakenError.ORDER_RATE_LIMIT), times=10)
    report = broker.submit(order(universe, live_account))
    assert report.status == Status.REJECTED
    assert report.reason == f"rate limited by Kraken; not placed ({KrakenError.ORDER_RATE_LIMIT})"
    assert kraken.orders(creds.api_key) == []
    assert len(kraken.requests("AddOrder")) == 4  # the first attempt and KRAKEN_PRIVATE_RETRIES=3 more
    assert len(sleeps) == 3


def test_reads_back_off_on_rate_limits_and_give_up_as_unavailable(kraken, creds, broker, sleeps):
    kraken.inject("BalanceEx", Fault.kraken_error(KrakenError.RATE_LIMIT), times=2)
    assert {b.asset: b.total for b in broker.balances()} == {"USD": Decimal("100000"), "BTC": Decimal("2")}
    kraken.inject("OpenOrders", Fault.kraken_error(KrakenError.RATE_LIMIT), times=10)
    with pytest.raises(BrokerUnavailable, match="OpenOrders failed after 4 attempt"):
        broker.open_orders()
    assert len(sleeps) == 5


def test_an_invalid_nonce_is_retried_with_a_fresh_nonce(
    kraken, creds, live_account, universe, broker, sleeps
):
    kraken.inject("AddOrder", Fault.kraken_error(KrakenError.INVALID_NONCE))
    report = broker.submit(order(universe, live_account))
    (placed,) = kraken.orders(creds.api_key)
    assert (report.status, report.exchange_order_id) == (Status.FILLED, placed.txid)
    first, second = kraken.requests("AddOrder")
    assert int(second.params["nonce"]) > int(first.params["nonce"])
    assert sleeps == []  # no need to wait for a fresh nonce


def test_a_key_used_outside_the_stream_far_ahead_is_refused_as_not_placed(
    kraken, creds, live_account, universe, broker
):
    """Someone used the key with a nonce ten minutes ahead of ours: every fresh nonce is still behind it,
    so after the bounded retries the order is refused, never sent again later behind anyone's back."""
    stranger = private_client(KrakenKeys(creds.api_key, creds.secret), account_id=999)
    stranger.nonce = lambda: private_lock.now_ms() + 600_000
    stranger.privatePostBalance()
    report = broker.submit(order(universe, live_account))
    assert report.status == Status.REJECTED
    assert report.reason == f"Kraken kept refusing the nonce; not placed ({KrakenError.INVALID_NONCE})"
    assert [r.errors for r in kraken.requests("AddOrder")] == [(KrakenError.INVALID_NONCE,)] * 4
    assert kraken.orders(creds.api_key) == []
    stranger.close()


# ------------------------------------------------------------------------------- doubt after AddOrder


@pytest.mark.parametrize(
    ("kind", "expected"),
    [(OrderKind.MARKET, Status.FILLED), (OrderKind.LIMIT, Status.OPEN)],
)
def test_a_timeout_after_kraken_accepted_finds_the_one_order(
    kraken, creds, live_account, universe, make_broker, kind, expected
):
    broker = make_broker(timeout_ms=300)
    kraken.inject("AddOrder", Fault.timeout_after_accept(delay=1.5))
    limit = "80000.0" if kind == OrderKind.LIMIT else None
    report = broker.submit(order(universe, live_account, kind, limit=limit))
    (placed,) = kraken.orders(creds.api_key)
    assert (report.status, report.exchange_order_id) == (expected, placed.txid)
    assert len(kraken.requests("AddOrder")) == 1  # never resent
    lookups = [r.endpoint for r in kraken.requests(api="private")][1:]
    assert lookups[0] == "OpenOrders"


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_status(502),
        Fault.http_status(503),
        Fault.malformed_json(),
        Fault.truncated_body(process=False),
    ],
    ids=["502", "503", "malformed", "truncated"],
)
def test_doubt_with_nothing_placed_is_unknown_and_not_resent(
    kraken, creds, live_account, universe, broker, fault
):
    kraken.inject("AddOrder", fault)
    report = broker.submit(order(universe, live_account))
    assert report.status == Status.UNKNOWN
    assert "Kraken has no order with this client id yet; not resent" in report.reason
    assert kraken.orders(creds.api_key) == []
    assert len(kraken.requests("AddOrder")) == 1
    assert [r.endpoint for r in kraken.requests(api="private")] == ["AddOrder", "OpenOrders", "ClosedOrders"]


@pytest.mark.parametrize(
    "fault",
    [
        Fault.http_status(502, process=True),
        Fault.malformed_json(process=True),
        Fault.truncated_body(),
        Fault.kraken_error(KrakenError.INTERNAL_ERROR, process=True),
    ],
    ids=["502", "malformed", "truncated", "internal-error"],
)
def test_doubt_with_the_order_placed_reports_what_kraken_has(
    kraken, creds, live_account, universe, broker, fault
):
    kraken.inject("AddOrder", fault)
    request = order(universe, live_account)
    report = broker.submit(request)
    (placed,) = kraken.orders(creds.api_key)
    assert (report.status, report.exchange_order_id, report.client_order_id) == (
        Status.FILLED,
        placed.txid,
        request.client_order_id,
    )
    assert len(report.fills) == 1
    assert len(kraken.requests("AddOrder")) == 1


def test_when_the_lookup_fails_too_the_order_stays_unknown(kraken, creds, live_account, universe, broker):
    kraken.inject("AddOrder", Fault.http_status(502, process=True))
    kraken.inject("OpenOrders", Fault.http_status(503), times=10)
    report = broker.submit(order(universe, live_account))
    assert report.status == Status.UNKNOWN
    assert "asking Kraken failed too" in report.reason
    assert len(kraken.orders(creds.api_key)) == 1
    assert len(kraken.requests("AddOrder")) == 1


def test_a_second_submission_of_a_live_client_id_returns_the_existing_order(
    kraken, creds, live_account, universe, broker
):
    request = order(universe, live_account, OrderKind.LIMIT, limit="70000.0")
    first = broker.submit(request)
    again = broker.submit(request)
    (placed,) = kraken.orders(creds.api_key)
    assert (first.exchange_order_id, again.exchange_order_id, again.status) == (
        placed.txid,
        placed.txid,
        Status.OPEN,
    )
    assert kraken.requests("AddOrder")[1].errors == (KrakenError.DUPLICATE_ORDER,)


def test_the_lock_backend_down_means_not_placed(
    kraken, creds, live_account, universe, broker, settings, tmp_path
):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    settings.KRAKEN_LOCK_DIR = str(blocker / "locks")
    settings.REDIS_URL = None
    if private_lock.backend_name() != "file":
        pytest.skip("the file backend is only used with SQLite")
    report = broker.submit(order(universe, live_account))
    assert report.status == Status.REJECTED
    assert report.reason.startswith("not placed: cannot open the Kraken private-call lock file")
    assert kraken.requests(api="private") == []


# -------------------------------------------------------------------------------------------- reads


def test_balances_use_common_codes_with_holds(kraken, creds, live_account, universe, broker):
    broker.submit(order(universe, live_account, OrderKind.LIMIT, Side.BUY, "0.1", limit="80000.0"))
    balances = {b.asset: b for b in broker.balances()}
    assert set(balances) == {"USD", "BTC"}
    assert (balances["USD"].total, balances["USD"].reserved) == (Decimal("100000"), Decimal("8032"))
    assert (balances["BTC"].total, balances["BTC"].reserved) == (Decimal("2"), Decimal(0))


def test_fetch_order_of_an_unknown_client_id_is_none(kraken, broker):
    assert broker.fetch_order("never-sent") is None


def test_fills_since_pages_through_the_history_oldest_first(kraken, creds, live_account, universe, broker):
    before = datetime.now(UTC) - timedelta(seconds=1)
    sent = []
    for _ in range(55):  # more than one 50-trade page
        request = order(universe, live_account, quantity="0.001")
        assert broker.submit(request).status == Status.FILLED
        sent.append(request.client_order_id)
    fills = broker.fills_since(before)
    assert [f.client_order_id for f in fills] == sent
    assert len({f.trade_id for f in fills}) == 55
    assert all(f.fee_currency == "USD" and f.symbol == BTC_USD for f in fills)
    assert [r.params["ofs"] for r in kraken.requests("TradesHistory")] == ["0", "50"]
    later = broker.fills_since(fills[49].executed_at)
    assert [f.trade_id for f in later] == [f.trade_id for f in fills if f.executed_at > fills[49].executed_at]


# ------------------------------------------------------------------------------------------- secrets


def test_the_secret_never_reaches_logs_or_exceptions(kraken, creds, live_account, universe, broker, caplog):
    caplog.set_level(logging.DEBUG)
    broker.submit(order(universe, live_account))
    kraken.inject("OpenOrders", Fault.http_status(503), times=10)
    with pytest.raises(BrokerUnavailable) as raised:
        broker.open_orders()
    check_credentials(account_id=live_account.pk, keys=KrakenKeys(creds.api_key, "bm90IHRoZSBzZWNyZXQ="))
    assert "API-Key" in caplog.text  # ccxt did log the request headers…
    for secret in (creds.secret, creds.api_key):  # …without the key or the secret
        assert secret not in caplog.text
        assert secret not in str(raised.value)
        assert secret not in repr(raised.value)
