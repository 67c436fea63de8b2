"""The Kraken broker: ccxt's ``kraken`` client with the account's own key, every private call under the
account's lock (``trading.brokers.private_lock``) with a nonce from the account's one stream.

Private endpoints are called through ccxt's implicit methods (``privatePostAddOrder`` …) with parameters
built here from ``Decimal`` values as strings at the pair's precision: ccxt's ``create_order`` would take
floats and may add parameters of its own, and Aether never sends a margin, leverage or derivative one.
Answers are read from Kraken's own JSON, as ``Decimal``.

What Kraken answers becomes an outcome (see ``trading/brokers/base.py``):

* rate limit (``EAPI``/``EOrder:Rate limit exceeded``, ``EGeneral:Temporary lockout``), ``EService:Busy``
  or ``EService:Unavailable``, ``EAPI:Invalid nonce``: Kraken did nothing, so the call is retried after a
  jittered back-off (a fresh nonce each time), a bounded number of times; a submission still refused is
  REJECTED "… not placed";
* any other Kraken error on AddOrder (insufficient funds, minimums, invalid arguments, cancel_only…):
  REJECTED with Kraken's message;
* timeout, network error, HTTP 5xx, an answer that is not Kraken's JSON envelope, or an internal error on
  AddOrder: the order may or may not exist, so it is never resent here; Kraken is asked by client order id
  (open orders, then closed) and what it says is returned, else UNKNOWN with the reason (reconciliation
  decides later).

Second wall: before every private *trading* call the account's ``simulation_mode`` is re-read from the
database, and a simulated account gets :class:`BrokerRefused` — nothing is sent. Read-only private calls
(balances, order and trade queries) are allowed for a simulated account.

Fees: every order carries ``oflags=fciq``, so Kraken charges fees in the quote currency (USD).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import ccxt
import requests
from django.conf import settings

from trading.brokers import private_lock
from trading.brokers.base import (
    BalanceReport,
    BrokerRefused,
    BrokerUnavailable,
    FillReport,
    OrderKind,
    OrderReport,
    OrderRequest,
    Side,
    Status,
)
from trading.kraken_pairs import common_code
from trading.marketdata.backoff import jittered_backoff

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------- the keys


@dataclass(frozen=True, repr=False)
class KrakenKeys:
    """An account's API key and its base64 secret. Neither is ever shown by ``repr`` or ``str``."""

    api_key: str
    secret: str

    def __repr__(self) -> str:
        return "KrakenKeys(api_key=<hidden>, secret=<hidden>)"

    __str__ = __repr__


def scrub(text: str, keys: KrakenKeys | None) -> str:
    """``text`` without the key or the secret in it (a last line of defence for messages we build)."""
    if keys is not None:
        for value in (keys.secret, keys.api_key):
            if value:
                text = text.replace(value, "<hidden>")
    return text


class _HideCredentials(logging.Filter):
    """ccxt logs request headers at DEBUG: hide the API-Key and API-Sign in them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_without_credentials(arg) for arg in record.args)
        return True


def _without_credentials(value: Any) -> Any:
    if isinstance(value, dict) and any(str(k).lower() in {"api-key", "api-sign"} for k in value):
        return {k: "<hidden>" if str(k).lower() in {"api-key", "api-sign"} else v for k, v in value.items()}
    return value


#: The logger handed to our ccxt clients (``ccxt`` logs every request at DEBUG).
ccxt_logger = logging.getLogger("trading.brokers.kraken.ccxt")
ccxt_logger.addFilter(_HideCredentials())


class AccountKrakenClient(ccxt.kraken):
    """ccxt's kraken whose nonce comes from the account's shared stream. ccxt's ``sign()`` asks for it once
    per private request (through ``incrementing_nonce``), which only works inside
    ``private_calls(account_id)``."""

    def __init__(self, config: dict[str, Any], *, account_id: int) -> None:
        self.aether_account_id = account_id
        super().__init__(config)

    def nonce(self) -> int:
        return private_lock.next_nonce(self.aether_account_id)

    def __repr__(self) -> str:
        return f"<AccountKrakenClient account={self.aether_account_id}>"

    __str__ = __repr__


def private_client(keys: KrakenKeys, *, account_id: int, timeout_ms: int | None = None) -> ccxt.kraken:
    """A ccxt kraken client with ``keys``, aimed at ``settings.KRAKEN_API_URL``; its nonces come from the
    account's stream, so every private call must run inside ``private_calls(account_id)``.

    ccxt's own throttle is off: it is per client object and far more conservative than Kraken's counter;
    calls are serialised per account by the lock and rate-limit answers are backed off by the callers.
    ccxt's own retries are off too: a private call is never resent behind our back."""
    base = settings.KRAKEN_API_URL.rstrip("/")
    return AccountKrakenClient(
        {
            "apiKey": keys.api_key,
            "secret": keys.secret,
            "timeout": timeout_ms if timeout_ms is not None else settings.KRAKEN_PRIVATE_TIMEOUT_MS,
            "enableRateLimit": False,
            "urls": {"api": {"public": base, "private": base}},
            "options": {"maxRetriesOnFailure": 0, "maxRetriesOnFailureDelay": 0},
            "logger": ccxt_logger,
        },
        account_id=account_id,
    )


