"""A protocol-faithful fake of Kraken's spot REST API, served over real HTTP on 127.0.0.1.

The real ccxt ``kraken`` client and plain httpx talk to it unmodified: nothing is monkeypatched. Point a
client at :attr:`FakeKraken.url` (see ``tests.fakes.fixtures.kraken_client``).

What it reproduces
------------------
* The wire format: every answer is HTTP 200 with a JSON envelope ``{"error": [...], "result": ...}``; an
  error answer is ``{"error": ["<exact Kraken string>"]}`` (read the array whatever the status).
* Public endpoints (GET or POST ``/0/public/<Method>``): ``Time``, ``SystemStatus``, ``Assets``,
  ``AssetPairs``, ``Ticker``, ``OHLC``, ``Trades``. Reference data (AssetPairs, Assets, the BTC/USD hourly
  OHLC with its forming candle, BTC/USD trades and ticker) is read at run time from
  ``../shared/data/kraken/recorded_2026-09.json``; never copied into the repository.
* Private endpoints (POST ``/0/private/<Method>``, form-encoded or JSON body) with exact ``API-Sign``
  verification (see :func:`kraken_signature`) and strictly increasing nonces per API key: ``Balance``,
  ``BalanceEx``, ``TradeVolume``, ``AddOrder``, ``CancelOrder``, ``CancelAll``, ``QueryOrders``,
  ``OpenOrders``, ``ClosedOrders``, ``TradesHistory``, ``QueryTrades``.
* A tiny matching model: market orders fill at the current ticker (buy at ask, sell at bid, taker fee);
  limit orders that cross the ticker fill at once as taker, others rest (holding funds) until
  :meth:`FakeKraken.cross` or :meth:`FakeKraken.fill` fills them as maker. ``stop-loss`` and
  ``take-profit`` orders take their trigger as ``price`` and rest (holding funds) until the last price
  reaches it — at entry, or when :meth:`FakeKraken.set_price`/:meth:`FakeKraken.cross` moves it there —
  then fill in full as taker at the touch, like a market order. A stop-loss sell triggers at or below its
  price, a stop-loss buy at or above; a take-profit sell at or above, a take-profit buy at or below.
  Fees follow
  :data:`FEE_SCHEDULE` by the key's 30-day volume, or a per-key override, and are charged in the quote
  currency.
* Any margin parameter (``leverage``, ``reduce_only``, anything named ``*margin*``, ``settle-position``) on
  a trading call is refused with ``EGeneral:Invalid arguments`` and flagged in the request log.
* A request log (:meth:`FakeKraken.requests`, :meth:`FakeKraken.private_trading_calls`) and fault
  injection for the next N calls of an endpoint (:meth:`FakeKraken.inject`, :class:`Fault`).

Limitations (on purpose): only ``market``, ``limit``, ``stop-loss`` and ``take-profit`` order types (no
``*-limit`` or trailing variants, no ``trigger=index``); no ``viqc`` (answered with Kraken's
``EGeneral:Invalid arguments:viqc``); fees always in the quote currency; ``EditOrder``, ``AmendOrder``,
``AddOrderBatch``, ``CancelOrderBatch``, ``CancelAllOrdersAfter`` and any other method answer
``EGeneral:Unknown method`` (they are still logged, and margin parameters on them still refused);
``start``/``end`` filters take timestamps, not txids. The duplicate-``cl_ord_id`` rejection uses
``EOrder:Duplicate order``, which is not in the shared error catalogue (unverified wording).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import copy
import dataclasses
import hashlib
import hmac
import json
import random
import secrets
import socket
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_DOWN, ROUND_HALF_EVEN, Decimal, InvalidOperation
from email.utils import formatdate
from enum import StrEnum
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = [
    "FEE_SCHEDULE",
    "KRAKEN_DATA_DIR",
    "OHLC_INTERVALS",
    "RECORDED_PATH",
    "SHARED_DIR",
    "TRADING_ENDPOINTS",
    "Credentials",
    "FakeKraken",
    "FakeOrder",
    "FakeTrade",
    "Fault",
    "FaultKind",
    "KrakenError",
    "RequestRecord",
    "kraken_signature",
    "verify_signature",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
#: ``shared`` lives beside the repository root (CI always has it; developer machines may not).
SHARED_DIR = REPO_ROOT.parent / "shared"
KRAKEN_DATA_DIR = SHARED_DIR / "data" / "kraken"
RECORDED_PATH = KRAKEN_DATA_DIR / "recorded_2026-09.json"

#: Kraken's published spot schedule (shared/data/README.md): 30-day USD volume -> (maker %, taker %).
FEE_SCHEDULE: tuple[tuple[Decimal, Decimal, Decimal], ...] = tuple(
    (Decimal(volume), Decimal(maker), Decimal(taker))
    for volume, maker, taker in (
        ("0", "0.25", "0.40"),
        ("10000", "0.20", "0.35"),
        ("50000", "0.14", "0.24"),
        ("100000", "0.12", "0.22"),
        ("250000", "0.10", "0.20"),
        ("500000", "0.08", "0.18"),
        ("1000000", "0.06", "0.16"),
        ("2500000", "0.04", "0.14"),
        ("5000000", "0.02", "0.12"),
        ("10000000", "0.00", "0.10"),
    )
)

#: OHLC intervals Kraken accepts, in minutes.
OHLC_INTERVALS = frozenset({1, 5, 15, 30, 60, 240, 1440, 10080, 21600})
#: Kraken serves at most this many OHLC rows per call, the most recent ones (``since`` cannot page back).
OHLC_MAX_ROWS = 720
#: Page size of ClosedOrders and TradesHistory (``ofs`` pages through).
PAGE_SIZE = 50

#: Private endpoints that place, change or cancel orders. A simulated account must never call them.
TRADING_ENDPOINTS = frozenset(
    {
        "AddOrder",
        "AddOrderBatch",
        "EditOrder",
        "AmendOrder",
        "CancelOrder",
        "CancelOrderBatch",
        "CancelAll",
        "CancelAllOrdersAfter",
    }
)

_MARGIN_PARAM_NAMES = frozenset({"leverage", "reduce_only", "reduceonly", "margin", "margin_mode"})
_MARGIN_ORDER_TYPES = frozenset({"settle-position"})
_TRIGGER_ORDER_TYPES = frozenset({"stop-loss", "take-profit"})
_PRICED_ORDER_TYPES = frozenset({"limit"}) | _TRIGGER_ORDER_TYPES
_ORDER_TYPES = frozenset({"market"}) | _PRICED_ORDER_TYPES
_OFLAGS = frozenset({"post", "fcib", "fciq", "nompp", "viqc"})
_TIME_IN_FORCE = frozenset({"GTC", "IOC", "GTD"})
_ID_ALPHABET = string.ascii_uppercase + string.digits
_INT32 = (-(2**31), 2**31 - 1)
_MISSING_PRICE_HINT = "EGeneral:Internal error:FakeKraken has no price for {pair}; call set_price()"


class KrakenError:
    """Kraken's exact error strings (shared/data/kraken/error_catalog.json unless noted)."""

    INVALID_KEY = "EAPI:Invalid key"
    INVALID_SIGNATURE = "EAPI:Invalid signature"
    INVALID_NONCE = "EAPI:Invalid nonce"
    RATE_LIMIT = "EAPI:Rate limit exceeded"
    ORDER_RATE_LIMIT = "EOrder:Rate limit exceeded"
    TEMPORARY_LOCKOUT = "EGeneral:Temporary lockout"
    PERMISSION_DENIED = "EGeneral:Permission denied"
    INVALID_ARGUMENTS = "EGeneral:Invalid arguments"
    INVALID_VOLUME = "EGeneral:Invalid arguments:volume"
    INTERNAL_ERROR = "EGeneral:Internal error"
    UNKNOWN_ASSET_PAIR = "EQuery:Unknown asset pair"
    UNKNOWN_ASSET = "EQuery:Unknown asset"
    INSUFFICIENT_FUNDS = "EOrder:Insufficient funds"
    ORDER_MINIMUM = "EOrder:Order minimum not met"
    COST_MINIMUM = "EOrder:Cost minimum not met"
    INVALID_ORDER = "EOrder:Invalid order"
    UNKNOWN_ORDER = "EOrder:Unknown order"
    SERVICE_UNAVAILABLE = "EService:Unavailable"
    SERVICE_BUSY = "EService:Busy"
    CANCEL_ONLY = "EService:Market in cancel_only mode"
    POST_ONLY = "EService:Market in post_only mode"
    DEADLINE_ELAPSED = "EService:Deadline elapsed"
    # Not in the shared catalogue, but real: ccxt's kraken exception table maps them.
    INVALID_PRICE = "EGeneral:Invalid arguments:price"
    INVALID_VIQC = "EGeneral:Invalid arguments:viqc"
    # Not in the shared catalogue; wording unverified.
    UNKNOWN_METHOD = "EGeneral:Unknown method"
    DUPLICATE_ORDER = "EOrder:Duplicate order"


