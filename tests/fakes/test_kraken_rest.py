"""Tests of the fake Kraken REST server, driven by the real ccxt ``kraken`` client and by plain httpx."""

from __future__ import annotations

import json
import re
import time
from decimal import Decimal
from urllib.parse import urlencode

import ccxt
import httpx
import pytest

from tests.fakes.fixtures import kraken_client, requires_kraken_data
from tests.fakes.kraken_rest import (
    FEE_SCHEDULE,
    KRAKEN_DATA_DIR,
    SHARED_DIR,
    Credentials,
    FakeKraken,
    Fault,
    KrakenError,
    kraken_signature,
    verify_signature,
)

pytestmark = requires_kraken_data

BTC_USD = "BTC/USD"
RECORDED_BTC_ASK = 83744.3  # websocket_v2.ticker in recorded_2026-09.json


def load_json(name: str) -> dict:
    return json.loads((KRAKEN_DATA_DIR / name).read_text())


def signed_post(
    fake: FakeKraken, creds: Credentials, method: str, params: dict, *, nonce: int, secret: str | None = None
) -> dict:
    """A private call built by hand: form body, API-Key and API-Sign headers, sent with httpx."""
    path = f"/0/private/{method}"
    body = urlencode({"nonce": str(nonce), **params})
    headers = {
        "API-Key": creds.api_key,
        "API-Sign": kraken_signature(path, nonce, body, secret or creds.secret),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = httpx.post(fake.url + path, content=body, headers=headers, timeout=2)
    assert response.status_code == 200
    return response.json()


def public_get(fake: FakeKraken, method: str, **params) -> dict:
    response = httpx.get(f"{fake.url}/0/public/{method}", params=params, timeout=2)
    assert response.status_code == 200
    return response.json()


def flip_one_char(text: str, index: int = 10) -> str:
    replacement = "A" if text[index] != "A" else "B"
    return text[:index] + replacement + text[index + 1 :]


@pytest.fixture
def trader(fake_kraken: FakeKraken) -> Credentials:
    return fake_kraken.add_account(balances={"ZUSD": "100000", "XXBT": "1.5"})


# ------------------------------------------------------------------------------------------- signing


def test_signature_reproduces_kraken_documented_vector():
    vector = load_json("api_sign_vector.json")
    args = (vector["uri_path"], vector["nonce"], vector["post_data"], vector["private_key"])

    assert kraken_signature(*args) == vector["expected_api_sign"]
    assert verify_signature(*args, vector["expected_api_sign"])
    assert not verify_signature(*args, flip_one_char(vector["expected_api_sign"]))
    tampered_body = vector["post_data"].replace("volume=1.25", "volume=1.26")
    assert not verify_signature(*args[:2], tampered_body, args[3], vector["expected_api_sign"])


def test_server_accepts_the_documented_request_and_rejects_a_changed_signature(fake_kraken):
    vector = load_json("api_sign_vector.json")
    creds = fake_kraken.add_account("doc-key", vector["private_key"], balances={"ZUSD": "100000"})
    url = fake_kraken.url + vector["uri_path"]
    headers = {"API-Key": creds.api_key, "Content-Type": "application/x-www-form-urlencoded"}

    def send(sign: str) -> dict:
        return httpx.post(url, content=vector["post_data"], headers=headers | {"API-Sign": sign}).json()

    assert send(flip_one_char(vector["expected_api_sign"])) == {"error": [KrakenError.INVALID_SIGNATURE]}
    accepted = send(vector["expected_api_sign"])
    assert accepted["error"] == []
    assert accepted["result"]["descr"]["order"] == "buy 1.25000000 XBTUSD @ limit 37500.0"
    assert send(vector["expected_api_sign"]) == {"error": [KrakenError.INVALID_NONCE]}  # replayed as is
    (order,) = fake_kraken.orders(creds.api_key)
    assert (order.side, order.volume, order.price, order.status) == ("buy", Decimal("1.25"), 37500, "open")


def test_nonce_must_strictly_increase_per_key(fake_kraken, trader, make_kraken_client):
    other = fake_kraken.add_account()
    assert signed_post(fake_kraken, trader, "Balance", {}, nonce=1000)["error"] == []
    assert signed_post(fake_kraken, trader, "Balance", {}, nonce=1000) == {
        "error": [KrakenError.INVALID_NONCE]
    }
    assert signed_post(fake_kraken, trader, "Balance", {}, nonce=999) == {
        "error": [KrakenError.INVALID_NONCE]
    }
    assert signed_post(fake_kraken, other, "Balance", {}, nonce=5)["error"] == []  # nonces are per key
    assert signed_post(fake_kraken, trader, "Balance", {}, nonce=1001)["error"] == []

    signed_post(fake_kraken, trader, "Balance", {}, nonce=10**18)  # far ahead of ccxt's millisecond nonce
    with pytest.raises(ccxt.InvalidNonce):
        make_kraken_client(trader).fetch_balance()


def test_unknown_key_and_wrong_secret_are_refused(fake_kraken, trader, make_kraken_client):
    wrong_secret = fake_kraken.add_account().secret  # well-formed, but not this key's
    # ccxt 4.5 has no mapping for EAPI:Invalid signature: it surfaces as a plain ExchangeError.
    with pytest.raises(ccxt.ExchangeError, match="EAPI:Invalid signature"):
        make_kraken_client(trader.api_key, wrong_secret).fetch_balance()
    with pytest.raises(ccxt.AuthenticationError, match="EAPI:Invalid key"):
        make_kraken_client("no-such-key", trader.secret).fetch_balance()

    assert [r.errors for r in fake_kraken.requests("BalanceEx")] == [
        (KrakenError.INVALID_SIGNATURE,),
        (KrakenError.INVALID_KEY,),
    ]
    assert [r.api_key for r in fake_kraken.requests("BalanceEx")] == [trader.api_key, "no-such-key"]


# ---------------------------------------------------------------------------------- reference data


def test_error_strings_are_kraken_catalogue_strings():
    catalogue = {entry["code"] for entry in load_json("error_catalog.json")["errors"]}
    documented_elsewhere = {  # real strings known from ccxt's kraken exception map, or flagged unverified
        KrakenError.INVALID_PRICE,
        KrakenError.INVALID_VIQC,
        KrakenError.UNKNOWN_METHOD,
        KrakenError.DUPLICATE_ORDER,
    }
    ours = {value for name, value in vars(KrakenError).items() if name.isupper()}
    assert ours - documented_elsewhere <= catalogue
    assert len(ours - documented_elsewhere) >= 20


def test_fee_schedule_matches_the_published_one_in_the_readme():
    readme = (SHARED_DIR / "data" / "README.md").read_text()
    paragraph = readme[readme.index("Kraken spot fee schedule") :].split("\n\n", 1)[0]
    multiplier = {"": 1, "k": 1_000, "M": 1_000_000}
    published = [
        (Decimal(amount) * multiplier[suffix], Decimal(maker), Decimal(taker))
        for amount, suffix, maker, taker in re.findall(
            r"(\d+(?:\.\d+)?)(k|M)? → (\d+\.\d+)/(\d+\.\d+)", paragraph
        )
    ]
    assert published == list(FEE_SCHEDULE)


# ------------------------------------------------------------------------------------ public via ccxt


def test_fetch_time_is_the_fake_clock():
    with FakeKraken(clock=lambda: 1790359300.75) as fake:
        client = kraken_client(fake)
        assert client.fetch_time() == 1790359300000
        assert public_get(fake, "Time")["result"]["rfc1123"] == "Fri, 25 Sep 2026 18:01:40 +0000"
        client.close()
    with pytest.raises(RuntimeError, match="not running"):
        _ = fake.url


def test_markets_come_from_recorded_asset_pairs(fake_kraken, make_kraken_client):
    markets = make_kraken_client().load_markets()
    recorded = load_json("recorded_2026-09.json")["rest"]["AssetPairs"]["result"]

    assert {market["id"] for market in markets.values()} == set(recorded)
    btc = markets[BTC_USD]
    assert (btc["id"], btc["altname"], btc["base"], btc["quote"]) == ("XXBTZUSD", "XBTUSD", "BTC", "USD")
    assert btc["limits"]["amount"]["min"] == 0.00005
    assert btc["precision"]["price"] == 0.1
    assert markets["ETH/BTC"]["quote"] == "BTC"
    assert markets["ACA/EUR"]["active"] is False  # recorded in cancel_only
    assert [r.endpoint for r in fake_kraken.requests()] == ["Assets", "AssetPairs"]


def test_ticker_defaults_to_recorded_and_follows_set_price(fake_kraken, make_kraken_client):
    client = make_kraken_client()
    ticker = client.fetch_ticker(BTC_USD)
    assert (ticker["bid"], ticker["ask"], ticker["last"]) == (83744.2, 83744.3, 83744.3)

    fake_kraken.set_price("XXBTZUSD", "84000.0")
    fake_kraken.set_price("ETH/USD", "3200.5", bid="3200.4", ask="3200.6")
    assert client.fetch_ticker(BTC_USD)["last"] == 84000.0
    eth = client.fetch_ticker("ETH/USD")
    assert (eth["bid"], eth["ask"], eth["last"]) == (3200.4, 3200.6, 3200.5)
    with pytest.raises(ccxt.ExchangeError, match="set_price"):
        client.fetch_ticker("SOL/USD")  # a loud test-setup error, not a silent zero price


def test_ohlc_serves_the_forming_candle_and_last(fake_kraken, make_kraken_client):
    client = make_kraken_client()
    raw = client.publicGetOHLC({"pair": "XXBTZUSD", "interval": 60})["result"]
    rows = raw["XXBTZUSD"]
    assert raw["last"] == 1790355600 == rows[-2][0]
    assert rows[-1][0] == raw["last"] + 3600  # the still-forming candle
    assert rows[-1][1:5] == ["83765.3", "84050.3", "83765.3", "84030.6"]

    candles = client.fetch_ohlcv(BTC_USD, "1h")
    assert candles[-1] == [1790359200000, 83765.3, 84050.3, 83765.3, 84030.6, 53.72114923]  # ccxt keeps it
    # Kraken answers under the name asked for when it is a v2 slash name, as recorded.
    assert set(public_get(fake_kraken, "OHLC", pair="BTC/USD", interval=60)["result"]) == {"BTC/USD", "last"}


def test_ohlc_window_is_720_rows_and_since_is_exclusive(fake_kraken, make_kraken_client):
    start = 1_790_000_000 - 1_790_000_000 % 60
    rows = [[start + 60 * i, "100.0", "101.0", "99.0", "100.5", "100.2", "1.5", 3] for i in range(1000)]
    fake_kraken.set_ohlc("XBTUSD", 1, rows)

    result = public_get(fake_kraken, "OHLC", pair="XBTUSD", interval=1)["result"]
    served = result["XXBTZUSD"]
    assert len(served) == 720
    assert (served[0][0], served[-1][0]) == (rows[280][0], rows[-1][0])
    assert result["last"] == rows[-2][0]

    since = rows[990][0]
    after = public_get(fake_kraken, "OHLC", pair="XBTUSD", interval=1, since=since)["result"]["XXBTZUSD"]
    assert [row[0] for row in after] == [row[0] for row in rows[991:]]
    old = public_get(fake_kraken, "OHLC", pair="XBTUSD", interval=1, since=start)["result"]["XXBTZUSD"]
    assert len(old) == 720  # since cannot page back beyond the window

    candles = make_kraken_client().fetch_ohlcv(BTC_USD, "1m", since=since * 1000)
    assert [c[0] // 1000 for c in candles] == [row[0] for row in rows[990:]]  # ccxt asks from one bar earlier


def test_public_errors_use_kraken_strings_with_http_200(fake_kraken):
    assert public_get(fake_kraken, "AssetPairs", pair="NOPEUSD") == {
        "error": [KrakenError.UNKNOWN_ASSET_PAIR]
    }
    assert set(public_get(fake_kraken, "AssetPairs", pair="XBTUSD,SOL/USD")["result"]) == {
        "XXBTZUSD",
        "SOLUSD",
    }
    assert set(public_get(fake_kraken, "Assets", asset="XBT")["result"]) == {"XXBT"}
    assert public_get(fake_kraken, "Assets", asset="NOPE") == {"error": [KrakenError.UNKNOWN_ASSET]}
    assert public_get(fake_kraken, "OHLC", pair="XBTUSD", interval=7) == {
        "error": [KrakenError.INVALID_ARGUMENTS]
    }
    assert public_get(fake_kraken, "Depth", pair="XBTUSD") == {"error": [KrakenError.UNKNOWN_METHOD]}


def test_fetch_trades_serves_recorded_trades(fake_kraken, make_kraken_client):
    trades = make_kraken_client().fetch_trades(BTC_USD)
    assert [(t["price"], t["side"]) for t in trades] == [
        (83930.3, "sell"),
        (83928.0, "buy"),
        (83935.4, "buy"),
    ]
    assert trades[-1]["timestamp"] == 1790359841138


# ----------------------------------------------------------------------------------- private via ccxt


def test_balance_endpoints(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    assert client.privatePostBalance()["result"] == {"ZUSD": "100000.0000", "XXBT": "1.5000000000"}
    balance = client.fetch_balance()  # ccxt reads BalanceEx
    assert balance["total"] == {"USD": 100000.0, "BTC": 1.5}
    assert balance["free"] == {"USD": 100000.0, "BTC": 1.5}


def test_market_and_limit_orders_through_ccxt(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    bought = client.create_order(BTC_USD, "market", "buy", 0.01)
    assert bought["id"] in {order.txid for order in fake_kraken.orders(trader.api_key)}
    assert (bought["amount"], bought["type"]) == (0.01, "market")
    cost = Decimal("837.4430")  # 0.01 at the recorded ask
    fee = Decimal("3.3498")  # taker 0.40 %
    assert fake_kraken.balances(trader.api_key) == {"ZUSD": 100000 - cost - fee, "XXBT": Decimal("1.51")}

    resting = client.create_order(BTC_USD, "limit", "sell", 0.5, 95000, {"clientOrderId": "sell-1"})
    (opened,) = client.fetch_open_orders(BTC_USD)
    assert (opened["id"], opened["clientOrderId"], opened["price"], opened["amount"]) == (
        resting["id"],
        "sell-1",
        95000.0,
        0.5,
    )
    assert client.fetch_balance()["used"]["BTC"] == 0.5
    assert fake_kraken.requests("AddOrder")[-1].params["cl_ord_id"] == "sell-1"  # ccxt does send it

    client.cancel_order(None, BTC_USD, {"clientOrderId": "sell-1"})
    assert client.fetch_open_orders() == []
    closed = {order["id"]: order for order in client.fetch_closed_orders()}
    assert closed[resting["id"]]["status"] == "canceled"
    assert closed[bought["id"]]["status"] == "closed"
    assert closed[bought["id"]]["average"] == RECORDED_BTC_ASK
    assert closed[bought["id"]]["fee"] == {"cost": "3.34980", "rate": None, "currency": "USD"}

    (trade,) = client.fetch_my_trades(BTC_USD)
    assert (trade["order"], trade["takerOrMaker"], trade["amount"], trade["price"]) == (
        bought["id"],
        "taker",
        0.01,
        RECORDED_BTC_ASK,
    )
    fetched = client.fetch_order(bought["id"])
    assert (fetched["status"], fetched["filled"], len(fetched["trades"])) == ("closed", 0.01, 1)


def test_resting_limit_fills_as_maker_when_crossed(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    order = client.create_order(BTC_USD, "limit", "buy", 0.1, 80000)
    assert fake_kraken.cross(BTC_USD, "80000.1") == []
    assert client.fetch_balance()["used"]["USD"] == pytest.approx(8032.0)  # held, with the taker fee

    assert fake_kraken.cross(BTC_USD, "79999") == [order["id"]]
    (closed,) = client.fetch_closed_orders()
    assert (closed["status"], closed["average"], closed["filled"]) == ("closed", 80000.0, 0.1)
    (trade,) = client.fetch_my_trades()
    assert (trade["takerOrMaker"], trade["fee"]["cost"]) == ("maker", 20.0)  # maker 0.25 %
    assert fake_kraken.balances(trader.api_key)["ZUSD"] == Decimal("100000") - 8000 - 20


def test_marketable_limit_takes_and_post_only_is_cancelled(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    taken = client.create_order(BTC_USD, "limit", "buy", 0.01, 90000)
    post = client.create_order(BTC_USD, "limit", "buy", 0.01, 90000, {"postOnly": True})
    assert fake_kraken.order(taken["id"]).status == "closed"
    assert fake_kraken.order(taken["id"]).average_price == Decimal("83744.3")  # filled at the ask
    assert (fake_kraken.order(post["id"]).status, fake_kraken.order(post["id"]).reason) == (
        "canceled",
        "Post only order",
    )


def test_partial_fill_then_exchange_side_cancel(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    order = client.create_order(BTC_USD, "limit", "sell", 1.0, 90000)
    fake_kraken.fill(order["id"], "0.4")
    (opened,) = client.fetch_open_orders()
    assert (opened["filled"], opened["remaining"]) == (0.4, 0.6)
    fake_kraken.cancel(order["id"], reason="Order expired")
    (closed,) = client.fetch_closed_orders()
    assert (closed["status"], closed["filled"], closed["info"]["reason"]) == (
        "canceled",
        0.4,
        "Order expired",
    )


def test_userref_lookups(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    order = client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"userref": 42})
    client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"userref": 7})

    assert [o["id"] for o in client.fetch_open_orders(params={"userref": 42})] == [order["id"]]
    # ccxt's fetchOrder sends a client id as QueryOrders' userref *filter*, next to the required txid.
    assert client.fetch_order(order["id"], params={"clientOrderId": 42})["clientOrderId"] == "42"
    with pytest.raises(ccxt.OrderNotFound):
        client.fetch_order(order["id"], params={"clientOrderId": 7})
    client.cancel_order(None, params={"userref": 42})
    assert [o["info"]["userref"] for o in client.fetch_open_orders()] == [7]


def test_validate_only_places_nothing(fake_kraken, trader, make_kraken_client):
    checked = make_kraken_client(trader).create_order(
        BTC_USD, "limit", "buy", 0.01, 70000, {"validate": True}
    )
    assert checked["id"] is None
    assert fake_kraken.orders(trader.api_key) == []
    assert fake_kraken.requests("AddOrder")[0].params["validate"] == "True"  # ccxt's spelling of true


def test_order_refusals_map_to_ccxt_exceptions(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order(BTC_USD, "market", "buy", 2.0)
    with pytest.raises(ccxt.InsufficientFunds):
        client.create_order(BTC_USD, "limit", "sell", 2.0, 90000)
    with pytest.raises(ccxt.InvalidOrder, match="Order minimum not met"):
        client.create_order(BTC_USD, "market", "buy", 0.00001)
    with pytest.raises(ccxt.OnMaintenance):
        client.create_order("ACA/EUR", "limit", "buy", 20000, 0.5)
    with pytest.raises(ccxt.InvalidOrder):
        client.create_order(BTC_USD, "market", "buy", 1.0, params={"oflags": "viqc"})
    client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"clientOrderId": "dup"})
    with pytest.raises(ccxt.ExchangeError, match="Duplicate order"):
        client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"clientOrderId": "dup"})
    assert len(fake_kraken.orders(trader.api_key)) == 1


def test_trading_fee_from_trade_volume(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    assert (client.fetch_trading_fee(BTC_USD)["maker"], client.fetch_trading_fee(BTC_USD)["taker"]) == (
        0.0025,
        0.004,
    )
    fake_kraken.set_thirty_day_volume(trader.api_key, 60_000)
    info = client.fetch_trading_fee(BTC_USD)
    assert (info["maker"], info["taker"]) == (0.0014, 0.0024)
    assert info["info"]["fees"]["XXBTZUSD"]["nextvolume"] == "100000.0000"
    fake_kraken.set_fees(trader.api_key, maker="0.16", taker="0.26")
    assert client.fetch_trading_fee(BTC_USD)["taker"] == 0.0026


def test_query_only_key_cannot_trade(fake_kraken, make_kraken_client):
    reader = fake_kraken.add_account(balances={"ZUSD": "5000"}, can_trade=False)
    client = make_kraken_client(reader)
    assert client.fetch_balance()["total"]["USD"] == 5000.0
    with pytest.raises(ccxt.PermissionDenied):
        client.create_order(BTC_USD, "market", "buy", 0.001)
    assert fake_kraken.orders(reader.api_key) == []


# --------------------------------------------------------------------------------------------- faults


FAULT_CASES = [
    ("BalanceEx", Fault.kraken_error(KrakenError.RATE_LIMIT), ccxt.DDoSProtection),
    ("AddOrder", Fault.kraken_error(KrakenError.ORDER_RATE_LIMIT), ccxt.DDoSProtection),
    ("BalanceEx", Fault.kraken_error(KrakenError.SERVICE_UNAVAILABLE), ccxt.ExchangeNotAvailable),
    ("AddOrder", Fault.kraken_error(KrakenError.INSUFFICIENT_FUNDS), ccxt.InsufficientFunds),
    ("BalanceEx", Fault.kraken_error(KrakenError.INVALID_NONCE), ccxt.InvalidNonce),
    ("AddOrder", Fault.http_status(502), ccxt.ExchangeNotAvailable),
    ("BalanceEx", Fault.http_status(503), ccxt.ExchangeNotAvailable),
    ("BalanceEx", Fault.http_status(504), ccxt.RequestTimeout),
    ("AddOrder", Fault.truncated_body(), ccxt.NetworkError),
    ("BalanceEx", Fault.timeout_after_accept(delay=1.0), ccxt.RequestTimeout),
]


@pytest.mark.parametrize(
    ("endpoint", "fault", "expected"), FAULT_CASES, ids=lambda v: getattr(v, "kind", None)
)
def test_each_fault_surfaces_as_the_expected_ccxt_exception(
    fake_kraken, trader, make_kraken_client, endpoint, fault, expected
):
    client = make_kraken_client(trader, timeout_ms=300)
    client.load_markets()

    def call():
        if endpoint == "AddOrder":
            return client.create_order(BTC_USD, "market", "buy", 0.001)
        return client.fetch_balance()

    fake_kraken.inject(endpoint, fault)
    with pytest.raises(expected):
        call()
    call()  # the fault was for the next call only
    first, second = fake_kraken.requests(endpoint)
    assert (first.outcome, first.fault, second.outcome) == ("fault", fault.kind, "ok")


def test_malformed_json_does_not_raise_in_ccxt(fake_kraken, trader, make_kraken_client):
    """ccxt hands an unparsable 200 body back as text: fetch_time gives None and create_order an order
    without id, although the order was placed. Callers must check what they get."""
    client = make_kraken_client(trader)
    client.load_markets()
    fake_kraken.inject("Time", Fault.malformed_json())
    assert client.fetch_time() is None
    fake_kraken.inject("AddOrder", Fault.malformed_json(process=True))
    assert client.create_order(BTC_USD, "market", "buy", 0.001)["id"] is None
    (placed,) = fake_kraken.orders(trader.api_key)
    assert placed.status == "closed"


def test_timeout_after_accept_leaves_a_findable_order(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader, timeout_ms=300)
    fake_kraken.inject("AddOrder", Fault.timeout_after_accept(delay=1.5), times=2)
    with pytest.raises(ccxt.RequestTimeout):
        client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"clientOrderId": "late-1"})
    with pytest.raises(ccxt.RequestTimeout):
        client.create_order(BTC_USD, "market", "buy", 0.01, params={"clientOrderId": "late-2"})

    (resting,) = client.fetch_open_orders(params={"clientOrderId": "late-1"})
    assert resting["status"] == "open"
    assert client.fetch_order(resting["id"])["clientOrderId"] == "late-1"
    (filled,) = client.fetch_closed_orders(params={"clientOrderId": "late-2"})
    assert filled["status"] == "closed"
    records = fake_kraken.requests("AddOrder")
    assert [(r.outcome, r.processed, r.txids) for r in records] == [
        ("fault", True, (resting["id"],)),
        ("fault", True, (filled["id"],)),
    ]