# --------------------------------------------------------------------------------------- one private call

RATE_LIMIT_ERRORS = frozenset(
    {
        "EAPI:Rate limit exceeded",
        "EOrder:Rate limit exceeded",
        "EGeneral:Temporary lockout",
        "EGeneral:Too many requests",
    }
)
BUSY_ERRORS = frozenset({"EService:Unavailable", "EService:Busy"})
NONCE_ERRORS = frozenset({"EAPI:Invalid nonce"})
#: Kraken answered, but whether an AddOrder took effect is not certain: ask before anything else.
UNCERTAIN_ERRORS = frozenset(
    {"EGeneral:Internal error", "EDatabase:Internal error", "EService:Deadline elapsed"}
)
DUPLICATE_ORDER = "EOrder:Duplicate order"
UNKNOWN_ORDER = "EOrder:Unknown order"
RETRIED_ERRORS = RATE_LIMIT_ERRORS | BUSY_ERRORS | NONCE_ERRORS


@dataclass(frozen=True)
class CallOutcome:
    """One private call: its ``result``, or the Kraken ``errors`` it was answered with, or a ``transport``
    failure (no Kraken answer: timeout, network, HTTP error status, not a JSON envelope)."""

    result: Any = None
    errors: tuple[str, ...] = ()
    transport: str | None = None
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return not self.errors and self.transport is None

    @property
    def message(self) -> str:
        return ", ".join(self.errors) if self.errors else (self.transport or "")

    def has(self, errors: Iterable[str]) -> bool:
        return any(error in errors for error in self.errors)


def kraken_errors(exc: BaseException) -> tuple[str, ...]:
    """The error strings of Kraken's envelope inside a ccxt exception (``"kraken {json body}"``), or ``()``
    when the exception is not an answer of Kraken's (an HTTP error status counts as no answer)."""
    if isinstance(exc.__context__, requests.HTTPError) or isinstance(exc.__cause__, requests.HTTPError):
        return ()
    text = str(exc)
    start = text.find("{")
    if start < 0:
        return ()
    try:
        body = json.loads(text[start:])
    except ValueError:
        return ()
    errors = body.get("error") if isinstance(body, dict) else None
    if isinstance(errors, list) and errors:
        return tuple(str(error) for error in errors)
    return ()


def describe_failure(exc: BaseException) -> str:
    """A transport failure for a director: the ccxt class and its text, never the request's headers."""
    text = str(exc)
    if isinstance(exc.__context__ or exc.__cause__, requests.HTTPError):
        status = getattr(getattr(exc.__context__ or exc.__cause__, "response", None), "status_code", None)
        if status is not None:
            text = f"HTTP {status}: {text}"
    return f"{type(exc).__name__}: {text}"