# --------------------------------------------------------------------------------------------------
# Signing
# --------------------------------------------------------------------------------------------------


def kraken_signature(uri_path: str, nonce: str | int, post_data: str | bytes, secret_b64: str) -> str:
    """``API-Sign`` = base64(HMAC-SHA512(base64decode(secret), uri_path + SHA256(nonce + post_data)))."""
    body = post_data.encode() if isinstance(post_data, str) else post_data
    digest = hashlib.sha256(str(nonce).encode() + body).digest()
    mac = hmac.new(base64.b64decode(secret_b64), uri_path.encode() + digest, hashlib.sha512)
    return base64.b64encode(mac.digest()).decode()


def verify_signature(
    uri_path: str, nonce: str | int, post_data: str | bytes, secret_b64: str, api_sign: str
) -> bool:
    """Constant-time check of an ``API-Sign`` header against :func:`kraken_signature`."""
    try:
        expected = kraken_signature(uri_path, nonce, post_data, secret_b64)
    except (binascii.Error, ValueError):
        return False
    return hmac.compare_digest(expected.encode(), api_sign.encode())


# --------------------------------------------------------------------------------------------------
# Public value types
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    """An API key and its base64 secret, as Kraken issues them."""

    api_key: str
    secret: str


class FaultKind(StrEnum):
    KRAKEN_ERROR = "kraken_error"  # HTTP 200 with a Kraken error string in the envelope
    HTTP_STATUS = "http_status"  # an HTTP error status (5xx) with an HTML (or given) body
    MALFORMED_JSON = "malformed_json"  # HTTP 200, complete body, not valid JSON
    TRUNCATED_BODY = "truncated_body"  # full Content-Length announced, half the body sent, then closed
    TIMEOUT_AFTER_ACCEPT = "timeout_after_accept"  # request executed, answer held back for ``delay`` s


@dataclass(frozen=True)
class Fault:
    """A fault to serve instead of the normal answer. Build one with the class methods.

    ``process`` says whether the request still takes effect (an order placed, a nonce used up...)
    before the faulty answer goes out; the request is authenticated first either way.
    """

    kind: FaultKind
    error: str | None = None
    status: int = 200
    body: str | None = None
    delay: float = 0.0
    process: bool = False

    @classmethod
    def kraken_error(cls, error: str, *, process: bool = False) -> Fault:
        return cls(FaultKind.KRAKEN_ERROR, error=error, process=process)

    @classmethod
    def http_status(cls, status: int = 503, *, body: str | None = None, process: bool = False) -> Fault:
        return cls(FaultKind.HTTP_STATUS, status=status, body=body, process=process)

    @classmethod
    def malformed_json(cls, *, process: bool = False) -> Fault:
        return cls(FaultKind.MALFORMED_JSON, process=process)

    @classmethod
    def truncated_body(cls, *, process: bool = True) -> Fault:
        return cls(FaultKind.TRUNCATED_BODY, process=process)

    @classmethod
    def timeout_after_accept(cls, delay: float = 5.0) -> Fault:
        """Execute the request, then answer only after ``delay`` seconds (make it exceed the client's
        timeout). :meth:`FakeKraken.stop` cuts the wait short."""
        return cls(FaultKind.TIMEOUT_AFTER_ACCEPT, delay=delay, process=True)


@dataclass
class RequestRecord:
    """One HTTP request as the fake saw it.

    ``outcome`` is ``"ok"``, ``"error"`` (a Kraken error string in ``errors``), ``"fault"`` (an injected
    ``fault`` was served) or ``"pending"`` while being handled. ``processed`` tells whether the call took
    effect. ``margin_params`` lists refused margin parameters; ``txids`` the orders the call created or
    cancelled.
    """

    seq: int
    time: float
    method: str
    path: str
    api: str
    endpoint: str
    params: dict[str, Any]
    api_key: str | None
    outcome: str = "pending"
    errors: tuple[str, ...] = ()
    fault: FaultKind | None = None
    http_status: int = 200
    processed: bool = False
    margin_params: tuple[str, ...] = ()
    txids: tuple[str, ...] = ()

    @property
    def is_trading_call(self) -> bool:
        return self.api == "private" and self.endpoint in TRADING_ENDPOINTS


@dataclass
class FakeOrder:
    """An order held by the fake (snapshots are returned to tests; mutate through FakeKraken)."""

    txid: str
    api_key: str
    pair: str
    side: str
    ordertype: str
    volume: Decimal
    price: Decimal | None
    opentm: float
    userref: int | None = None
    cl_ord_id: str | None = None
    oflags: tuple[str, ...] = ()
    timeinforce: str = "GTC"
    status: str = "open"
    closetm: float | None = None
    reason: str | None = None
    vol_exec: Decimal = Decimal(0)
    cost: Decimal = Decimal(0)
    fee: Decimal = Decimal(0)
    trades: list[str] = field(default_factory=list)

    @property
    def remaining(self) -> Decimal:
        return self.volume - self.vol_exec

    @property
    def average_price(self) -> Decimal | None:
        return self.cost / self.vol_exec if self.vol_exec else None


@dataclass(frozen=True)
class FakeTrade:
    """A fill of one of an account's orders."""

    trade_txid: str
    ordertxid: str
    postxid: str
    pair: str
    time: float
    side: str
    ordertype: str
    price: Decimal
    cost: Decimal
    fee: Decimal
    vol: Decimal
    trade_id: int
    maker: bool


# --------------------------------------------------------------------------------------------------
# Internal state
# --------------------------------------------------------------------------------------------------


class _Failure(Exception):
    """Raised by endpoint handlers: answered as ``{"error": [error]}``."""

    def __init__(self, error: str) -> None:
        super().__init__(error)
        self.error = error


@dataclass(frozen=True)
class _Pair:
    id: str
    info: dict[str, Any]

    @property
    def altname(self) -> str:
        return self.info["altname"]

    @property
    def base(self) -> str:
        return self.info["base"]

    @property
    def quote(self) -> str:
        return self.info["quote"]

    @property
    def pair_decimals(self) -> int:
        return int(self.info.get("pair_decimals", 5))

    @property
    def lot_decimals(self) -> int:
        return int(self.info.get("lot_decimals", 8))

    @property
    def cost_decimals(self) -> int:
        return int(self.info.get("cost_decimals", 5))

    @property
    def status(self) -> str:
        return self.info.get("status", "online")


@dataclass
class _Quote:
    last: Decimal
    bid: Decimal
    ask: Decimal
    open: Decimal
    high: Decimal
    low: Decimal
    volume: Decimal = Decimal(0)
    vwap: Decimal | None = None
    trades: int = 0


@dataclass
class _Series:
    rows: list[list[Any]]
    last: Any


@dataclass
class _Account:
    api_key: str
    secret: str
    balances: dict[str, Decimal]
    can_trade: bool
    volume_30d: Decimal
    fee_override: tuple[Decimal, Decimal] | None = None  # (maker %, taker %)
    last_nonce: int = 0
    orders: dict[str, FakeOrder] = field(default_factory=dict)
    trades: dict[str, FakeTrade] = field(default_factory=dict)


@dataclass
class _Reply:
    status: int = 200
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    delay: float = 0.0
    truncate: bool = False


@dataclass
class _PendingFault:
    fault: Fault
    remaining: int
    api_key: str | None


# --------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------


def _dec(value: Any) -> Decimal:
    """Decimal from a str/int/Decimal (floats go through ``str`` so 0.1 stays 0.1)."""
    if isinstance(value, Decimal):
        return value
    return Decimal(str(value))


def _fmt(value: Decimal, places: int) -> str:
    return f"{value.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN):f}"


def _quantize(value: Decimal, places: int, rounding: str = ROUND_HALF_EVEN) -> Decimal:
    return value.quantize(Decimal(1).scaleb(-places), rounding=rounding)


def _truthy(value: Any) -> bool:
    # ccxt encodes Python booleans as "True"/"False"; Kraken documents "true"/"false".
    return str(value).strip().lower() in {"true", "1"}


