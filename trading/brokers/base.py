"""The one broker interface, and the plain values that cross it. No Django here.

Two brokers implement :class:`Broker`: ``SimBroker`` (``trading/brokers/sim.py``, fills against market data)
and ``KrakenBroker`` (``trading/brokers/kraken.py``, ccxt with the account's own key). The order services
(``trading/services/orders.py``) commit the order row first, then call the broker chosen from the account's
mode, then persist what the broker reports. A broker never writes the order book itself.

Outcomes are values, not exceptions: a rejection is an :class:`OrderReport` with status ``REJECTED`` and the
exchange's message in ``reason``; a timeout on submission is status ``UNKNOWN`` (never "failed"). Exceptions
are for what the caller must not mistake for an answer: :class:`BrokerRefused` (a safety wall, e.g. the
Kraken broker asked to act for a simulated account) and :class:`BrokerUnavailable` (a read that could not be
completed after its retries).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from enum import StrEnum
from typing import Protocol, runtime_checkable


class Status(StrEnum):
    """Order statuses; the same values as ``trading.models.OrderStatus``."""

    NEW = "NEW"
    SUBMITTED = "SUBMITTED"
    OPEN = "OPEN"
    PARTIALLY_FILLED = "PARTIALLY_FILLED"
    FILLED = "FILLED"
    CANCELED = "CANCELED"
    REJECTED = "REJECTED"
    UNKNOWN = "UNKNOWN"


class Side(StrEnum):
    BUY = "buy"
    SELL = "sell"


class OrderKind(StrEnum):
    """Order types; the same values as ``trading.models.OrderType`` (and Kraken's ``ordertype``)."""

    MARKET = "market"
    LIMIT = "limit"
    STOP_LOSS = "stop-loss"
    TAKE_PROFIT = "take-profit"


class BrokerError(Exception):
    """Base of broker exceptions; the message is for a director to read."""


class BrokerRefused(BrokerError):
    """The broker will not act at all (a safety wall): nothing was sent."""


class BrokerUnavailable(BrokerError):
    """A read or cancel could not be completed (network, 5xx, rate limit after retries); retry later."""


@dataclass(frozen=True, slots=True)
class PairRules:
    """What Kraken's AssetPairs says about one spot pair: the limits every order must respect."""

    symbol: str  # "BTC/USD"
    kraken_pair: str  # "XXBTZUSD"
    base_asset: str  # "BTC"
    quote_asset: str  # "USD"
    ordermin: Decimal
    costmin: Decimal
    tick_size: Decimal
    pair_decimals: int
    lot_decimals: int
    cost_decimals: int
    status: str  # "online", "cancel_only", …


@dataclass(frozen=True, slots=True)
class OrderRequest:
    """One order as the order service hands it to a broker."""

    account_id: int
    client_order_id: str
    pair: PairRules
    side: Side
    kind: OrderKind
    quantity: Decimal
    limit_price: Decimal | None = None
    stop_price: Decimal | None = None  # trigger of a stop-loss or take-profit


@dataclass(frozen=True, slots=True)
class FillReport:
    """One execution. ``fee`` is in ``fee_currency`` (USD unless the fee was charged in the base)."""

    trade_id: str
    exchange_order_id: str | None
    client_order_id: str | None
    symbol: str
    side: Side
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str  # "maker" | "taker"
    executed_at: datetime


@dataclass(frozen=True, slots=True)
class OrderReport:
    """What the broker knows about one order right now."""

    client_order_id: str
    status: Status
    exchange_order_id: str | None = None
    filled_quantity: Decimal = Decimal(0)
    average_price: Decimal | None = None
    reason: str = ""
    fills: tuple[FillReport, ...] = field(default=())


@dataclass(frozen=True, slots=True)
class BalanceReport:
    """One asset on the exchange: ``total`` held, ``reserved`` by open orders (Kraken's ``hold_trade``)."""

    asset: str  # common code: USD, BTC, ETH…
    total: Decimal
    reserved: Decimal = Decimal(0)


@runtime_checkable
class Broker(Protocol):
    """Submit, cancel, and look up orders, balances and fills of one account."""

    name: str  # "sim" | "kraken"

    def submit(self, request: OrderRequest) -> OrderReport:
        """Place the order. Never raises for an exchange answer: REJECTED with the reason, or UNKNOWN when
        the exchange may or may not have it (then the caller reconciles before anything is resent)."""
        ...

    def cancel(self, *, client_order_id: str, exchange_order_id: str | None) -> OrderReport:
        """Cancel an open order; the report says what the order is now (it may have filled meanwhile)."""
        ...

    def fetch_order(self, client_order_id: str) -> OrderReport | None:
        """The order with this client id, open or closed, with its fills; ``None`` when the exchange has
        never seen it."""
        ...

    def open_orders(self) -> list[OrderReport]: ...

    def balances(self) -> list[BalanceReport]: ...

    def fills_since(self, since: datetime) -> list[FillReport]:
        """Executions after ``since``, oldest first."""
        ...