def test_stop_does_not_wait_for_held_back_answers():
    fake = FakeKraken().start()
    client = kraken_client(fake, timeout_ms=200)
    fake.inject("Time", Fault.timeout_after_accept(delay=30))
    with pytest.raises(ccxt.RequestTimeout):
        client.fetch_time()
    started = time.monotonic()
    fake.stop()
    assert time.monotonic() - started < 1.0
    client.close()


def test_faults_can_target_one_key_and_several_calls(fake_kraken, trader, make_kraken_client):
    other = fake_kraken.add_account(balances={"ZUSD": "10"})
    fake_kraken.inject(
        "BalanceEx", Fault.kraken_error(KrakenError.SERVICE_BUSY), times=2, api_key=trader.api_key
    )
    assert fake_kraken.pending_faults("BalanceEx") == 2
    assert make_kraken_client(other).fetch_balance()["total"]["USD"] == 10.0
    client = make_kraken_client(trader)
    for _ in range(2):
        with pytest.raises(ccxt.ExchangeNotAvailable):
            client.fetch_balance()
    assert client.fetch_balance()["total"]["USD"] == 100000.0
    assert fake_kraken.pending_faults() == 0


# ------------------------------------------------------------------------------ isolation and the log


def test_two_keys_are_isolated(fake_kraken, trader, make_kraken_client):
    other = fake_kraken.add_account(balances={"ZUSD": "500"})
    alice, bob = make_kraken_client(trader), make_kraken_client(other)
    order = alice.create_order(BTC_USD, "limit", "buy", 0.01, 70000)

    assert bob.fetch_open_orders() == []
    assert bob.fetch_balance()["total"] == {"USD": 500.0}
    with pytest.raises(ccxt.OrderNotFound):
        bob.cancel_order(order["id"])
    with pytest.raises(ccxt.InvalidOrder):  # QueryOrders answers EOrder:Invalid order for a foreign txid
        bob.fetch_order(order["id"])
    assert [o["id"] for o in alice.fetch_open_orders()] == [order["id"]]