def _scalar(value: Any) -> Any:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return value


def _param_names(params: Mapping[str, Any]) -> Iterator[str]:
    """Every parameter name, including nested ones (``orders[0][leverage]`` -> ``leverage``)."""
    for key, value in params.items():
        yield key.rsplit("[", 1)[-1].rstrip("]")
        if isinstance(value, Mapping):
            yield from _param_names(value)
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, Mapping):
                    yield from _param_names(item)


def _margin_params(params: Mapping[str, Any]) -> tuple[str, ...]:
    found = []
    for name in _param_names(params):
        lowered = name.lower()
        if lowered in _MARGIN_PARAM_NAMES or "leverage" in lowered or "margin" in lowered:
            found.append(name)
    if str(params.get("ordertype", "")).lower() in _MARGIN_ORDER_TYPES:
        found.append("ordertype")
    return tuple(dict.fromkeys(found))


def _triggered(order: FakeOrder, last: Decimal) -> bool:
    """Whether the last price has reached the trigger (``price``) of a resting stop-loss/take-profit."""
    if order.ordertype not in _TRIGGER_ORDER_TYPES or order.price is None:
        return False
    falling_trigger = (order.ordertype == "stop-loss") == (order.side == "sell")
    return last <= order.price if falling_trigger else last >= order.price


def _csv(value: Any) -> list[str]:
    return [part.strip() for part in str(value).split(",") if part.strip()]


def _timestamp_param(params: Mapping[str, Any], name: str) -> Decimal | None:
    if params.get(name) in (None, ""):
        return None
    try:
        return _dec(params[name])
    except InvalidOperation:
        raise _Failure(KrakenError.INVALID_ARGUMENTS) from None


def _envelope(result: Any) -> dict[str, Any]:
    return {"error": [], "result": result}


