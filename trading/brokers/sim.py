"""The simulated broker: fills against market data with the matching core (``trading/matching.py``).

It answers like Kraken would, but from the account's simulated book: ``Order``, ``Fill`` and ``Balance`` rows
with ``broker="sim"``. It never writes them — the order service persists what it reports (see
``trading/brokers/base.py``). Prices come from a :class:`~trading.quotes.QuoteSource` (by default the live
feed's last price or the last closed candle), fees from the account's Kraken fee tier.

Decisions:

* A quote that is missing or stale (its ``fresh_until`` is before the broker's clock) rejects the order: the
  simulator does not invent prices. Replay passes its market clock as ``clock``.
* Funds are checked a second time here (the service's reservation is the first wall): against the Balance's
  available amount plus what this very order already reserved. A buy that fills now needs its cost plus
  fee; a resting buy limit its limit cost plus the maker fee; a resting buy stop or take-profit its
  trigger cost plus the taker fee. When a resting order executes later (:meth:`SimBroker.match_bar`,
  :meth:`SimBroker.match_quote`) its real cost is checked again, and an order its funds can no longer
  pay for (a buy stop that gapped far up) is reported CANCELED with the reason.
* :meth:`SimBroker.match_bar` matches every resting order against the bar it is given: the caller passes
  bars that close after the orders were placed (the strategy cycle does, bar after bar).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from decimal import Decimal

from django.conf import settings
from django.db.models import Subquery
from django.utils import timezone

from trading.brokers.base import (
    BalanceReport,
    FillReport,
    OrderKind,
    OrderReport,
    OrderRequest,
    PairRules,
    Side,
    Status,
)
from trading.fees import FeeRates
from trading.matching import (
    Bar,
    Execution,
    Quote,
    SlippageModel,
    check_order,
    fee_for,
    match_on_bar,
    match_on_quote,
    match_on_submit,
    plain,
    tick_of,
)
from trading.models import Balance, BrokerName, Fill, Instrument, Order, OrderStatus
from trading.quotes import DatabaseQuoteSource, QuoteSource
from trading.selectors import fee_rates_for, pair_rules_for

SIM = BrokerName.SIM.value
RESTING = (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED)
# Rows in these states without a sim order id were never accepted by the simulator.
UNSENT = (OrderStatus.NEW, OrderStatus.SUBMITTED, OrderStatus.UNKNOWN)


def default_slippage() -> SlippageModel:
    return SlippageModel(bps=settings.SIM_SLIPPAGE_BPS, impact=settings.SIM_SLIPPAGE_IMPACT)


def _new_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24].upper()


class SimBroker:
    """The :class:`~trading.brokers.base.Broker` of an account in simulation mode."""

    name = SIM

    def __init__(
        self,
        account,
        *,
        quotes: QuoteSource | None = None,
        slippage: SlippageModel | None = None,
        clock: Callable[[], datetime] = timezone.now,
        fees: Callable[..., FeeRates] | None = None,
        instruments: Callable[[str], Instrument | None] | None = None,
        reservations: Callable[[str], tuple[str, Decimal] | None] | None = None,
    ) -> None:
        self.account = account
        self.quotes = DatabaseQuoteSource() if quotes is None else quotes
        self.slippage = default_slippage() if slippage is None else slippage
        self.clock = clock
        # The account's fee tier (``fee_rates_for`` unless the caller already read it for this order).
        self.fees = fee_rates_for if fees is None else fees
        # The instrument of a symbol when the caller already holds it (``None``: read from the universe).
        self.instruments = instruments
        # What an order (by client id) reserved, as (asset, amount), when the caller took the reservation
        # in this very transaction (``None``: read from the book).
        self.reservations = reservations

    # --- Orders ------------------------------------------------------------------------------------------

    def submit(self, request: OrderRequest) -> OrderReport:
        def rejected(reason: str) -> OrderReport:
            return OrderReport(client_order_id=request.client_order_id, status=Status.REJECTED, reason=reason)

        symbol = request.pair.symbol
        instrument = self.instruments(symbol) if self.instruments is not None else None
        if instrument is None:
            instrument = Instrument.objects.filter(symbol=symbol).first()
        quote = None if instrument is None else self.quotes.quote(instrument)
        reference = None if quote is None else quote.touch(request.side)
        problems = check_order(request, reference_price=reference)
        if problems:
            return rejected("; ".join(problems))
        if instrument is None:
            return rejected(f"{symbol} is not in the synced universe (run manage.py sync_universe)")
        now = self.clock()
        if quote is None:
            return rejected(
                f"no market price for {symbol} yet: the simulator fills only against market data "
                "(is the market feed running, or are candles loaded?)"
            )
        if quote.is_stale(now):
            return rejected(
                f"the last {symbol} price ({plain(quote.last)} USD at {quote.at:%Y-%m-%d %H:%M:%S} UTC) is "
                "stale: the simulator does not fill against an old price"
            )

        fees = self.fees(account=self.account, instrument=instrument)
        execution = match_on_submit(request, quote, fees=fees, slippage=self.slippage, at=now)
        problem = self._funds_problem(request, execution=execution, fees=fees)
        if problem:
            return rejected(problem)
        exchange_order_id = _new_id("SIM-O")
        if execution is None:
            return OrderReport(
                client_order_id=request.client_order_id,
                status=Status.OPEN,
                exchange_order_id=exchange_order_id,
            )
        return self._filled_report(
            request,
            execution,
            exchange_order_id=exchange_order_id,
            filled_before=Decimal(0),
            average_before=None,
        )

    def cancel(self, *, client_order_id: str, exchange_order_id: str | None) -> OrderReport:
        order = self._order(client_order_id)
        if order is None:
            return OrderReport(
                client_order_id=client_order_id,
                status=Status.REJECTED,
                exchange_order_id=exchange_order_id,
                reason="the simulator has no order with this client order id: nothing to cancel",
            )
        report = self._report(order)
        if order.is_final:
            return replace(report, reason=f"already {order.status.lower()}: nothing to cancel")
        return OrderReport(
            client_order_id=client_order_id,
            status=Status.CANCELED,
            exchange_order_id=order.kraken_order_id or exchange_order_id,
            filled_quantity=report.filled_quantity,
            average_price=report.average_price,
            reason="canceled",
            fills=report.fills,
        )

    def fetch_order(self, client_order_id: str) -> OrderReport | None:
        order = self._order(client_order_id)
        if order is None or (order.status in UNSENT and not order.kraken_order_id):
            return None
        return self._report(order)

    def open_orders(self) -> list[OrderReport]:
        orders = (
            self._book(Order)
            .filter(status__in=RESTING)
            .select_related("instrument")
            .order_by("created_at", "id")
        )
        return [self._report(order) for order in orders]

    def balances(self) -> list[BalanceReport]:
        return [
            BalanceReport(asset=balance.asset, total=balance.total, reserved=balance.reserved)
            for balance in self._book(Balance).order_by("asset")
        ]

    def fills_since(self, since: datetime) -> list[FillReport]:
        fills = (
            self._book(Fill)
            .filter(executed_at__gt=since)
            .select_related("order", "instrument")
            .order_by("executed_at", "id")
        )
        return [_fill_report(fill) for fill in fills]

    # --- Resting orders against new market data ----------------------------------------------------------

    def match_bar(self, *, instrument: Instrument, bar: Bar) -> list[OrderReport]:
        """Reports (FILLED, or CANCELED when its funds no longer cover it) for this account's resting sim
        orders on ``instrument`` that execute on ``bar``; the order service persists them."""
        return self._match(
            instrument, lambda request, fees: match_on_bar(request, bar, fees=fees, slippage=self.slippage)
        )

    def match_quote(self, *, instrument: Instrument, quote: Quote) -> list[OrderReport]:
        """The same against a live quote (a tick); nothing matches a stale quote."""
        if quote.is_stale(self.clock()):
            return []
        return self._match(
            instrument,
            lambda request, fees: match_on_quote(request, quote, fees=fees, slippage=self.slippage),
        )

    def _match(self, instrument: Instrument, matcher) -> list[OrderReport]:
        orders = list(
            self._book(Order)
            .filter(instrument=instrument, status__in=RESTING)
            .exclude(kraken_order_id="")
            .select_related("instrument")
            .order_by("created_at", "id")
        )
        if not orders:
            return []
        fees = self.fees(account=self.account, instrument=instrument)
        rules = pair_rules_for(instrument)
        reports = []
        for order in orders:
            request = _request_of(order, rules)
            execution = matcher(request, fees)
            if execution is None:
                continue
            problem = self._funds_problem(request, execution=execution, fees=fees)
            if problem:
                reports.append(
                    OrderReport(
                        client_order_id=order.client_order_id,
                        status=Status.CANCELED,
                        exchange_order_id=order.kraken_order_id,
                        filled_quantity=order.filled_quantity,
                        average_price=order.average_fill_price,
                        reason=f"canceled by the simulator when it triggered: {problem}",
                    )
                )
                continue
            reports.append(
                self._filled_report(
                    request,
                    execution,
                    exchange_order_id=order.kraken_order_id,
                    filled_before=order.filled_quantity,
                    average_before=order.average_fill_price,
                )
            )
        return reports

    # --- Helpers -----------------------------------------------------------------------------------------

    def _book(self, model):
        return model.objects.filter(account_id=self.account.pk, broker=SIM)

    def _order(self, client_order_id: str) -> Order | None:
        return self._book(Order).filter(client_order_id=client_order_id).select_related("instrument").first()

    def _funds_problem(self, request: OrderRequest, *, execution: Execution | None, fees: FeeRates) -> str:
        """Why this account's simulated balances cannot pay for ``request`` ('' when they can). An order
        whose own reservation, taken in this transaction from the available balance, covers the need can
        pay without another read."""
        pair = request.pair
        if request.side == Side.SELL:
            asset, need = pair.base_asset, request.quantity
            what = f"selling {plain(request.quantity)} {asset}"
        else:
            asset = "USD"
            if execution is not None:
                price, fee = execution.price, execution.fee
            else:
                resting_limit = request.kind == OrderKind.LIMIT
                price = request.limit_price if resting_limit else request.stop_price
                fee = fee_for(price * request.quantity, fees.maker_pct if resting_limit else fees.taker_pct)
            need = price * request.quantity + fee
            what = f"buying {plain(request.quantity)} {pair.base_asset} costs {plain(need)} USD with fees"
        taken = None if self.reservations is None else self.reservations(request.client_order_id)
        if taken is not None and taken[0] == asset and need <= taken[1]:
            return ""
        own = self._book(Order).filter(client_order_id=request.client_order_id, reserved_asset=asset)
        # The balance and what this very order holds of it, in one query.
        row = (
            self._book(Balance)
            .filter(asset=asset)
            .annotate(own=Subquery(own.values("reserved_amount")[:1]))
            .values_list("total", "reserved", "own")
            .first()
        )
        if row is None:  # no balance row: only the order's own reservation could pay
            available = own.values_list("reserved_amount", flat=True).first() or Decimal(0)
        else:
            total, reserved, held = row
            available = total - reserved + (held or Decimal(0))
        if need > available:
            return f"insufficient funds: {what}, {plain(available)} {asset} available in the simulated book"
        return ""

    def _filled_report(
        self,
        request: OrderRequest,
        execution: Execution,
        *,
        exchange_order_id: str,
        filled_before: Decimal,
        average_before: Decimal | None,
    ) -> OrderReport:
        fill = FillReport(
            trade_id=_new_id("SIM-"),
            exchange_order_id=exchange_order_id,
            client_order_id=request.client_order_id,
            symbol=request.pair.symbol,
            side=request.side,
            price=execution.price,
            quantity=execution.quantity,
            fee=execution.fee,
            fee_currency=execution.fee_currency,
            liquidity=execution.liquidity,
            executed_at=execution.executed_at,
        )
        filled = filled_before + execution.quantity
        if filled_before and average_before is not None:
            average = (average_before * filled_before + execution.notional) / filled
        else:
            average = execution.price
        return OrderReport(
            client_order_id=request.client_order_id,
            status=Status.FILLED,
            exchange_order_id=exchange_order_id,
            filled_quantity=filled,
            average_price=average,
            fills=(fill,),
        )

    def _report(self, order: Order) -> OrderReport:
        fills = tuple(_fill_report(fill, order=order) for fill in order.fills.order_by("executed_at", "id"))
        return OrderReport(
            client_order_id=order.client_order_id,
            status=Status(order.status),
            exchange_order_id=order.kraken_order_id or None,
            filled_quantity=order.filled_quantity,
            average_price=order.average_fill_price,
            reason=order.status_reason,
            fills=fills,
        )


def _request_of(order: Order, rules: PairRules) -> OrderRequest:
    """A resting order row as the core's request, for what is still unfilled, at the pair's precision."""
    lot = Decimal(1).scaleb(-rules.lot_decimals)
    tick = tick_of(rules)

    def price(value: Decimal | None) -> Decimal | None:
        return None if value is None else value.quantize(tick)

    return OrderRequest(
        account_id=order.account_id,
        client_order_id=order.client_order_id,
        pair=rules,
        side=Side(order.side),
        kind=OrderKind(order.order_type),
        quantity=(order.quantity - order.filled_quantity).quantize(lot),
        limit_price=price(order.limit_price),
        stop_price=price(order.stop_price),
    )


def _fill_report(fill: Fill, *, order: Order | None = None) -> FillReport:
    order = fill.order if order is None else order
    return FillReport(
        trade_id=fill.trade_id,
        exchange_order_id=order.kraken_order_id or None,
        client_order_id=order.client_order_id,
        symbol=order.instrument.symbol,
        side=Side(fill.side),
        price=fill.price,
        quantity=fill.quantity,
        fee=fill.fee,
        fee_currency=fill.fee_currency,
        liquidity=fill.liquidity,
        executed_at=fill.executed_at,
    )