def test_request_log_records_trading_calls_per_key(fake_kraken, trader, make_kraken_client):
    watcher = fake_kraken.add_account(balances={"ZUSD": "1"}, can_trade=False)
    client = make_kraken_client(trader)
    order = client.create_order(BTC_USD, "limit", "buy", 0.01, 70000)
    client.cancel_order(order["id"])
    reader = make_kraken_client(watcher)
    reader.fetch_balance()
    reader.fetch_open_orders()
    reader.fetch_closed_orders()
    reader.fetch_my_trades()

    assert fake_kraken.private_trading_calls(watcher.api_key) == []
    calls = fake_kraken.private_trading_calls(trader.api_key)
    assert [(c.endpoint, c.method, c.path, c.outcome) for c in calls] == [
        ("AddOrder", "POST", "/0/private/AddOrder", "ok"),
        ("CancelOrder", "POST", "/0/private/CancelOrder", "ok"),
    ]
    assert (calls[0].params["pair"], calls[1].params["txid"]) == ("XXBTZUSD", order["id"])
    assert calls[0].txids == calls[1].txids == (order["id"],)
    assert calls[0].time <= calls[1].time
    (add,) = fake_kraken.requests(endpoint="AddOrder", api_key=trader.api_key)
    assert add.seq == calls[0].seq

    with pytest.raises(ccxt.ExchangeError, match="Invalid signature"):
        make_kraken_client(watcher.api_key, trader.secret).create_order(BTC_USD, "market", "buy", 0.001)
    (refused,) = fake_kraken.private_trading_calls(watcher.api_key)  # logged although unauthenticated
    assert (refused.errors, refused.processed) == ((KrakenError.INVALID_SIGNATURE,), False)