def _json_bytes(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


# --------------------------------------------------------------------------------------------------
# The fake
# --------------------------------------------------------------------------------------------------


class FakeKraken:
    """Fake Kraken spot REST server. Use as a context manager, or ``start()``/``stop()``.

    >>> with FakeKraken() as fake:                                  # doctest: +SKIP
    ...     creds = fake.add_account(balances={"ZUSD": "10000"})
    ...     fake.set_price("XXBTZUSD", "84000.0")
    ...     client = kraken_client(fake, creds.api_key, creds.secret)
    ...     client.create_order("BTC/USD", "market", "buy", 0.01)

    Pairs may be named by id (``XXBTZUSD``), altname (``XBTUSD``), wsname (``XBT/USD``) or v2 name
    (``BTC/USD``); assets by id (``XXBT``), altname (``XBT``) or common code (``BTC``).
    """

    def __init__(
        self,
        data_path: Path | str = RECORDED_PATH,
        *,
        clock: Callable[[], float] = time.time,
        seed: int | None = None,
        ohlc_max_rows: int = OHLC_MAX_ROWS,
    ) -> None:
        path = Path(data_path)
        if not path.exists():
            raise FileNotFoundError(
                f"FakeKraken needs Kraken reference data at {path} (the shared folder beside the repository)"
            )
        recorded = json.loads(path.read_text())
        rest = recorded["rest"]
        self.clock = clock
        self.ohlc_max_rows = ohlc_max_rows
        #: What ``SystemStatus`` reports.
        self.system_status = "online"
        self._rng = random.Random(seed)  # noqa: S311 - order ids, not secrets
        self._lock = threading.RLock()
        self._assets: dict[str, dict[str, Any]] = copy.deepcopy(rest["Assets"]["result"])
        self._pairs: dict[str, _Pair] = {
            pair_id: _Pair(pair_id, copy.deepcopy(info))
            for pair_id, info in rest["AssetPairs"]["result"].items()
        }
        self._pair_aliases = self._build_pair_aliases()
        self._asset_aliases = self._build_asset_aliases()
        self._quotes: dict[str, _Quote] = {}
        self._ohlc: dict[tuple[str, int], _Series] = {}
        self._public_trades: dict[str, _Series] = {}
        self._accounts: dict[str, _Account] = {}
        self._order_owner: dict[str, str] = {}
        self._issued_ids: set[str] = set()
        self._log: list[RequestRecord] = []
        self._faults: dict[str, list[_PendingFault]] = {}
        self._trade_id = 1_000_000
        self._load_recorded_market(recorded)

        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._public_handlers: dict[str, Callable[[dict[str, Any]], Any]] = {
            "Time": self._public_time,
            "SystemStatus": self._public_system_status,
            "Assets": self._public_assets,
            "AssetPairs": self._public_asset_pairs,
            "Ticker": self._public_ticker,
            "OHLC": self._public_ohlc,
            "Trades": self._public_trades_endpoint,
        }
        self._private_handlers: dict[str, Callable[[_Account, dict[str, Any]], Any]] = {
            "Balance": self._private_balance,
            "BalanceEx": self._private_balance_ex,
            "TradeVolume": self._private_trade_volume,
            "AddOrder": self._private_add_order,
            "CancelOrder": self._private_cancel_order,
            "CancelAll": self._private_cancel_all,
            "QueryOrders": self._private_query_orders,
            "OpenOrders": self._private_open_orders,
            "ClosedOrders": self._private_closed_orders,
            "TradesHistory": self._private_trades_history,
            "QueryTrades": self._private_query_trades,
        }

    # ---------------------------------------------------------------- lifecycle

    def start(self) -> FakeKraken:
        """Bind an ephemeral port on 127.0.0.1 and serve from a background thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name="FakeKraken", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; cut short delayed answers and close kept-alive connections. Idempotent."""
        server, thread = self._server, self._thread
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.close_all_connections()
        server.server_close()
        server.join_handlers(timeout=2.0)
        if thread is not None:
            thread.join(timeout=2.0)
        self._server = self._thread = None

    def __enter__(self) -> FakeKraken:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, like ``http://127.0.0.1:54321`` (endpoints: ``/0/public/...``, ``/0/private/...``)."""
        if self._server is None:
            raise RuntimeError("FakeKraken is not running: call start() or use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    # ---------------------------------------------------------------- accounts

    def add_account(
        self,
        api_key: str | None = None,
        secret: str | None = None,
        *,
        balances: Mapping[str, Any] | None = None,
        thirty_day_volume: Any = 0,
        can_trade: bool = True,
    ) -> Credentials:
        """Register an API key with its own balances, orders, trades and nonce.

        ``secret`` is the base64 private key (generated when omitted). ``can_trade=False`` makes trading
        calls answer ``EGeneral:Permission denied`` (a query-only key).
        """
        api_key = api_key or base64.b64encode(secrets.token_bytes(42)).decode()
        secret = secret or base64.b64encode(secrets.token_bytes(64)).decode()
        base64.b64decode(secret, validate=True)  # fail early on a malformed secret
        with self._lock:
            if api_key in self._accounts:
                raise ValueError(f"API key {api_key!r} already registered")
            account = _Account(api_key, secret, {}, can_trade, _dec(thirty_day_volume))
            for asset, amount in (balances or {}).items():
                account.balances[self._asset_id(asset)] = _dec(amount)
            self._accounts[api_key] = account
        return Credentials(api_key, secret)

    def set_balance(self, api_key: str, asset: str, amount: Any) -> None:
        with self._lock:
            self._account(api_key).balances[self._asset_id(asset)] = _dec(amount)

    def balances(self, api_key: str) -> dict[str, Decimal]:
        """Total balances by Kraken asset id (funds held by open orders included)."""
        with self._lock:
            return dict(self._account(api_key).balances)

    def set_thirty_day_volume(self, api_key: str, volume: Any) -> None:
        """The 30-day USD volume that picks the key's tier in :data:`FEE_SCHEDULE`."""
        with self._lock:
            self._account(api_key).volume_30d = _dec(volume)

    def set_fees(self, api_key: str, *, maker: Any, taker: Any) -> None:
        """Override the key's fee rates, in percent (e.g. ``maker="0.16", taker="0.26"``)."""
        with self._lock:
            self._account(api_key).fee_override = (_dec(maker), _dec(taker))

    def fee_rates(self, api_key: str) -> tuple[Decimal, Decimal]:
        """The key's current ``(maker %, taker %)``."""
        with self._lock:
            return self._fees(self._account(api_key))

    def orders(self, api_key: str | None = None, *, status: str | None = None) -> list[FakeOrder]:
        """Snapshots of orders (all keys unless ``api_key``), oldest first, optionally by ``status``."""
        with self._lock:
            accounts = [self._account(api_key)] if api_key else list(self._accounts.values())
            found = [o for a in accounts for o in a.orders.values() if status in (None, o.status)]
            return [copy.deepcopy(o) for o in sorted(found, key=lambda o: o.opentm)]

    def order(self, txid: str) -> FakeOrder:
        with self._lock:
            return copy.deepcopy(self._find_order(txid))

    def trades(self, api_key: str) -> list[FakeTrade]:
        with self._lock:
            return list(self._account(api_key).trades.values())

    # ---------------------------------------------------------------- market data

    def set_price(self, pair: str, last: Any, *, bid: Any = None, ask: Any = None) -> None:
        """Move the ticker. Resting limit orders do not fill (see :meth:`cross`); stop-loss and
        take-profit orders whose trigger the new last price reaches fill as taker at the new touch.
        ``bid``/``ask`` default to ``last``."""
        with self._lock:
            pair_id = self._pair(pair).id
            last_d = _dec(last)
            quote = self._quotes.get(pair_id)
            if quote is None:
                quote = _Quote(last_d, last_d, last_d, last_d, last_d, last_d)
                self._quotes[pair_id] = quote
            quote.last = last_d
            quote.bid = _dec(bid) if bid is not None else last_d
            quote.ask = _dec(ask) if ask is not None else last_d
            quote.high = max(quote.high, last_d)
            quote.low = min(quote.low, last_d)
            self._trigger_resting(pair_id, quote)

    def _trigger_resting(self, pair_id: str, quote: _Quote) -> None:
        for account in self._accounts.values():
            for order in list(account.orders.values()):
                if order.status == "open" and order.pair == pair_id and _triggered(order, quote.last):
                    touch = quote.ask if order.side == "buy" else quote.bid
                    self._execute(account, order, order.remaining, touch, maker=False)

    def price(self, pair: str) -> Decimal | None:
        with self._lock:
            quote = self._quotes.get(self._pair(pair).id)
            return quote.last if quote else None

    def cross(self, pair: str, price: Any) -> list[str]:
        """Trade the market through ``price``: set the ticker there and fill, as maker and at their own
        limit, every resting limit order it crosses (buys at or above, sells at or below). Returns the
        txids filled."""
        price_d = _dec(price)
        with self._lock:
            pair_id = self._pair(pair).id
            self.set_price(pair_id, price_d)
            filled = []
            for account in self._accounts.values():
                for order in list(account.orders.values()):
                    if order.status != "open" or order.pair != pair_id or order.ordertype != "limit":
                        continue
                    crossed = order.price >= price_d if order.side == "buy" else order.price <= price_d
                    if crossed:
                        self._execute(account, order, order.remaining, order.price, maker=True)
                        filled.append(order.txid)
            return filled

    def fill(self, txid: str, volume: Any = None, price: Any = None) -> FakeOrder:
        """Fill an open order (partly when ``volume`` is less than what remains) as maker, at ``price``
        or its limit price."""
        with self._lock:
            order = self._find_order(txid)
            if order.status != "open":
                raise ValueError(f"order {txid} is {order.status}")
            volume_d = order.remaining if volume is None else min(_dec(volume), order.remaining)
            fill_price = _dec(price) if price is not None else order.price
            if fill_price is None:
                raise ValueError("a market order needs an explicit fill price")
            self._execute(self._accounts[order.api_key], order, volume_d, fill_price, maker=True)
            return copy.deepcopy(order)

    def cancel(self, txid: str, reason: str = "User requested") -> FakeOrder:
        """Cancel an open order from the exchange side (expiry, risk...), releasing its hold."""
        with self._lock:
            order = self._find_order(txid)
            if order.status != "open":
                raise ValueError(f"order {txid} is {order.status}")
            self._close(order, "canceled", reason)
            return copy.deepcopy(order)

    def set_pair_status(self, pair: str, status: str) -> None:
        """E.g. ``cancel_only``, ``post_only``, ``limit_only``, ``maintenance``, ``online``."""
        with self._lock:
            self._pair(pair).info["status"] = status

    def set_ohlc(
        self, pair: str, interval: int, rows: Iterable[Sequence[Any]], *, last: int | None = None
    ) -> None:
        """Candles ``[time, open, high, low, close, vwap, volume, count]``, oldest first; the final row
        is the still-forming candle. ``last`` defaults to the time of the row before it."""
        if interval not in OHLC_INTERVALS:
            raise ValueError(f"Kraken has no {interval}-minute OHLC interval")
        normalized = [[int(row[0]), *(f"{_dec(value):f}" for value in row[1:7]), int(row[7])] for row in rows]
        normalized.sort(key=lambda row: row[0])
        if last is None and len(normalized) >= 2:
            last = normalized[-2][0]
        elif last is None:
            last = normalized[0][0] - interval * 60 if normalized else 0
        with self._lock:
            self._ohlc[(self._pair(pair).id, interval)] = _Series(normalized, last)

    def set_trades(self, pair: str, rows: Iterable[Sequence[Any]], *, last: str | None = None) -> None:
        """Public trades ``[price, volume, time, side b/s, type m/l, misc, trade_id]``, oldest first."""
        materialized = sorted((list(row) for row in rows), key=lambda row: float(row[2]))
        with self._lock:
            self._public_trades[self._pair(pair).id] = _Series(materialized, last)

    # ---------------------------------------------------------------- faults and log

    def inject(self, endpoint: str, fault: Fault, *, times: int = 1, api_key: str | None = None) -> None:
        """Serve ``fault`` for the next ``times`` calls to ``endpoint`` (by ``api_key`` only, if given).

        Private calls are authenticated first: a call with a bad key, signature or nonce gets its
        ordinary error and does not use the fault up.
        """
        if times < 1:
            raise ValueError("times must be at least 1")
        with self._lock:
            self._faults.setdefault(endpoint, []).append(_PendingFault(fault, times, api_key))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    def pending_faults(self, endpoint: str | None = None) -> int:
        """How many faulty answers are still queued (for ``endpoint``, or in all)."""
        with self._lock:
            queues = [self._faults.get(endpoint, [])] if endpoint else list(self._faults.values())
            return sum(pending.remaining for queue in queues for pending in queue)

    def requests(
        self,
        endpoint: str | None = None,
        *,
        api_key: str | None = None,
        method: str | None = None,
        api: str | None = None,
        outcome: str | None = None,
    ) -> list[RequestRecord]:
        """Logged requests, oldest first, filtered by whichever arguments are given."""
        with self._lock:
            return [
                dataclasses.replace(record, params=copy.deepcopy(record.params))
                for record in self._log
                if endpoint in (None, record.endpoint)
                and api_key in (None, record.api_key)
                and method in (None, record.method)
                and api in (None, record.api)
                and outcome in (None, record.outcome)
            ]

    def private_trading_calls(self, api_key: str | None = None) -> list[RequestRecord]:
        """Every call that reached a trading endpoint (:data:`TRADING_ENDPOINTS`), whatever its outcome:
        refused, unauthenticated and faulted calls included."""
        return [record for record in self.requests(api_key=api_key) if record.is_trading_call]

    def margin_attempts(self, api_key: str | None = None) -> list[RequestRecord]:
        """Calls refused for carrying a margin/leverage parameter."""
        return [record for record in self.requests(api_key=api_key) if record.margin_params]

    def clear_log(self) -> None:
        with self._lock:
            self._log.clear()

    # ---------------------------------------------------------------- HTTP dispatch

    def _handle(self, method: str, target: str, headers: Mapping[str, str], body: bytes) -> _Reply:
        """Answer one HTTP request (called by the server's handler threads)."""
        headers = {name.lower(): value for name, value in headers.items()}
        split = urlsplit(target)
        path = split.path
        parts = path.split("/")
        api, endpoint = ("unknown", path)
        if len(parts) == 4 and parts[0] == "" and parts[1] == "0" and parts[2] in {"public", "private"}:
            api, endpoint = parts[2], parts[3]
        try:
            params = self._parse_params(method, split.query, headers, body)
        except ValueError:
            params = {}
        api_key = headers.get("api-key") if api == "private" else None
        with self._lock:
            record = RequestRecord(
                seq=len(self._log) + 1,
                time=self.clock(),
                method=method,
                path=path,
                api=api,
                endpoint=endpoint,
                params=params,
                api_key=api_key,
            )
            self._log.append(record)
            reply = self._answer(record, headers, body)
        return reply

    def _answer(self, record: RequestRecord, headers: Mapping[str, str], body: bytes) -> _Reply:
        if record.api == "unknown":
            return self._error_reply(record, KrakenError.UNKNOWN_METHOD, status=404)
        try:
            account = None
            if record.api == "private":
                if record.method != "POST":
                    raise _Failure(KrakenError.UNKNOWN_METHOD)
                account = self._authenticate(record, headers, body)
            fault = self._take_fault(record.endpoint, record.api_key)
            if fault is not None and not fault.process:
                return self._fault_reply(record, fault, None)
            try:
                result = self._execute_endpoint(record, account)
                envelope: dict[str, Any] = _envelope(result)
                record.processed = True
            except _Failure as failure:
                envelope = {"error": [failure.error]}
            if fault is not None:
                return self._fault_reply(record, fault, envelope)
            record.errors = tuple(envelope["error"])
            record.outcome = "error" if record.errors else "ok"
            return _Reply(body=_json_bytes(envelope))
        except _Failure as failure:
            return self._error_reply(record, failure.error)

    def _execute_endpoint(self, record: RequestRecord, account: _Account | None) -> Any:
        if record.api == "public":
            handler = self._public_handlers.get(record.endpoint)
            if handler is None:
                raise _Failure(KrakenError.UNKNOWN_METHOD)
            return handler(record.params)
        assert account is not None
        if record.endpoint in TRADING_ENDPOINTS:
            record.margin_params = _margin_params(record.params)
            if record.margin_params:
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
            if not account.can_trade:
                raise _Failure(KrakenError.PERMISSION_DENIED)
        handler = self._private_handlers.get(record.endpoint)
        if handler is None:
            raise _Failure(KrakenError.UNKNOWN_METHOD)
        result = handler(account, record.params)
        if isinstance(result, tuple):  # (result, txids touched)
            result, txids = result
            record.txids = tuple(txids)
        return result

    def _error_reply(self, record: RequestRecord, error: str, status: int = 200) -> _Reply:
        record.errors = (error,)
        record.outcome = "error"
        record.http_status = status
        return _Reply(status=status, body=_json_bytes({"error": [error]}))

    def _fault_reply(self, record: RequestRecord, fault: Fault, envelope: dict[str, Any] | None) -> _Reply:
        record.outcome = "fault"
        record.fault = fault.kind
        if envelope is not None:
            record.errors = tuple(envelope["error"])
        if fault.kind is FaultKind.KRAKEN_ERROR:
            record.errors = (fault.error or KrakenError.INTERNAL_ERROR,)
            return _Reply(body=_json_bytes({"error": list(record.errors)}))
        if fault.kind is FaultKind.HTTP_STATUS:
            record.http_status = fault.status
            body = fault.body
            if body is None:
                body = f"<html><body><h1>{fault.status} Server Error</h1></body></html>"
                content_type = "text/html; charset=utf-8"
            else:
                content_type = "application/json" if body.lstrip().startswith("{") else "text/html"
            return _Reply(status=fault.status, body=body.encode(), content_type=content_type)
        if fault.kind is FaultKind.MALFORMED_JSON:
            return _Reply(body=b'{"error":[],"result":{unquoted: <html>Bad Gateway</html>,}}')
        full = _json_bytes(envelope if envelope is not None else _envelope({}))
        if fault.kind is FaultKind.TRUNCATED_BODY:
            return _Reply(body=full, truncate=True)
        return _Reply(body=full, delay=fault.delay)  # TIMEOUT_AFTER_ACCEPT

    def _take_fault(self, endpoint: str, api_key: str | None) -> Fault | None:
        queue = self._faults.get(endpoint)
        if not queue:
            return None
        for pending in queue:
            if pending.api_key in (None, api_key):
                pending.remaining -= 1
                if pending.remaining == 0:
                    queue.remove(pending)
                return pending.fault
        return None

    @staticmethod
    def _parse_params(method: str, query: str, headers: Mapping[str, str], body: bytes) -> dict[str, Any]:
        params: dict[str, Any] = dict(parse_qsl(query, keep_blank_values=True))
        if method == "POST" and body:
            text = body.decode()
            if "json" in headers.get("content-type", "").lower() or text.lstrip().startswith("{"):
                decoded = json.loads(text)
                if not isinstance(decoded, dict):
                    raise ValueError("JSON body must be an object")
                params.update({key: _scalar(value) for key, value in decoded.items()})
            else:
                params.update(parse_qsl(text, keep_blank_values=True))
        return params

    def _authenticate(self, record: RequestRecord, headers: Mapping[str, str], body: bytes) -> _Account:
        account = self._accounts.get(record.api_key or "")
        if account is None:
            raise _Failure(KrakenError.INVALID_KEY)
        nonce = str(record.params.get("nonce", ""))
        if not verify_signature(record.path, nonce, body, account.secret, headers.get("api-sign", "")):
            raise _Failure(KrakenError.INVALID_SIGNATURE)
        try:
            nonce_value = int(nonce)
        except ValueError:
            raise _Failure(KrakenError.INVALID_NONCE) from None
        if nonce_value <= account.last_nonce:
            raise _Failure(KrakenError.INVALID_NONCE)
        account.last_nonce = nonce_value
        return account

    # ---------------------------------------------------------------- public endpoints

    def _public_time(self, params: dict[str, Any]) -> dict[str, Any]:
        now = self.clock()
        rfc1123 = formatdate(now, usegmt=False).replace("-0000", "+0000")
        return {"unixtime": int(now), "rfc1123": rfc1123}

    def _public_system_status(self, params: dict[str, Any]) -> dict[str, Any]:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        return {"status": self.system_status, "timestamp": stamp}

    def _public_assets(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("asset"):
            return copy.deepcopy(self._assets)
        result = {}
        for name in _csv(params["asset"]):
            asset_id = self._asset_aliases.get(name.upper())
            if asset_id is None:
                raise _Failure(KrakenError.UNKNOWN_ASSET)
            result[asset_id] = copy.deepcopy(self._assets[asset_id])
        return result

    def _public_asset_pairs(self, params: dict[str, Any]) -> dict[str, Any]:
        pairs = self._pairs_param(params, required=False) or list(self._pairs.values())
        return {pair.id: copy.deepcopy(pair.info) for pair in pairs}

    def _public_ticker(self, params: dict[str, Any]) -> dict[str, Any]:
        requested = self._pairs_param(params, required=False)
        if requested is None:
            return {pair_id: self._ticker(self._pairs[pair_id]) for pair_id in self._quotes}
        for pair in requested:
            if pair.id not in self._quotes:
                raise _Failure(_MISSING_PRICE_HINT.format(pair=pair.id))
        return {pair.id: self._ticker(pair) for pair in requested}

    def _ticker(self, pair: _Pair) -> dict[str, Any]:
        quote = self._quotes[pair.id]
        places = max(pair.pair_decimals, 5)
        vwap = quote.vwap if quote.vwap is not None else quote.last
        volume = _fmt(quote.volume, 8)
        return {
            "a": [_fmt(quote.ask, places), "1", "1.000"],
            "b": [_fmt(quote.bid, places), "1", "1.000"],
            "c": [_fmt(quote.last, places), "0.00100000"],
            "v": [volume, volume],
            "p": [_fmt(vwap, places), _fmt(vwap, places)],
            "t": [quote.trades, quote.trades],
            "l": [_fmt(quote.low, places), _fmt(quote.low, places)],
            "h": [_fmt(quote.high, places), _fmt(quote.high, places)],
            "o": _fmt(quote.open, places),
        }

    def _public_ohlc(self, params: dict[str, Any]) -> dict[str, Any]:
        pair, key = self._single_pair_param(params)
        try:
            interval = int(params.get("interval", 1))
        except ValueError:
            raise _Failure(KrakenError.INVALID_ARGUMENTS) from None
        if interval not in OHLC_INTERVALS:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        since = _timestamp_param(params, "since")
        series = self._ohlc.get((pair.id, interval), _Series([], 0))
        rows = series.rows[-self.ohlc_max_rows :]
        if since is not None:
            rows = [row for row in rows if row[0] > since]
        return {key: copy.deepcopy(rows), "last": series.last}

    def _public_trades_endpoint(self, params: dict[str, Any]) -> dict[str, Any]:
        pair, key = self._single_pair_param(params)
        series = self._public_trades.get(pair.id, _Series([], None))
        rows = series.rows
        since = _timestamp_param(params, "since")
        if since is not None:
            seconds = since / Decimal(10**9) if since > 10**12 else since
            rows = [row for row in rows if _dec(row[2]) > seconds]
        try:
            count = int(params.get("count") or 1000)
        except ValueError:
            raise _Failure(KrakenError.INVALID_ARGUMENTS) from None
        rows = rows[:count] if since is not None else rows[-count:]
        if not rows:
            last = str(since or 0)
        elif rows[-1] is series.rows[-1] and series.last is not None:
            last = series.last  # the recorded cursor, exact to the nanosecond
        else:
            last = str(int(_dec(rows[-1][2]) * 10**9))
        return {key: copy.deepcopy(rows), "last": last}

    # ---------------------------------------------------------------- private endpoints

    def _private_balance(self, account: _Account, params: dict[str, Any]) -> dict[str, str]:
        return {asset: self._fmt_asset(asset, amount) for asset, amount in account.balances.items()}

    def _private_balance_ex(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        holds = self._holds(account)
        return {
            asset: {
                "balance": self._fmt_asset(asset, amount),
                "hold_trade": self._fmt_asset(asset, holds.get(asset, Decimal(0))),
            }
            for asset, amount in account.balances.items()
        }

    def _private_trade_volume(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = {"currency": "ZUSD", "volume": _fmt(account.volume_30d, 4)}
        pairs = self._pairs_param(params, required=False)
        if pairs:
            result["fees"] = {pair.id: self._fee_info(account, taker=True) for pair in pairs}
            result["fees_maker"] = {pair.id: self._fee_info(account, taker=False) for pair in pairs}
        return result

    def _fee_info(self, account: _Account, *, taker: bool) -> dict[str, Any]:
        column = 2 if taker else 1
        tier_index = max(i for i, tier in enumerate(FEE_SCHEDULE) if account.volume_30d >= tier[0])
        tier = FEE_SCHEDULE[tier_index]
        following = FEE_SCHEDULE[tier_index + 1] if tier_index + 1 < len(FEE_SCHEDULE) else None
        maker, taker_fee = self._fees(account)
        return {
            "fee": _fmt(taker_fee if taker else maker, 4),
            "minfee": _fmt(FEE_SCHEDULE[-1][column], 4),
            "maxfee": _fmt(FEE_SCHEDULE[0][column], 4),
            "nextfee": _fmt(following[column], 4) if following else None,
            "nextvolume": _fmt(following[0], 4) if following else None,
            "tiervolume": _fmt(tier[0], 4),
        }

    def _private_add_order(self, account: _Account, params: dict[str, Any]) -> Any:
        for required in ("pair", "type", "ordertype"):
            if not params.get(required):
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
        if not params.get("volume"):
            raise _Failure(KrakenError.INVALID_VOLUME)
        pair = self._pair_or_fail(str(params["pair"]))
        side, ordertype = str(params["type"]), str(params["ordertype"])
        if side not in {"buy", "sell"} or ordertype not in _ORDER_TYPES:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        oflags = tuple(_csv(params.get("oflags", "")))
        if any(flag not in _OFLAGS for flag in oflags) or {"fcib", "fciq"} <= set(oflags):
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        if "viqc" in oflags:
            raise _Failure(KrakenError.INVALID_VIQC)
        self._check_pair_status(pair, ordertype, oflags)
        volume = self._positive_decimal(params["volume"], KrakenError.INVALID_VOLUME)
        price = None
        if ordertype in _PRICED_ORDER_TYPES:
            if not params.get("price"):
                raise _Failure(KrakenError.INVALID_PRICE)
            price = self._positive_decimal(params["price"], KrakenError.INVALID_PRICE)
        timeinforce = str(params.get("timeinforce") or "GTC").upper()
        if timeinforce not in _TIME_IN_FORCE:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        userref, cl_ord_id = self._order_refs(account, params)
        if volume < _dec(pair.info.get("ordermin", 0)):
            raise _Failure(KrakenError.ORDER_MINIMUM)
        quote = self._quotes.get(pair.id)
        reference = (
            price if price is not None else (quote.ask if side == "buy" else quote.bid) if quote else None
        )
        if reference is None:
            raise _Failure(_MISSING_PRICE_HINT.format(pair=pair.id))
        if volume * reference < _dec(pair.info.get("costmin", 0)):
            raise _Failure(KrakenError.COST_MINIMUM)

        description = self._order_description(pair, side, ordertype, volume, price)
        if _truthy(params.get("validate", "false")):
            return {"descr": {"order": description}}
        self._check_funds(account, pair, side, volume, reference)

        order = FakeOrder(
            txid=self._new_id("O"),
            api_key=account.api_key,
            pair=pair.id,
            side=side,
            ordertype=ordertype,
            volume=volume,
            price=price,
            opentm=round(self.clock(), 4),
            userref=userref,
            cl_ord_id=cl_ord_id,
            oflags=oflags or ("fciq",),
            timeinforce=timeinforce,
        )
        account.orders[order.txid] = order
        self._order_owner[order.txid] = account.api_key
        self._match_on_entry(account, order, quote)
        return {"descr": {"order": description}, "txid": [order.txid]}, [order.txid]

    def _match_on_entry(self, account: _Account, order: FakeOrder, quote: _Quote | None) -> None:
        """Fill a market order, or a limit order that crosses the ticker, as taker; else let it rest."""
        touch = None if quote is None else quote.ask if order.side == "buy" else quote.bid
        if order.ordertype == "market":
            assert touch is not None
            self._execute(account, order, order.volume, touch, maker=False)
            return
        if order.ordertype in _TRIGGER_ORDER_TYPES:
            if quote is not None and _triggered(order, quote.last):
                assert touch is not None
                self._execute(account, order, order.volume, touch, maker=False)
            return
        assert order.price is not None
        crosses = touch is not None and (
            order.price >= touch if order.side == "buy" else order.price <= touch
        )
        if crosses and "post" in order.oflags:
            self._close(order, "canceled", "Post only order")
        elif crosses:
            assert touch is not None
            self._execute(account, order, order.volume, touch, maker=False)
        elif order.timeinforce == "IOC":
            self._close(order, "canceled", "Immediate or cancel")

    def _private_cancel_order(self, account: _Account, params: dict[str, Any]) -> Any:
        cl_ord_id = params.get("cl_ord_id")
        txid = params.get("txid")
        if cl_ord_id:
            targets = [o for o in account.orders.values() if o.cl_ord_id == cl_ord_id and o.status == "open"]
        elif txid:
            txid = str(txid)
            if txid.lstrip("-").isdigit():  # a userref
                targets = [
                    o for o in account.orders.values() if o.userref == int(txid) and o.status == "open"
                ]
            else:
                order = account.orders.get(txid)
                targets = [order] if order is not None and order.status == "open" else []
        else:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        if not targets:
            raise _Failure(KrakenError.UNKNOWN_ORDER)
        for order in targets:
            self._close(order, "canceled", "User requested")
        return {"count": len(targets)}, [o.txid for o in targets]

    def _private_cancel_all(self, account: _Account, params: dict[str, Any]) -> Any:
        targets = [o for o in account.orders.values() if o.status == "open"]
        for order in targets:
            self._close(order, "canceled", "User requested")
        return {"count": len(targets)}, [o.txid for o in targets]

    def _private_query_orders(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        txids = _csv(params.get("txid", ""))
        if not txids or len(txids) > 50:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        orders = []
        for txid in txids:
            order = account.orders.get(txid)
            if order is None:
                raise _Failure(KrakenError.INVALID_ORDER)
            orders.append(order)
        orders = self._filter_refs(orders, params)
        with_trades = _truthy(params.get("trades", "false"))
        return {o.txid: self._order_info(o, with_trades) for o in orders}

    def _private_open_orders(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        orders = [o for o in account.orders.values() if o.status == "open"]
        orders = self._filter_refs(orders, params)
        with_trades = _truthy(params.get("trades", "false"))
        newest_first = sorted(orders, key=lambda o: o.opentm, reverse=True)
        return {"open": {o.txid: self._order_info(o, with_trades) for o in newest_first}}

    def _private_closed_orders(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        orders = [o for o in account.orders.values() if o.status != "open"]
        orders = self._filter_refs(orders, params)
        start, end = _timestamp_param(params, "start"), _timestamp_param(params, "end")
        closetime = str(params.get("closetime") or "both")
        if closetime not in {"open", "close", "both"}:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)

        def times(order: FakeOrder) -> list[Decimal]:
            opened, closed = _dec(order.opentm), _dec(order.closetm or order.opentm)
            return {"open": [opened], "close": [closed], "both": [opened, closed]}[closetime]

        if start is not None:
            orders = [o for o in orders if any(t > start for t in times(o))]
        if end is not None:
            orders = [o for o in orders if any(t <= end for t in times(o))]
        orders.sort(key=lambda o: o.closetm or o.opentm, reverse=True)
        page = self._page(orders, params)
        with_trades = _truthy(params.get("trades", "false"))
        return {"closed": {o.txid: self._order_info(o, with_trades) for o in page}, "count": len(orders)}

    def _private_trades_history(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        trades = list(account.trades.values())
        start, end = _timestamp_param(params, "start"), _timestamp_param(params, "end")
        if start is not None:
            trades = [t for t in trades if _dec(t.time) > start]
        if end is not None:
            trades = [t for t in trades if _dec(t.time) <= end]
        trades.sort(key=lambda t: t.time, reverse=True)
        page = self._page(trades, params)
        return {"trades": {t.trade_txid: self._trade_info(t) for t in page}, "count": len(trades)}

    def _private_query_trades(self, account: _Account, params: dict[str, Any]) -> dict[str, Any]:
        txids = _csv(params.get("txid", ""))
        if not txids or len(txids) > 20:
            raise _Failure(KrakenError.INVALID_ARGUMENTS)
        result = {}
        for txid in txids:
            trade = account.trades.get(txid)
            if trade is None:
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
            result[txid] = self._trade_info(trade)
        return result

    # ---------------------------------------------------------------- order model

    def _order_refs(self, account: _Account, params: dict[str, Any]) -> tuple[int | None, str | None]:
        userref = cl_ord_id = None
        if params.get("userref") not in (None, ""):
            try:
                userref = int(params["userref"])
            except ValueError:
                raise _Failure(KrakenError.INVALID_ARGUMENTS) from None
            if not _INT32[0] <= userref <= _INT32[1]:
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
        if params.get("cl_ord_id") not in (None, ""):
            cl_ord_id = str(params["cl_ord_id"])
            if userref is not None or len(cl_ord_id) > 36:  # mutually exclusive with userref
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
            if any(o.cl_ord_id == cl_ord_id and o.status == "open" for o in account.orders.values()):
                raise _Failure(KrakenError.DUPLICATE_ORDER)
        return userref, cl_ord_id

    def _check_pair_status(self, pair: _Pair, ordertype: str, oflags: tuple[str, ...]) -> None:
        status = pair.status
        if status == "cancel_only":
            raise _Failure(KrakenError.CANCEL_ONLY)
        if status == "post_only" and (ordertype != "limit" or "post" not in oflags):
            raise _Failure(KrakenError.POST_ONLY)
        if status == "limit_only" and ordertype != "limit":
            raise _Failure(KrakenError.INVALID_ORDER)
        if status not in {"online", "post_only", "limit_only"}:
            raise _Failure(KrakenError.SERVICE_UNAVAILABLE)

    def _check_funds(
        self, account: _Account, pair: _Pair, side: str, volume: Decimal, price: Decimal
    ) -> None:
        available = self._available(account)
        if side == "buy":
            _, taker = self._fees(account)
            needed = volume * price * (1 + taker / 100)
            enough = available.get(pair.quote, Decimal(0)) >= needed
        else:
            enough = available.get(pair.base, Decimal(0)) >= volume
        if not enough:
            raise _Failure(KrakenError.INSUFFICIENT_FUNDS)

    def _execute(
        self, account: _Account, order: FakeOrder, volume: Decimal, price: Decimal, *, maker: bool
    ) -> None:
        pair = self._pairs[order.pair]
        quote_places = self._asset_decimals(pair.quote)
        maker_fee, taker_fee = self._fees(account)
        cost = _quantize(volume * price, quote_places)
        fee = _quantize(cost * (maker_fee if maker else taker_fee) / 100, quote_places)
        balances = account.balances
        if order.side == "buy":
            balances[pair.quote] = balances.get(pair.quote, Decimal(0)) - cost - fee
            balances[pair.base] = balances.get(pair.base, Decimal(0)) + volume
        else:
            balances[pair.base] = balances.get(pair.base, Decimal(0)) - volume
            balances[pair.quote] = balances.get(pair.quote, Decimal(0)) + cost - fee
        self._trade_id += 1
        trade = FakeTrade(
            trade_txid=self._new_id("T"),
            ordertxid=order.txid,
            postxid=self._new_id("T"),
            pair=pair.id,
            time=round(self.clock(), 4),
            side=order.side,
            ordertype=order.ordertype,
            price=price,
            cost=cost,
            fee=fee,
            vol=volume,
            trade_id=self._trade_id,
            maker=maker,
        )
        account.trades[trade.trade_txid] = trade
        order.vol_exec += volume
        order.cost += cost
        order.fee += fee
        order.trades.append(trade.trade_txid)
        if order.remaining <= 0:
            self._close(order, "closed", None)

    def _close(self, order: FakeOrder, status: str, reason: str | None) -> None:
        order.status = status
        order.reason = reason
        order.closetm = round(self.clock(), 4)

    def _holds(self, account: _Account) -> dict[str, Decimal]:
        holds: dict[str, Decimal] = {}
        _, taker = self._fees(account)
        for order in account.orders.values():
            if order.status != "open" or order.price is None:
                continue
            pair = self._pairs[order.pair]
            if order.side == "buy":
                held = _quantize(
                    order.remaining * order.price * (1 + taker / 100), self._asset_decimals(pair.quote)
                )
                holds[pair.quote] = holds.get(pair.quote, Decimal(0)) + held
            else:
                holds[pair.base] = holds.get(pair.base, Decimal(0)) + order.remaining
        return holds

    def _available(self, account: _Account) -> dict[str, Decimal]:
        holds = self._holds(account)
        return {asset: amount - holds.get(asset, Decimal(0)) for asset, amount in account.balances.items()}

    def _fees(self, account: _Account) -> tuple[Decimal, Decimal]:
        if account.fee_override is not None:
            return account.fee_override
        tier = [t for t in FEE_SCHEDULE if account.volume_30d >= t[0]][-1]
        return tier[1], tier[2]

    def _order_description(
        self, pair: _Pair, side: str, ordertype: str, volume: Decimal, price: Decimal | None
    ) -> str:
        text = f"{side} {_fmt(volume, pair.lot_decimals)} {pair.altname} @ {ordertype}"
        return f"{text} {_fmt(price, pair.pair_decimals)}" if price is not None else text

    def _order_info(self, order: FakeOrder, with_trades: bool) -> dict[str, Any]:
        pair = self._pairs[order.pair]
        average = order.average_price
        info: dict[str, Any] = {
            "refid": None,
            "userref": order.userref if order.userref is not None else 0,
        }
        if order.cl_ord_id is not None:
            info["cl_ord_id"] = order.cl_ord_id
        info |= {
            "status": order.status,
            "opentm": order.opentm,
            "starttm": 0,
            "expiretm": 0,
            "descr": {
                "pair": pair.altname,
                "type": order.side,
                "ordertype": order.ordertype,
                "price": _fmt(order.price, pair.pair_decimals) if order.price is not None else "0",
                "price2": "0",
                "leverage": "none",
                "order": self._order_description(
                    pair, order.side, order.ordertype, order.volume, order.price
                ),
                "close": "",
            },
            "vol": _fmt(order.volume, pair.lot_decimals),
            "vol_exec": _fmt(order.vol_exec, pair.lot_decimals),
            "cost": _fmt(order.cost, pair.cost_decimals),
            "fee": _fmt(order.fee, pair.cost_decimals),
            "price": _fmt(average, pair.pair_decimals) if average is not None else "0.00000",
            "stopprice": (
                _fmt(order.price, pair.pair_decimals)
                if order.ordertype in _TRIGGER_ORDER_TYPES and order.price is not None
                else "0.00000"
            ),
            "limitprice": "0.00000",
            "misc": "",
            "oflags": ",".join(order.oflags),
        }
        if order.status != "open":
            info["closetm"] = order.closetm
            info["reason"] = order.reason
        if with_trades and order.trades:
            info["trades"] = list(order.trades)
        return info

    def _trade_info(self, trade: FakeTrade) -> dict[str, Any]:
        pair = self._pairs[trade.pair]
        return {
            "ordertxid": trade.ordertxid,
            "postxid": trade.postxid,
            "pair": trade.pair,
            "time": trade.time,
            "type": trade.side,
            "ordertype": trade.ordertype,
            "price": _fmt(trade.price, 5),
            "cost": _fmt(trade.cost, pair.cost_decimals),
            "fee": _fmt(trade.fee, pair.cost_decimals),
            "vol": _fmt(trade.vol, pair.lot_decimals),
            "margin": "0.00000",
            "leverage": "0",
            "misc": "",
            "trade_id": trade.trade_id,
            "maker": trade.maker,
        }

    @staticmethod
    def _filter_refs(orders: list[FakeOrder], params: dict[str, Any]) -> list[FakeOrder]:
        if params.get("userref") not in (None, ""):
            try:
                userref = int(params["userref"])
            except ValueError:
                raise _Failure(KrakenError.INVALID_ARGUMENTS) from None
            orders = [o for o in orders if o.userref == userref]
        if params.get("cl_ord_id") not in (None, ""):
            orders = [o for o in orders if o.cl_ord_id == str(params["cl_ord_id"])]
        return orders

    @staticmethod
    def _page(items: list[Any], params: dict[str, Any]) -> list[Any]:
        try:
            offset = int(params.get("ofs") or 0)
        except ValueError:
            raise _Failure(KrakenError.INVALID_ARGUMENTS) from None
        return items[offset : offset + PAGE_SIZE]

    @staticmethod
    def _positive_decimal(value: Any, error: str) -> Decimal:
        try:
            number = _dec(value)
        except InvalidOperation:
            raise _Failure(error) from None
        if not number.is_finite() or number <= 0:
            raise _Failure(error)
        return number

    def _new_id(self, prefix: str) -> str:
        def chunk(size: int) -> str:
            return "".join(self._rng.choice(_ID_ALPHABET) for _ in range(size))

        while True:
            candidate = f"{prefix}{chunk(5)}-{chunk(5)}-{chunk(6)}"
            if candidate not in self._issued_ids:
                self._issued_ids.add(candidate)
                return candidate

    # ---------------------------------------------------------------- lookups

    def _account(self, api_key: str) -> _Account:
        try:
            return self._accounts[api_key]
        except KeyError:
            raise KeyError(f"no account for API key {api_key!r}: call add_account()") from None

    def _find_order(self, txid: str) -> FakeOrder:
        owner = self._order_owner.get(txid)
        if owner is None:
            raise KeyError(f"no order {txid!r}")
        return self._accounts[owner].orders[txid]

    def _pair(self, name: str) -> _Pair:
        pair_id = self._pair_aliases.get(name.upper())
        if pair_id is None:
            raise KeyError(f"unknown pair {name!r}; known: {sorted(self._pairs)}")
        return self._pairs[pair_id]

    def _pair_or_fail(self, name: str) -> _Pair:
        pair_id = self._pair_aliases.get(name.upper())
        if pair_id is None:
            raise _Failure(KrakenError.UNKNOWN_ASSET_PAIR)
        return self._pairs[pair_id]

    def _pairs_param(self, params: dict[str, Any], *, required: bool) -> list[_Pair] | None:
        names = _csv(params.get("pair", ""))
        if not names:
            if required:
                raise _Failure(KrakenError.INVALID_ARGUMENTS)
            return None
        return [self._pair_or_fail(name) for name in names]

    def _single_pair_param(self, params: dict[str, Any]) -> tuple[_Pair, str]:
        """The pair and the key Kraken answers under: the pair id, except that a slash name
        (``BTC/USD``) is echoed back as sent, as the 2026-09 recording shows."""
        pairs = self._pairs_param(params, required=True)
        assert pairs is not None
        name = str(params["pair"]).strip()
        return pairs[0], name if "/" in name else pairs[0].id

    def _asset_id(self, name: str) -> str:
        asset_id = self._asset_aliases.get(name.upper())
        if asset_id is None:
            raise KeyError(f"unknown asset {name!r}; known: {sorted(self._assets)}")
        return asset_id

    def _asset_decimals(self, asset_id: str) -> int:
        return int(self._assets.get(asset_id, {}).get("decimals", 8))

    def _fmt_asset(self, asset_id: str, amount: Decimal) -> str:
        return _fmt(
            _quantize(amount, self._asset_decimals(asset_id), ROUND_DOWN), self._asset_decimals(asset_id)
        )

    def _build_asset_aliases(self) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for asset_id, info in self._assets.items():
            aliases[asset_id.upper()] = asset_id
            aliases.setdefault(str(info.get("altname", asset_id)).upper(), asset_id)
        for common, kraken in (("BTC", "XBT"), ("DOGE", "XDG")):
            if kraken in aliases:
                aliases.setdefault(common, aliases[kraken])
        return aliases

    def _build_pair_aliases(self) -> dict[str, str]:
        aliases: dict[str, str] = {}
        for pair_id, pair in self._pairs.items():
            names = [pair_id, pair.altname, pair.info.get("wsname", "")]
            wsname = str(pair.info.get("wsname", ""))
            names.append(wsname.replace("XBT/", "BTC/").replace("XDG/", "DOGE/").replace("/XBT", "/BTC"))
            for name in names:
                if name:
                    aliases.setdefault(name.upper(), pair_id)
        return aliases

    def _load_recorded_market(self, recorded: Mapping[str, Any]) -> None:
        """Seed BTC/USD with the recorded hourly OHLC, trades and WebSocket ticker (real values)."""
        rest = recorded["rest"]
        btc = self._pair_aliases.get("XBTUSD")
        if btc is None:
            return
        ohlc = rest.get("OHLC_BTCUSD_60", {}).get("result", {})
        rows = next((value for key, value in ohlc.items() if key != "last"), None)
        if rows:
            self._ohlc[(btc, 60)] = _Series(copy.deepcopy(rows), ohlc.get("last"))
        trades = rest.get("Trades_BTCUSD", {}).get("result", {})
        trade_rows = next((value for key, value in trades.items() if key != "last"), None)
        if trade_rows:
            self._public_trades[btc] = _Series(copy.deepcopy(trade_rows), trades.get("last"))
        ticker_messages = recorded.get("websocket_v2", {}).get("ticker", {}).get("data", [])
        if ticker_messages:
            tick = ticker_messages[0]
            last = _dec(tick["last"])
            self._quotes[btc] = _Quote(
                last=last,
                bid=_dec(tick["bid"]),
                ask=_dec(tick["ask"]),
                open=last - _dec(tick["change"]),
                high=_dec(tick["high"]),
                low=_dec(tick["low"]),
                volume=_dec(tick["volume"]),
                vwap=_dec(tick["vwap"]),
                trades=int(tick["trades"]),
            )


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, fake: FakeKraken) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.fake = fake
        self._connections: set[socket.socket] = set()
        self._handlers: set[threading.Thread] = set()
        self._tracking = threading.Lock()
        self._closing = False

    def track(self, connection: socket.socket) -> None:
        with self._tracking:
            self._connections.add(connection)
            self._handlers.add(threading.current_thread())
            closing = self._closing
        if closing:  # accepted just as stop() ran: do not let it linger on a kept-alive read
            _shutdown_quietly(connection)

    def untrack(self, connection: socket.socket) -> None:
        with self._tracking:
            self._connections.discard(connection)
            self._handlers.discard(threading.current_thread())

    def close_all_connections(self) -> None:
        """Unblock handler threads waiting on kept-alive connections."""
        with self._tracking:
            self._closing = True
            connections = list(self._connections)
        for connection in connections:
            _shutdown_quietly(connection)

    def join_handlers(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._tracking:
            handlers = list(self._handlers)
        for handler in handlers:
            handler.join(max(0.0, deadline - time.monotonic()))


def _shutdown_quietly(connection: socket.socket) -> None:
    with contextlib.suppress(OSError):
        connection.shutdown(socket.SHUT_RDWR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "FakeKraken/1.0"
    disable_nagle_algorithm = True  # headers and body go out in two writes: avoid the 40 ms delayed-ACK stall
    server: _Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.untrack(self.connection)

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the default stderr access log (the fake keeps its own)."""

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        reply = self.server.fake._handle(method, self.path, dict(self.headers.items()), body)
        if reply.delay and self.server.fake._stopping.wait(reply.delay):
            self.close_connection = True  # stopping: drop the held-back answer
            return
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body)))
            if reply.truncate:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(reply.body[: len(reply.body) // 2] if reply.truncate else reply.body)
            self.wfile.flush()
        except OSError:  # the client gave up (e.g. after its timeout)
            self.close_connection = True
            return
        if reply.truncate:
            self.close_connection = True