def call_private(
    client: ccxt.kraken,
    *,
    account_id: int,
    method: str,
    params: dict[str, Any] | None = None,
    retries: int | None = None,
    retry_transport: bool = False,
    sleep: Callable[[float], None] = time.sleep,
    before_send: Callable[[], None] | None = None,
    keys: KrakenKeys | None = None,
) -> CallOutcome:
    """``method`` (e.g. ``"AddOrder"``) under the account's lock, retried after a jittered back-off while
    Kraken answers a rate limit, busy or invalid nonce (nothing done) and, with ``retry_transport``, after a
    transport failure (only for calls that are safe to repeat). ``before_send`` runs inside the lock just
    before each attempt (the simulation wall). The back-off sleeps outside the lock.

    Raises :class:`~trading.brokers.private_lock.PrivateLockError` when the lock cannot be had: nothing
    was sent."""
    limit = settings.KRAKEN_PRIVATE_RETRIES if retries is None else retries
    base = settings.KRAKEN_PRIVATE_BACKOFF_MS / 1000
    attempt = 0
    while True:
        outcome = _call_once(client, account_id, method, params or {}, before_send, keys)
        outcome = CallOutcome(outcome.result, outcome.errors, outcome.transport, attempt + 1)
        retryable = outcome.has(RETRIED_ERRORS) or (retry_transport and outcome.transport is not None)
        if not retryable or attempt >= limit:
            return outcome
        if not outcome.has(NONCE_ERRORS):  # an invalid nonce is retried at once, with a fresh one
            delay = jittered_backoff(attempt, base=base, cap=base * 16, floor=0.5)
            logger.info(
                "account %s: Kraken %s answered %s; retry %d of %d in %.2f s",
                account_id,
                method,
                outcome.message,
                attempt + 1,
                limit,
                delay,
            )
            sleep(delay)
        attempt += 1


def _call_once(
    client: ccxt.kraken,
    account_id: int,
    method: str,
    params: dict[str, Any],
    before_send: Callable[[], None] | None,
    keys: KrakenKeys | None,
) -> CallOutcome:
    endpoint = getattr(client, f"privatePost{method}")
    with private_lock.private_calls(account_id):
        if before_send is not None:
            before_send()
        try:
            response = endpoint(dict(params))
        except ccxt.BaseError as exc:
            errors = kraken_errors(exc)
            if errors:
                return CallOutcome(errors=errors)
            return CallOutcome(transport=scrub(describe_failure(exc), keys))
    if not isinstance(response, dict) or "result" not in response:
        return CallOutcome(transport="Kraken's answer was not its JSON envelope (malformed or truncated)")
    return CallOutcome(result=response["result"])


def check_credentials(*, account_id: int, keys: KrakenKeys) -> tuple[bool, str]:
    """Validate ``keys`` with a private ``Balance`` call under the account's lock: ``(True, "…")``, or
    ``(False, reason)`` with Kraken's message (e.g. ``"EAPI:Invalid key"``) or why Kraken could not be
    asked. The secret is never part of the message."""
    try:
        client = private_client(keys, account_id=account_id)
    except ccxt.BaseError as exc:
        return False, scrub(f"the key could not be used: {type(exc).__name__}", keys)
    try:
        outcome = call_private(
            client, account_id=account_id, method="Balance", retry_transport=True, keys=keys
        )
    except private_lock.PrivateLockError as exc:
        return False, scrub(f"not checked: {exc}", keys)
    except (ValueError, TypeError) as exc:  # e.g. a secret that is not base64: ccxt fails while signing
        return False, scrub(
            f"the secret is not a valid base64 Kraken private key ({type(exc).__name__})", keys
        )
    finally:
        client.close()
    if outcome.errors:
        return False, scrub(outcome.message, keys)
    if outcome.transport is not None:
        return False, scrub(f"Kraken could not be reached: {outcome.transport}", keys)
    assets = len(outcome.result) if isinstance(outcome.result, dict) else 0
    return True, f"Kraken accepted the key (Balance answered with {assets} asset(s))"


# --------------------------------------------------------------------------------------- answer parsing