def test_margin_parameters_are_refused_and_logged(fake_kraken, trader, make_kraken_client):
    client = make_kraken_client(trader)
    with pytest.raises(ccxt.BadRequest):
        client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"leverage": 2})
    with pytest.raises(ccxt.BadRequest):
        client.create_order(BTC_USD, "market", "sell", 0.01, params={"reduceOnly": True})
    with pytest.raises(ccxt.BadRequest):
        client.create_order(BTC_USD, "limit", "buy", 0.01, 70000, {"validate": True, "leverage": "none"})

    attempts = fake_kraken.margin_attempts(trader.api_key)
    assert [a.margin_params for a in attempts] == [("leverage",), ("reduce_only",), ("leverage",)]
    assert all(a.errors == (KrakenError.INVALID_ARGUMENTS,) and a.is_trading_call for a in attempts)
    assert fake_kraken.orders() == []
    assert fake_kraken.balances(trader.api_key) == {"ZUSD": Decimal(100000), "XXBT": Decimal("1.5")}


def test_margin_parameters_in_a_json_batch_are_refused(fake_kraken, trader):
    path, nonce = "/0/private/AddOrderBatch", 2_000
    orders = [{"ordertype": "limit", "type": "buy", "volume": "0.01", "price": "70000", "leverage": "3"}]
    body = json.dumps({"nonce": nonce, "pair": "XBTUSD", "orders": orders})
    headers = {
        "API-Key": trader.api_key,
        "API-Sign": kraken_signature(path, nonce, body, trader.secret),
        "Content-Type": "application/json",
    }
    answer = httpx.post(fake_kraken.url + path, content=body, headers=headers).json()
    assert answer == {"error": [KrakenError.INVALID_ARGUMENTS]}
    (record,) = fake_kraken.margin_attempts()
    assert (record.endpoint, record.margin_params, record.params["orders"]) == (
        "AddOrderBatch",
        ("leverage",),
        orders,
    )
    edit = signed_post(fake_kraken, trader, "EditOrder", {"txid": "OXXXXX-XXXXX-XXXXXX"}, nonce=nonce + 1)
    assert edit == {"error": [KrakenError.UNKNOWN_METHOD]}
    assert [c.endpoint for c in fake_kraken.private_trading_calls(trader.api_key)] == [
        "AddOrderBatch",
        "EditOrder",
    ]


# ------------------------------------------------------------------------------- trigger order types


def add_order(fake: FakeKraken, creds: Credentials, nonce: int, **params) -> dict:
    return signed_post(fake, creds, "AddOrder", {"pair": "XBTUSD", **params}, nonce=nonce)


def test_stop_loss_rests_until_the_last_price_falls_to_its_trigger(fake_kraken, trader):
    fake_kraken.set_price(BTC_USD, "84000", bid="83990", ask="84010")
    answer = add_order(
        fake_kraken,
        trader,
        10,
        type="sell",
        ordertype="stop-loss",
        volume="0.5",
        price="80000",
        oflags="fciq",
    )
    (txid,) = answer["result"]["txid"]
    assert answer["result"]["descr"]["order"] == "sell 0.50000000 XBTUSD @ stop-loss 80000.0"
    fake_kraken.set_price(BTC_USD, "80000.1")
    assert fake_kraken.order(txid).status == "open"
    held = signed_post(fake_kraken, trader, "BalanceEx", {}, nonce=11)["result"]["XXBT"]["hold_trade"]
    assert Decimal(held) == Decimal("0.5")
    info = signed_post(fake_kraken, trader, "OpenOrders", {}, nonce=12)["result"]["open"][txid]
    assert (info["descr"]["ordertype"], info["descr"]["price"], info["stopprice"]) == (
        "stop-loss",
        "80000.0",
        "80000.0",
    )

    fake_kraken.set_price(BTC_USD, "79950", bid="79940", ask="79960")  # triggered: sells at the bid
    order = fake_kraken.order(txid)
    assert (order.status, order.vol_exec, order.average_price) == ("closed", Decimal("0.5"), Decimal("79940"))
    (trade,) = fake_kraken.trades(trader.api_key)
    assert (trade.maker, trade.price, trade.fee) == (False, Decimal("79940"), Decimal("159.8800"))  # 0.40 %