#: Kraken order statuses → ours (``open`` with an execution is PARTIALLY_FILLED).
STATUS_MAP = {
    "pending": Status.SUBMITTED,
    "open": Status.OPEN,
    "closed": Status.FILLED,
    "canceled": Status.CANCELED,
    "expired": Status.CANCELED,
}
#: Fees are charged in the quote currency (``oflags=fciq``); every pair Aether trades is quoted in USD.
FEE_CURRENCY = "USD"


def decimal(value: Any, default: Decimal | None = None) -> Decimal | None:
    if value is None or value == "":
        return default
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        return default
    return number if number.is_finite() else default


def plain(value: Decimal, places: int) -> str:
    """``value`` as Kraken wants it: fixed-point with ``places`` decimals (already at that precision)."""
    return f"{value.quantize(Decimal(1).scaleb(-places)):f}"


def order_report(txid: str, info: dict[str, Any], fills: tuple[FillReport, ...] = ()) -> OrderReport:
    """One Kraken order (``OpenOrders``/``ClosedOrders``/``QueryOrders`` entry) as our report."""
    kraken_status = str(info.get("status", ""))
    filled = decimal(info.get("vol_exec"), Decimal(0))
    status = STATUS_MAP.get(kraken_status, Status.UNKNOWN)
    if status == Status.OPEN and filled > 0:
        status = Status.PARTIALLY_FILLED
    average = decimal(info.get("price")) if filled > 0 else None
    if filled > 0 and (average is None or average == 0):
        cost = decimal(info.get("cost"), Decimal(0))
        average = cost / filled if cost else None
    reason = str(info.get("reason") or "")
    if status == Status.UNKNOWN:
        reason = f"Kraken status {kraken_status!r}"
    return OrderReport(
        client_order_id=str(info.get("cl_ord_id") or ""),
        status=status,
        exchange_order_id=txid,
        filled_quantity=filled,
        average_price=average,
        reason=reason,
        fills=fills,
    )


def fill_report(
    trade_id: str, info: dict[str, Any], *, symbol: str, client_order_id: str | None
) -> FillReport:
    maker = info.get("maker")
    return FillReport(
        trade_id=trade_id,
        exchange_order_id=info.get("ordertxid"),
        client_order_id=client_order_id,
        symbol=symbol,
        side=Side(str(info["type"])),
        price=decimal(info["price"]),
        quantity=decimal(info["vol"]),
        fee=decimal(info.get("fee"), Decimal(0)),
        fee_currency=FEE_CURRENCY,
        # Kraken's trade entries carry "maker"; when absent the fee already charged is exact anyway.
        liquidity="maker" if maker is True or str(maker).lower() == "true" else "taker",
        executed_at=datetime.fromtimestamp(float(decimal(info["time"])), tz=UTC),
    )


def order_params(request: OrderRequest) -> dict[str, str]:
    """AddOrder's parameters for ``request``: pair, side, type, volume, price (the limit, or the trigger
    of a stop-loss/take-profit), ``cl_ord_id`` and ``oflags=fciq``. Nothing else — in particular no
    ``leverage``, ``reduce_only`` or other margin parameter, ever."""
    pair = request.pair
    params = {
        "pair": pair.kraken_pair,
        "type": Side(request.side).value,
        "ordertype": OrderKind(request.kind).value,
        "volume": plain(request.quantity, pair.lot_decimals),
        "cl_ord_id": request.client_order_id,
        "oflags": "fciq",
    }
    if request.kind == OrderKind.LIMIT:
        params["price"] = plain(request.limit_price, pair.pair_decimals)
    elif request.kind in (OrderKind.STOP_LOSS, OrderKind.TAKE_PROFIT):
        params["price"] = plain(request.stop_price, pair.pair_decimals)
    return params


# ------------------------------------------------------------------------------------------- the broker