def test_take_profit_triggers_on_cross_and_buy_side_directions_are_mirrored(fake_kraken, trader):
    fake_kraken.set_price(BTC_USD, "84000")
    sell_tp = add_order(
        fake_kraken, trader, 20, type="sell", ordertype="take-profit", volume="0.1", price="90000"
    )
    buy_tp = add_order(
        fake_kraken, trader, 21, type="buy", ordertype="take-profit", volume="0.1", price="80000"
    )
    buy_sl = add_order(
        fake_kraken, trader, 22, type="buy", ordertype="stop-loss", volume="0.1", price="88000"
    )
    sell_tp, buy_tp, buy_sl = (answer["result"]["txid"][0] for answer in (sell_tp, buy_tp, buy_sl))

    assert fake_kraken.cross(BTC_USD, "88500") == []  # cross fills limits only; stops trigger on the price
    assert [fake_kraken.order(t).status for t in (sell_tp, buy_tp, buy_sl)] == ["open", "open", "closed"]
    fake_kraken.set_price(BTC_USD, "90000")
    assert fake_kraken.order(sell_tp).status == "closed"
    fake_kraken.set_price(BTC_USD, "79999")
    assert fake_kraken.order(buy_tp).status == "closed"
    assert fake_kraken.order(buy_tp).average_price == Decimal("79999")


def test_a_trigger_already_reached_at_entry_fills_at_once(fake_kraken, trader):
    fake_kraken.set_price(BTC_USD, "84000", bid="83990", ask="84010")
    answer = add_order(
        fake_kraken, trader, 30, type="sell", ordertype="stop-loss", volume="0.1", price="85000"
    )
    order = fake_kraken.order(answer["result"]["txid"][0])
    assert (order.status, order.average_price) == ("closed", Decimal("83990"))


def test_trigger_orders_need_a_price_and_limits_still_rest_on_set_price(fake_kraken, trader):
    missing = add_order(fake_kraken, trader, 40, type="sell", ordertype="stop-loss", volume="0.1")
    assert missing == {"error": [KrakenError.INVALID_PRICE]}
    unknown = add_order(
        fake_kraken, trader, 41, type="sell", ordertype="stop-loss-limit", volume="0.1", price="1"
    )
    assert unknown == {"error": [KrakenError.INVALID_ARGUMENTS]}
    resting = add_order(fake_kraken, trader, 42, type="buy", ordertype="limit", volume="0.1", price="70000")
    fake_kraken.set_price(BTC_USD, "69000")
    assert fake_kraken.order(resting["result"]["txid"][0]).status == "open"  # only cross() fills limits


def test_closed_and_open_orders_filter_by_cl_ord_id(fake_kraken, trader):
    add_order(
        fake_kraken, trader, 50, type="buy", ordertype="limit", volume="0.1", price="70000", cl_ord_id="a-1"
    )
    add_order(
        fake_kraken, trader, 51, type="buy", ordertype="limit", volume="0.1", price="70000", cl_ord_id="a-2"
    )
    add_order(fake_kraken, trader, 52, type="buy", ordertype="market", volume="0.01", cl_ord_id="a-3")
    open_ = signed_post(fake_kraken, trader, "OpenOrders", {"cl_ord_id": "a-2"}, nonce=53)["result"]["open"]
    assert [info["cl_ord_id"] for info in open_.values()] == ["a-2"]
    closed = signed_post(fake_kraken, trader, "ClosedOrders", {"cl_ord_id": "a-3"}, nonce=54)["result"]
    assert ([info["cl_ord_id"] for info in closed["closed"].values()], closed["count"]) == (["a-3"], 1)
    none = signed_post(fake_kraken, trader, "ClosedOrders", {"cl_ord_id": "a-1"}, nonce=55)["result"]
    assert none == {"closed": {}, "count": 0}