class KrakenBroker:
    """The :class:`~trading.brokers.base.Broker` of a live account on Kraken (see the module docstring)."""

    name = "kraken"

    def __init__(
        self,
        account,
        *,
        keys: KrakenKeys,
        client_factory: Callable[..., ccxt.kraken] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.account_id: int = account.pk
        self._keys = keys
        self._client = (client_factory or private_client)(keys, account_id=self.account_id)
        self._sleep = sleep
        self._asset_codes: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"<KrakenBroker account={self.account_id}>"

    __str__ = __repr__

    def close(self) -> None:
        self._client.close()

    # ---------------------------------------------------------------- the walls

    def _refuse_if_simulated(self) -> None:
        """Re-read the account's mode (a fresh query, not a cached instance) before a trading call."""
        from accounts.models import Account

        row = Account.objects.filter(pk=self.account_id).values_list("slug", "simulation_mode").first()
        if row is None:
            raise BrokerRefused(f"account {self.account_id} does not exist: nothing is sent to Kraken")
        slug, simulated = row
        if simulated:
            raise BrokerRefused(
                f"account {slug} is in simulation mode: Kraken's private trading endpoints are refused"
            )

    def _call(self, method: str, params: dict[str, Any] | None = None, **options: Any) -> CallOutcome:
        return call_private(
            self._client,
            account_id=self.account_id,
            method=method,
            params=params,
            sleep=self._sleep,
            keys=self._keys,
            **options,
        )

    def _read(self, method: str, params: dict[str, Any] | None = None) -> Any:
        """A read-only call, retried (transport failures too); :class:`BrokerUnavailable` if it fails."""
        try:
            outcome = self._call(method, params, retry_transport=True)
        except private_lock.PrivateLockError as exc:
            raise BrokerUnavailable(f"Kraken {method} not sent: {exc}") from None
        if not outcome.ok:
            raise BrokerUnavailable(
                f"Kraken {method} failed after {outcome.attempts} attempt(s): {outcome.message}"
            )
        return outcome.result

    # ---------------------------------------------------------------- submit

    def submit(self, request: OrderRequest) -> OrderReport:
        cid = request.client_order_id
        if request.account_id != self.account_id:
            raise BrokerRefused(
                f"order {cid} belongs to account {request.account_id}, not to this broker's account "
                f"{self.account_id}"
            )
        self._refuse_if_simulated()
        from trading.matching import check_order

        problems = check_order(request, reference_price=self._reference_price(request))
        if problems:
            return OrderReport(cid, Status.REJECTED, reason="; ".join(problems))

        try:
            outcome = self._call("AddOrder", order_params(request), before_send=self._refuse_if_simulated)
        except private_lock.PrivateLockError as exc:
            return OrderReport(cid, Status.REJECTED, reason=f"not placed: {exc}")

        if outcome.ok:
            txids = outcome.result.get("txid") if isinstance(outcome.result, dict) else None
            txid = txids[0] if isinstance(txids, list) and txids else None
            if txid is None:
                return self._ask_after_doubt(cid, "AddOrder answered without an order id")
            return self._report_after_accept(cid, str(txid))
        if outcome.has(RATE_LIMIT_ERRORS):
            return OrderReport(
                cid, Status.REJECTED, reason=f"rate limited by Kraken; not placed ({outcome.message})"
            )
        if outcome.has(BUSY_ERRORS):
            return OrderReport(
                cid, Status.REJECTED, reason=f"Kraken unavailable; not placed ({outcome.message})"
            )
        if outcome.has(NONCE_ERRORS):
            return OrderReport(
                cid, Status.REJECTED, reason=f"Kraken kept refusing the nonce; not placed ({outcome.message})"
            )
        if outcome.has({DUPLICATE_ORDER}):  # an open order already carries this client id: it is ours
            return self._ask_after_doubt(cid, f"AddOrder answered {outcome.message}")
        if outcome.transport is not None or outcome.has(UNCERTAIN_ERRORS):
            return self._ask_after_doubt(cid, f"AddOrder: {outcome.message}")
        return OrderReport(cid, Status.REJECTED, reason=outcome.message)

    def _reference_price(self, request: OrderRequest) -> Decimal | None:
        """The live feed's last price, to check a market order's minimum cost (None: left to Kraken)."""
        if request.kind != OrderKind.MARKET:
            return None
        from trading.models import FeedStatus

        return (
            FeedStatus.objects.filter(instrument__kraken_pair=request.pair.kraken_pair)
            .values_list("last_price", flat=True)
            .first()
        )

    def _report_after_accept(self, cid: str, txid: str) -> OrderReport:
        """Kraken accepted the order: what it is now (a market order is usually filled already)."""
        try:
            found = self._orders_by_txid([txid])
        except BrokerUnavailable as exc:
            return OrderReport(cid, Status.SUBMITTED, exchange_order_id=txid, reason=f"accepted; {exc}")
        report = found.get(txid)
        if report is None:
            return OrderReport(cid, Status.SUBMITTED, exchange_order_id=txid)
        return report if report.client_order_id else _with_client_id(report, cid)

    def _ask_after_doubt(self, cid: str, what_happened: str) -> OrderReport:
        """The order may or may not be on Kraken: ask by client order id, never resend."""
        try:
            found = self.fetch_order(cid)
        except BrokerUnavailable as exc:
            return OrderReport(
                cid, Status.UNKNOWN, reason=f"{what_happened}; asking Kraken failed too ({exc}); not resent"
            )
        if found is None:
            return OrderReport(
                cid,
                Status.UNKNOWN,
                reason=f"{what_happened}; Kraken has no order with this client id yet; not resent "
                "(reconciliation decides)",
            )
        return found

    # ---------------------------------------------------------------- cancel

    def cancel(self, *, client_order_id: str, exchange_order_id: str | None) -> OrderReport:
        self._refuse_if_simulated()
        params = {"txid": exchange_order_id} if exchange_order_id else {"cl_ord_id": client_order_id}
        try:
            # Cancelling twice is harmless (the second answers "Unknown order"): transport failures retry.
            outcome = self._call(
                "CancelOrder", params, retry_transport=True, before_send=self._refuse_if_simulated
            )
        except private_lock.PrivateLockError as exc:
            raise BrokerUnavailable(f"Kraken CancelOrder not sent: {exc}") from None
        if outcome.transport is not None or outcome.has(RETRIED_ERRORS):
            raise BrokerUnavailable(
                f"Kraken CancelOrder failed after {outcome.attempts} attempt(s): {outcome.message}"
            )
        note = (
            ""
            if outcome.ok or outcome.has({UNKNOWN_ORDER})
            else f"cancel refused by Kraken: {outcome.message}"
        )
        report = self.fetch_order(client_order_id)
        if report is None:
            return OrderReport(
                client_order_id,
                Status.UNKNOWN,
                exchange_order_id=exchange_order_id,
                reason=note or "Kraken has no order with this client id; nothing to cancel",
            )
        if note:
            return _with_reason(report, note)
        return report

    # ---------------------------------------------------------------- reads

    def fetch_order(self, client_order_id: str) -> OrderReport | None:
        query = {"cl_ord_id": client_order_id, "trades": "true"}
        for method, key in (("OpenOrders", "open"), ("ClosedOrders", "closed")):
            result = self._read(method, query)
            orders = result.get(key) or {} if isinstance(result, dict) else {}
            matching = [
                (txid, info) for txid, info in orders.items() if info.get("cl_ord_id") == client_order_id
            ]
            if matching:
                txid, info = max(matching, key=lambda item: float(item[1].get("opentm") or 0))
                return self._with_fills(txid, info)
        return None

    def open_orders(self) -> list[OrderReport]:
        result = self._read("OpenOrders", {"trades": "true"})
        orders = result.get("open") or {} if isinstance(result, dict) else {}
        return [self._with_fills(txid, info) for txid, info in orders.items()]

    def balances(self) -> list[BalanceReport]:
        result = self._read("BalanceEx")
        codes = self._asset_code_map()
        reports = []
        for asset, entry in sorted((result or {}).items()):
            if isinstance(entry, dict):
                total, reserved = (
                    decimal(entry.get("balance"), Decimal(0)),
                    decimal(entry.get("hold_trade"), Decimal(0)),
                )
            else:  # the plain Balance shape
                total, reserved = decimal(entry, Decimal(0)), Decimal(0)
            reports.append(
                BalanceReport(asset=self._asset_code(asset, codes), total=total, reserved=reserved)
            )
        return reports

    def fills_since(self, since: datetime) -> list[FillReport]:
        start = Decimal(str(since.timestamp()))
        trades: dict[str, dict[str, Any]] = {}
        offset = 0
        while True:
            result = self._read("TradesHistory", {"start": f"{start:f}", "ofs": str(offset)})
            page = (result or {}).get("trades") or {}
            trades.update(page)
            offset += len(page)
            if not page or offset >= int((result or {}).get("count") or 0):
                break
        client_ids = self._client_ids(
            {info["ordertxid"] for info in trades.values() if info.get("ordertxid")}
        )
        symbols = self._symbols()
        fills = [
            fill_report(
                trade_id,
                info,
                symbol=symbols.get(str(info.get("pair")), str(info.get("pair"))),
                client_order_id=client_ids.get(str(info.get("ordertxid"))),
            )
            for trade_id, info in trades.items()
        ]
        return sorted(fills, key=lambda fill: (fill.executed_at, fill.trade_id))

    # ---------------------------------------------------------------- helpers

    def _with_fills(self, txid: str, info: dict[str, Any]) -> OrderReport:
        trade_ids = [str(t) for t in info.get("trades") or []]
        fills: list[FillReport] = []
        if trade_ids:
            symbols = self._symbols()
            cid = info.get("cl_ord_id")
            for chunk in _chunks(trade_ids, 20):
                result = self._read("QueryTrades", {"txid": ",".join(chunk)})
                for trade_id, trade in (result or {}).items():
                    symbol = symbols.get(str(trade.get("pair")), str(trade.get("pair")))
                    fills.append(fill_report(trade_id, trade, symbol=symbol, client_order_id=cid))
        fills.sort(key=lambda fill: (fill.executed_at, fill.trade_id))
        return order_report(txid, info, tuple(fills))

    def _orders_by_txid(self, txids: list[str]) -> dict[str, OrderReport]:
        reports = {}
        for chunk in _chunks(txids, 50):
            result = self._read("QueryOrders", {"txid": ",".join(chunk), "trades": "true"})
            for txid, info in (result or {}).items():
                reports[txid] = self._with_fills(txid, info)
        return reports

    def _client_ids(self, txids: set[str]) -> dict[str, str]:
        found: dict[str, str] = {}
        for chunk in _chunks(sorted(txids), 50):
            result = self._read("QueryOrders", {"txid": ",".join(chunk)})
            for txid, info in (result or {}).items():
                if info.get("cl_ord_id"):
                    found[txid] = str(info["cl_ord_id"])
        return found

    def _symbols(self) -> dict[str, str]:
        """Kraken pair id → our symbol, from the instrument universe."""
        from trading.models import Instrument

        return dict(Instrument.objects.values_list("kraken_pair", "symbol"))

    def _asset_code_map(self) -> dict[str, str]:
        """Kraken asset id → common code (XXBT → BTC, ZUSD → USD), from Kraken's public Assets (cached)."""
        if self._asset_codes is None:
            try:
                answer = self._client.publicGetAssets()
            except ccxt.BaseError as exc:
                raise BrokerUnavailable(f"Kraken Assets failed: {describe_failure(exc)}") from None
            result = answer.get("result") if isinstance(answer, dict) else None
            if not isinstance(result, dict):
                raise BrokerUnavailable("Kraken Assets: the answer was not its JSON envelope")
            self._asset_codes = {
                asset_id: common_code(str(info.get("altname") or asset_id))
                for asset_id, info in result.items()
            }
        return self._asset_codes

    @staticmethod
    def _asset_code(asset: str, codes: dict[str, str]) -> str:
        if asset in codes:
            return codes[asset]
        head, dot, tail = asset.partition(".")  # earn/staking variants: "XBT.F" → "BTC.F"
        return f"{codes.get(head, common_code(head))}{dot}{tail}"


def _chunks(items: list[str], size: int) -> Iterable[list[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _with_client_id(report: OrderReport, cid: str) -> OrderReport:
    from dataclasses import replace

    return replace(report, client_order_id=cid)


def _with_reason(report: OrderReport, reason: str) -> OrderReport:
    from dataclasses import replace

    return replace(report, reason=reason)
