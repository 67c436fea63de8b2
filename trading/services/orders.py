"""Order management: the only writers of orders, fills, positions, balances and trades.

The path of one order (``order_submit``):

1. **Intent**, one transaction: lock the account row, return the existing order when the client order id
   is known (idempotent), choose the broker from the account's mode *now* (``sim`` or ``kraken``), check the
   pair's Kraken rules, reserve the USD (buy) or the base (sell) it may use, insert the row ``NEW`` and its
   audit event. A simulated order is handed to the simulator inside this same transaction (there is no
   network call) and commits already matched; a Kraken order commits as ``NEW`` before anything is sent.
2. **Send** (Kraken): mark ``SUBMITTED`` (committed), then hand the order to the broker, outside any
   transaction. It runs under the account's private-call lock and refuses an account simulated by then.
3. **Apply** (``order_apply_report``), one transaction: the broker's report moves the status, every new fill
   updates the position, the balances and the reservation, a round trip that closes writes a ``Trade``, and
   one audit event records it all.

A worker that dies between 1 and 2 leaves ``NEW``, between 2 and 3 ``SUBMITTED``: reconciliation
(``trading/services/reconcile.py``) asks the broker by client order id and applies what it says; it never
resends. A timeout is ``UNKNOWN``, never a failure. ``order_submit`` must not be called inside an outer
transaction: the intent has to be committed before the network call.

Lock order (always): account → position → order → balances.
"""

from __future__ import annotations

import functools
import logging
import os
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import OuterRef, Subquery, Sum
from django.utils import timezone
from prometheus_client import Counter
from simple_history.utils import get_change_reason_from_object

from accounts.models import Account
from accounts.selectors import user_can
from aether_site.rows import insert_rows, select_rows, update_row
from governance.actors import SystemActor, actor_label, actor_user
from governance.services import AuditEntry, audit_record, audit_record_many, audit_rows_locked
from trading import ledger
from trading.brokers.base import (
    Broker,
    BrokerRefused,
    FillReport,
    OrderKind,
    OrderReport,
    OrderRequest,
    Side,
    Status,
)
from trading.models import (
    FINAL_STATUSES,
    LIVE_STATUSES,
    AccountFeeTier,
    Balance,
    BrokerName,
    Fill,
    Instrument,
    Order,
    OrderStatus,
    OrderType,
    Position,
    Trade,
)
from trading.selectors import book_of, pair_rules_for

logger = logging.getLogger(__name__)

ORDERS = Counter("aether_orders", "Orders by broker and outcome", ["broker", "outcome"])
FILLS = Counter("aether_fills", "Fills recorded, by broker", ["broker"])

QUOTE_ASSET = "USD"


class OrderError(ValidationError):
    """An order request that cannot even be recorded (unknown pair, reused client id, bad numbers)."""


def order_request(order: Order) -> OrderRequest:
    return OrderRequest(
        account_id=order.account_id,
        client_order_id=order.client_order_id,
        pair=pair_rules_for(order.instrument),
        side=Side(order.side),
        kind=OrderKind(order.order_type),
        quantity=order.quantity,
        limit_price=order.limit_price,
        stop_price=order.stop_price,
    )


# ----------------------------------------------------------------------------------------------------------
# Brokers
# ----------------------------------------------------------------------------------------------------------

BrokerFactory = Callable[[Account, str], Broker]


def default_broker(account: Account, name: str) -> Broker:
    """The broker an order of ``account`` recorded as ``name`` goes to."""
    if name == BrokerName.SIM:
        from trading.brokers.sim import SimBroker

        return SimBroker(account)
    if name == BrokerName.KRAKEN:
        from accounts.credentials import kraken_keys_for

        return kraken_broker(account, keys=kraken_keys_for(account))
    raise ValueError(f"unknown broker {name!r}")


def kraken_broker(account: Account, *, keys) -> Broker:
    """The Kraken broker of ``account`` with ``keys`` (``trading.brokers.kraken.KrakenKeys``), on a ccxt
    client this thread keeps for the account between orders: building a client costs more than an
    order's own work, and its HTTP session keeps the connection to Kraken open. Reuse changes nothing
    for the nonce (ccxt asks ``private_lock.next_nonce``, the account's one stream, under the account's
    lock, for every request) or for the walls (``KrakenBroker`` is still built per order). A client is
    kept per thread and process only, and replaced when the keys, the API address or the timeout change."""
    return _kept_client_broker()(account, keys=keys, client_factory=_kept_client)


_kept = threading.local()


def _kept_client(keys, *, account_id: int, timeout_ms: int | None = None):
    from trading.brokers.kraken import private_client

    if getattr(_kept, "pid", None) != os.getpid():  # a forked worker never uses its parent's sockets
        _kept.pid, _kept.clients = os.getpid(), {}
    identity = (
        keys,
        settings.KRAKEN_API_URL,
        settings.KRAKEN_PRIVATE_TIMEOUT_MS if timeout_ms is None else timeout_ms,
    )
    kept = _kept.clients.get(account_id)
    if kept is not None:
        if kept[0] == identity:
            return kept[1]
        kept[1].close()
    client = private_client(keys, account_id=account_id, timeout_ms=timeout_ms)
    _kept.clients[account_id] = (identity, client)
    return client


@functools.cache
def _kept_client_broker():
    from trading.brokers.kraken import KrakenBroker

    class KeptClientKrakenBroker(KrakenBroker):
        """A ``KrakenBroker`` whose ccxt client outlives it (see ``kraken_broker``): closing the broker
        leaves the client, and its open connection, to the next order of this thread."""

        def close(self) -> None:
            return None

    return KeptClientKrakenBroker


# ----------------------------------------------------------------------------------------------------------
# Submit
# ----------------------------------------------------------------------------------------------------------


def _check_actor(actor, account: Account) -> None:
    if isinstance(actor, SystemActor):
        return
    if not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"{actor_label(actor)} may not place orders for {account}: directors only.")


def _entry_gates(account: Account) -> list[str]:
    """A buy opens or adds exposure: refused while the account's trading switch is off, a director halted
    it, or its kill switch is latched (sells, which reduce exposure, always pass here)."""
    from risk.selectors import switch_state_for

    if not account.trading_enabled:
        return [f"trading is disabled for {account}: no new positions are opened"]
    # Read after the account's lock, in its own statement: a row joined to the locking read would be the
    # version from before a trip that committed while this order waited for the lock.
    state = switch_state_for(account=account)
    if state.halted:
        return [f"{account} is halted by a director ({state.halt_reason}): no new positions"]
    if state.latched:
        return [f"the kill switch of {account} is latched ({state.reason}): no new positions until re-armed"]
    return []


def _reference_price(
    instrument: Instrument, order_type: str, side: str, limit_price, stop_price, quotes
) -> Decimal | None:
    """The price a buy is reserved at: its limit, its trigger, or the current touch for a market order."""
    if order_type == OrderType.LIMIT:
        return limit_price
    if order_type in (OrderType.STOP_LOSS, OrderType.TAKE_PROFIT):
        return stop_price
    from trading.quotes import DatabaseQuoteSource

    quote = (quotes or DatabaseQuoteSource()).quote(instrument)
    return None if quote is None else quote.touch(side)


def _same_intent(order: Order, **fields) -> bool:
    return all(getattr(order, name) == value for name, value in fields.items())


def _lock_balance(account: Account, broker: str, asset: str) -> Balance:
    balance, _ = Balance.objects.select_for_update().get_or_create(
        account=account, broker=broker, asset=asset
    )
    return balance


def _save_order(order: Order, history: list | None, update_fields: list[str] | None = None) -> None:
    """Save ``order`` (every field, or ``update_fields``) and record its history row — the very row
    ``simple_history``'s ``post_save`` signal would write (same fields, date, user and change reason),
    built here instead of through the signal, which ``aether_site.rows`` does not send. With ``history``
    (a list) the row is kept there for :func:`_write_history`, so the rows of one transaction go in one
    INSERT; with ``None`` it is written now."""
    history_type = "+" if order._state.adding else "~"
    if order._state.adding:
        insert_rows([order])
    else:
        update_row(order, update_fields)
    if not getattr(settings, "SIMPLE_HISTORY_ENABLED", True):
        return
    model = _historical_order()
    row = model(
        history_date=getattr(order, "_history_date", timezone.now()),
        history_type=history_type,
        history_user=model.get_default_history_user(order),
        history_change_reason=get_change_reason_from_object(order),
        **{field.attname: getattr(order, field.attname) for field in model.tracked_fields},
    )
    if history is None:
        insert_rows([row])
    else:
        history.append(row)


def _write_history(rows: list) -> None:
    insert_rows(rows)


_HISTORICAL_ORDER = None


def _historical_order():
    """``Order.history.model`` (looked up once: the descriptor builds a manager on every access)."""
    global _HISTORICAL_ORDER
    if _HISTORICAL_ORDER is None:
        _HISTORICAL_ORDER = Order.history.model
    return _HISTORICAL_ORDER


def _rejected(order: Order, reason: str) -> None:
    order.status = OrderStatus.REJECTED
    order.status_reason = reason
    order.closed_at = timezone.now()


def order_submit(
    *,
    account: Account,
    actor,
    instrument: Instrument,
    side: str,
    order_type: str,
    quantity: Decimal,
    limit_price: Decimal | None = None,
    stop_price: Decimal | None = None,
    client_order_id: str | None = None,
    reason: str = "",
    broker_factory: BrokerFactory | None = None,
    quotes=None,
) -> Order:
    """Record the order, send it to the broker of the account's mode, and apply the answer. Returns the
    order as it stands after the broker's answer (REJECTED with the reason, UNKNOWN after a timeout, …).
    Calling it again with the same ``client_order_id`` returns that order and sends nothing."""
    from trading.quotes import DatabaseQuoteSource

    this_order = _ThisOrder(quotes or DatabaseQuoteSource(), instrument)
    if broker_factory is None:
        broker_factory = _with_quotes(this_order)
    order, created = order_record(
        account=account,
        actor=actor,
        instrument=instrument,
        side=side,
        order_type=order_type,
        quantity=quantity,
        limit_price=limit_price,
        stop_price=stop_price,
        client_order_id=client_order_id,
        reason=reason,
        quotes=this_order,
        simulate_with=broker_factory,
    )
    if not created or order.status != OrderStatus.NEW:
        return order
    if order.broker == BrokerName.SIM:  # the simulator failed to set up inside the intent: not here
        return order_send(order_id=order.pk, actor=actor, broker_factory=broker_factory)
    return _send_live(order.pk, actor, broker_factory)


class _ThisOrder:
    """One look at the market and at the fee tier per order: the reservation and the simulator see the
    same quote and the same rates (and the order's instrument, which the simulator need not read again)."""

    def __init__(self, source, instrument: Instrument | None = None) -> None:
        self.source = source
        self.quotes: dict[int, object] = {}
        self.rates: dict[tuple[int, int], object] = {}
        self.instruments = {} if instrument is None else {instrument.symbol: instrument}
        self.reserved: dict[str, tuple[str, Decimal]] = {}

    def instrument(self, symbol: str) -> Instrument | None:
        return self.instruments.get(symbol)

    def quote(self, instrument):
        if instrument.pk not in self.quotes:
            self.quotes[instrument.pk] = self.source.quote(instrument)
        return self.quotes[instrument.pk]

    def fee_rates(self, *, account, instrument):
        from trading.selectors import fee_rates_for

        key = (account.pk, instrument.pk)
        if key not in self.rates:
            self.rates[key] = fee_rates_for(account=account, instrument=instrument)
        return self.rates[key]

    def reservation(self, client_order_id: str) -> tuple[str, Decimal] | None:
        """(asset, amount) the order reserved in ``order_record``'s transaction (``None``: not known here)."""
        return self.reserved.get(client_order_id)

    def remember_reservation(self, order: Order) -> None:
        if order.reserved_asset and order.reserved_amount > 0:
            self.reserved[order.client_order_id] = (order.reserved_asset, order.reserved_amount)

    def remember_fee_rates(self, *, account, instrument, rates) -> None:
        """The rates ``order_record`` read with the account's lock (what ``fee_rates_for`` answers)."""
        self.rates[(account.pk, instrument.pk)] = rates


def _tier_rates(account: Account):
    """The fee rates of the tier annotated on ``account`` by ``order_record``: the account's own TradeVolume
    answer when recorded, else Kraken's published base tier (as ``trading.selectors.fee_rates_for``)."""
    from trading.fees import FeeRates, published_rates

    if account.tier_maker_pct is None or account.tier_taker_pct is None:
        return published_rates()
    return FeeRates(maker_pct=account.tier_maker_pct, taker_pct=account.tier_taker_pct)


def order_record(
    *,
    account: Account,
    actor,
    instrument: Instrument,
    side: str,
    order_type: str,
    quantity: Decimal,
    limit_price: Decimal | None = None,
    stop_price: Decimal | None = None,
    client_order_id: str | None = None,
    reason: str = "",
    quotes=None,
    simulate_with: BrokerFactory | None = None,
) -> tuple[Order, bool]:
    """Step 1 of ``order_submit``: the intent, committed with its audit event and reservation. Returns
    ``(order, created)``; an order the rules refuse is recorded REJECTED with the reason. ``quotes`` (a
    ``trading.quotes.QuoteSource``) prices a market order's reservation; the database's by default.

    With ``simulate_with`` (``order_submit`` passes it), an order of a simulated account is handed to the
    simulator inside this same transaction: there is no network call to commit before, and the order
    commits already matched. Should the simulator fail, that transaction rolls back whole, the intent is
    recorded again on its own in a new transaction (NEW, for reconciliation to close; the gates and the
    reservation are checked again there, so a change in between can record it REJECTED) and the
    simulator's error is raised once that has committed (with the second error as its cause, should the
    intent fail to record). A savepoint around the matching would keep the intent too, but costs two
    round trips on every order for a failure that should never happen."""
    intent = {
        "account": account,
        "actor": actor,
        "instrument": instrument,
        "side": side,
        "order_type": order_type,
        "quantity": quantity,
        "limit_price": limit_price,
        "stop_price": stop_price,
        "reason": reason,
        "quotes": quotes,
    }
    try:
        return _record(client_order_id=client_order_id, simulate_with=simulate_with, **intent)
    except _SimulatorFailed as failed:
        logger.error(
            "order %s: the simulator failed (%s: %s); recording the intent NEW",
            failed.client_order_id,
            type(failed.error).__name__,
            failed.error,
            exc_info=failed.error,
        )
        try:
            _record(client_order_id=failed.client_order_id, simulate_with=None, **intent)
        except Exception as again:  # the simulator's error stays the one raised; this one is its cause
            logger.exception("order %s: the intent could not be recorded again", failed.client_order_id)
            raise failed.error from again
        raise failed.error from None


class _SimulatorFailed(Exception):
    """Carries a simulator's error out of the intent's transaction (which then rolls back whole)."""

    def __init__(self, client_order_id: str, error: Exception) -> None:
        super().__init__(client_order_id)
        self.client_order_id, self.error = client_order_id, error


def _record(
    *,
    account: Account,
    actor,
    instrument: Instrument,
    side: str,
    order_type: str,
    quantity: Decimal,
    limit_price: Decimal | None,
    stop_price: Decimal | None,
    client_order_id: str | None,
    reason: str,
    quotes,
    simulate_with: BrokerFactory | None,
) -> tuple[Order, bool]:
    """``order_record``'s transaction (see there)."""
    from trading.matching import check_order

    if side not in Side.__members__.values() or order_type not in OrderKind.__members__.values():
        raise OrderError(f"side must be buy or sell and type one of {', '.join(OrderKind)}")
    quantity = Decimal(quantity)
    if not quantity.is_finite() or quantity <= 0:
        raise OrderError(f"quantity {quantity} must be a positive number")
    generated = not client_order_id
    client_order_id = client_order_id or str(uuid.uuid4())
    if len(client_order_id) > 36:
        raise OrderError("client order id is longer than Kraken's 36 characters")
    intent = {
        "account_id": account.pk,
        "instrument_id": instrument.pk,
        "side": side,
        "order_type": order_type,
        "quantity": quantity,
        "limit_price": limit_price,
        "stop_price": stop_price,
    }
    with transaction.atomic():
        # The account row locked, and the account's fee tier on the pair read in the same statement.
        tier = AccountFeeTier.objects.filter(account=OuterRef("pk"), instrument=instrument).order_by()
        account = (
            Account.objects.select_for_update(no_key=True)
            .annotate(
                tier_maker_pct=Subquery(tier.values("maker_pct")[:1]),
                tier_taker_pct=Subquery(tier.values("taker_pct")[:1]),
            )
            .get(pk=account.pk)
        )
        audit_rows_locked(account)
        # A client order id generated just now is new (a random UUID; the unique constraint is the wall):
        # only one the caller chose can name an existing order.
        existing = None if generated else Order.objects.filter(client_order_id=client_order_id).first()
        if existing is not None:
            if not _same_intent(existing, **intent):
                raise OrderError(f"client order id {client_order_id} is already used by a different order")
            return existing, False
        _check_actor(actor, account)
        broker = book_of(account)
        simulate = simulate_with is not None and broker == BrokerName.SIM
        # A simulated order is matched below: its position is locked now, in the lock order (account,
        # position, order, balances), and read once for the sell check and the fill.
        position = _locked_position(account.pk, broker, instrument.pk) if simulate else None
        order = Order(
            account=account,
            client_order_id=client_order_id,
            broker=broker,
            instrument=instrument,
            side=side,
            order_type=order_type,
            quantity=quantity,
            limit_price=limit_price,
            stop_price=stop_price,
            reason=reason,
            placed_by=actor_label(actor),
            placed_by_user=actor_user(actor),
        )
        rates = _tier_rates(account)
        remember_rates = getattr(quotes, "remember_fee_rates", None)
        if remember_rates is not None:  # the simulator prices this order's fill with the same rates
            remember_rates(account=account, instrument=instrument, rates=rates)
        problems = _entry_gates(account) if side == Side.BUY else []
        reference = _reference_price(instrument, order_type, side, limit_price, stop_price, quotes)
        problems = problems or check_order(order_request(order), reference_price=reference)
        if not problems and reference is None:
            problems = [f"no market price for {instrument.symbol} yet: the order cannot be sized or reserved"]
        if not problems:
            problems = _reserve(
                order,
                account=account,
                instrument=instrument,
                reference=reference,
                fees=lambda **_: rates,
                position=position if simulate else _UNREAD,
            )
        if problems:
            _rejected(order, "; ".join(problems))
        elif simulate and hasattr(quotes, "remember_reservation"):
            quotes.remember_reservation(order)  # the simulator's funds check needs no second read
        # The order's history rows and audit events, written together once the transaction's other work
        # is done: the audit chain's lock (one for the whole platform) is then held only until COMMIT.
        history: list = []
        audit: list = []
        _save_order(order, history)
        audit.append(
            AuditEntry(
                actor=actor,
                action="order.rejected" if problems else "order.submit",
                account=account,
                target=order,
                details=_order_details(order),
            )
        )
        if simulate and not problems:
            try:  # the matching and every row it adds, its history and audit event included
                order = _simulate(order, account, actor, simulate_with, position, history, audit)
                _write_history(history)
                audit_record_many(audit)
            except Exception as exc:  # this transaction rolls back; order_record records the intent alone
                raise _SimulatorFailed(client_order_id, exc) from exc
        else:
            _write_history(history)
            audit_record_many(audit)
    ORDERS.labels(broker, "rejected" if problems else "recorded").inc()
    return order, True


def _simulate(
    order: Order,
    account: Account,
    actor,
    broker_factory: BrokerFactory,
    position: Position | None,
    history: list,
    audit: list,
) -> Order:
    """Match an order just recorded for a simulated account and apply the result (the account and the
    position, when it exists, are locked by the caller's transaction; the new order is ours alone)."""
    if position is None:
        position, _ = Position.objects.select_for_update().get_or_create(
            account=account, broker=BrokerName.SIM, instrument=order.instrument
        )
    try:
        report = broker_factory(account, BrokerName.SIM).submit(order_request(order))
    except BrokerRefused as exc:
        report = OrderReport(client_order_id=order.client_order_id, status=Status.REJECTED, reason=str(exc))
    return _apply_locked(
        order,
        position,
        report,
        actor,
        submitted_at=timezone.now(),
        fresh=True,
        history=history,
        audit=audit,
    )


def _locked_position(account_id: int, broker: str, instrument_id: int) -> Position | None:
    """The book's position, locked FOR UPDATE (``None`` before its first fill)."""
    found = select_rows(
        Position,
        "account_id = %s AND broker = %s AND instrument_id = %s",
        [account_id, broker, instrument_id],
        limit=1,
        for_update=True,
    )
    return found[0] if found else None


_UNREAD = object()  # the position was not read by the caller: ``_sellable`` reads it


def _reserve(
    order: Order,
    *,
    account: Account,
    instrument: Instrument,
    reference: Decimal,
    fees=None,
    position=_UNREAD,
) -> list[str]:
    """Reserve what the order may use; a problem (not enough available) instead of a negative balance.

    One conditional UPDATE takes the reservation when the balance has it available; only when it does
    not (or has no row yet) is the row locked and read, for the message. The check constraint
    ``balance_never_negative`` stays the last wall."""
    from trading.selectors import fee_rates_for

    rates = (fees or fee_rates_for)(account=account, instrument=instrument)
    buffer = Decimal(0) if order.order_type == OrderType.LIMIT else settings.ORDER_RESERVE_BUFFER_PCT
    need = ledger.reservation_for(
        side=order.side,
        quantity=order.quantity,
        price=reference,
        taker_pct=rates.taker_pct,
        buffer_pct=buffer,
        base_asset=instrument.base_asset,
        cost_decimals=instrument.cost_decimals,
    )
    if order.side == Side.SELL:
        held = _sellable(account, order.broker, instrument, position=position)
        if need.amount > held:
            return [
                f"a sell of {need.amount} {need.asset} exceeds the {held} {need.asset} Aether holds in this "
                f"position and has not already offered in open sell orders; holdings Aether did not buy are "
                f"never sold"
            ]
    if _take_reservation(account.pk, order.broker, need.asset, need.amount):
        order.reserved_asset, order.reserved_amount = need.asset, need.amount
        return []
    balance = _lock_balance(account, order.broker, need.asset)
    if need.amount > balance.available:
        where = "simulated" if order.broker == BrokerName.SIM else "Kraken (as last reconciled)"
        return [
            f"insufficient {need.asset}: the order needs {need.amount} {need.asset} (fee and price margin "
            f"included) but {balance.available} is available in the {where} balance "
            f"({balance.reserved} reserved by open orders)"
        ]
    balance.reserved += need.amount
    balance.save(update_fields=["reserved", "updated_at"])
    order.reserved_asset, order.reserved_amount = need.asset, need.amount
    return []


def _sellable(account: Account, broker: str, instrument: Instrument, *, position=_UNREAD) -> Decimal:
    """The position's quantity less what open sell orders on it already hold."""
    if position is _UNREAD:
        position = Position.objects.filter(account=account, broker=broker, instrument=instrument).first()
    held = position.quantity if position is not None else Decimal(0)
    offered = (
        Order.objects.filter(
            account=account, broker=broker, instrument=instrument, side=Side.SELL, status__in=LIVE_STATUSES
        ).aggregate(total=Sum("reserved_amount"))["total"]
        or 0
    )
    return held - offered


def order_send(*, order_id: int, actor, broker_factory: BrokerFactory | None = None) -> Order:
    """Step 2: send a NEW order to its broker and apply the report; any other order is returned as it is
    (a second worker cannot send it twice).

    Kraken: the order is marked SUBMITTED and committed first, then sent outside any transaction (a
    network call never holds row locks). The simulator has no network: the order is matched and the
    result applied in one transaction, under the account's and the order's locks."""
    broker_factory = broker_factory or default_broker
    broker_name, account_id = Order.objects.values_list("broker", "account_id").get(pk=order_id)
    if broker_name == BrokerName.SIM:
        return _send_simulated(order_id, account_id, actor, broker_factory)
    return _send_live(order_id, actor, broker_factory)


def _send_live(order_id: int, actor, broker_factory: BrokerFactory | None) -> Order:
    """``order_send`` for an order of the Kraken book."""
    broker_factory = broker_factory or default_broker
    with transaction.atomic():
        order = (
            Order.objects.select_for_update(no_key=True)
            .select_related("account", "instrument")
            .get(pk=order_id)
        )
        if order.status != OrderStatus.NEW:
            return order
        order.status = OrderStatus.SUBMITTED
        order.submitted_at = timezone.now()
        _save_order(order, None, update_fields=["status", "submitted_at", "updated_at"])
    try:
        broker = broker_factory(order.account, order.broker)
    except Exception as exc:  # no key, store unreachable…: nothing was sent
        logger.exception("order %s: no broker; not sent", order.client_order_id)
        report = OrderReport(
            client_order_id=order.client_order_id,
            status=Status.REJECTED,
            reason=f"not sent: the {order.broker} broker could not be set up ({type(exc).__name__}: {exc})",
        )
        return _apply_report(order, report, actor)
    try:
        report = broker.submit(order_request(order))
    except BrokerRefused as exc:
        report = OrderReport(client_order_id=order.client_order_id, status=Status.REJECTED, reason=str(exc))
    except Exception as exc:  # the order may or may not have left: reconciliation finds out
        logger.exception("order %s: broker raised; status UNKNOWN until reconciled", order.client_order_id)
        report = OrderReport(
            client_order_id=order.client_order_id,
            status=Status.UNKNOWN,
            reason=f"broker error {type(exc).__name__}; reconciliation will ask the exchange",
        )
    finally:
        _close(broker)
    return _apply_report(order, report, actor)


def _with_quotes(quotes) -> BrokerFactory:
    def factory(account: Account, name: str) -> Broker:
        if name == BrokerName.SIM:
            from trading.brokers.sim import SimBroker

            return SimBroker(
                account,
                quotes=quotes,
                fees=getattr(quotes, "fee_rates", None),
                instruments=getattr(quotes, "instrument", None),
                reservations=getattr(quotes, "reservation", None),
            )
        return default_broker(account, name)

    return factory


def _send_simulated(order_id: int, account_id: int, actor, broker_factory: BrokerFactory) -> Order:
    """Match a NEW simulated order and apply the result in one transaction (lock order: account, order).
    If anything fails the transaction rolls back and the order stays NEW: reconciliation closes it."""
    with transaction.atomic():
        account, position, order = _lock_book(order_id, account_id)
        if order.status != OrderStatus.NEW:
            return order
        try:
            report = broker_factory(account, BrokerName.SIM).submit(order_request(order))
        except BrokerRefused as exc:
            report = OrderReport(
                client_order_id=order.client_order_id, status=Status.REJECTED, reason=str(exc)
            )
        return _apply_locked(order, position, report, actor, submitted_at=timezone.now())


def _close(broker) -> None:
    close = getattr(broker, "close", None)
    if close is not None:
        close()


# ----------------------------------------------------------------------------------------------------------
# Apply a broker's report
# ----------------------------------------------------------------------------------------------------------

_ORDER_OF_STATUS = {
    OrderStatus.NEW: 0,
    OrderStatus.SUBMITTED: 1,
    OrderStatus.UNKNOWN: 1,
    OrderStatus.OPEN: 2,
    OrderStatus.PARTIALLY_FILLED: 3,
}


def _next_status(current: str, reported: str, filled: Decimal, quantity: Decimal) -> str:
    if current in FINAL_STATUSES:
        return current
    if filled >= quantity:
        return OrderStatus.FILLED
    if reported in FINAL_STATUSES:
        return reported
    if reported == OrderStatus.UNKNOWN:
        # An answer never downgrades what we already know from the exchange.
        return current if current in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED) else OrderStatus.UNKNOWN
    if filled > 0:
        return OrderStatus.PARTIALLY_FILLED
    if _ORDER_OF_STATUS.get(reported, 0) < _ORDER_OF_STATUS.get(current, 0):
        return current
    return reported


@dataclass
class AppliedFills:
    count: int = 0
    realised: Decimal = Decimal(0)
    untracked: Decimal = Decimal(0)  # sold on the exchange beyond the position (holdings bought elsewhere)
    # asset → [change of total, change of reserved], written once per asset at the end.
    balances: dict = field(default_factory=dict)

    def move(self, asset: str, *, total: Decimal = Decimal(0), reserved: Decimal = Decimal(0)) -> None:
        change = self.balances.setdefault(asset, [Decimal(0), Decimal(0)])
        change[0] += total
        change[1] += reserved


def order_apply_report(*, order_id: int, report: OrderReport, actor, submitted_at=None) -> Order:
    """Apply what a broker says about one order: new fills (each once, by trade id), the status, the
    exchange id and the reason; release the reservation as fills use it and all of it when the order ends."""
    with transaction.atomic():
        _account, position, order = _lock_book(order_id)
        return _apply_locked(order, position, report, actor, submitted_at=submitted_at)


def _apply_report(order: Order, report: OrderReport, actor) -> Order:
    """``order_apply_report`` for an order whose account, broker and pair are known (they never change)."""
    with transaction.atomic():
        _account, position, locked = _lock_book(
            order.pk, order.account_id, (order.broker, order.instrument_id)
        )
        return _apply_locked(locked, position, report, actor)


def _lock_book(
    order_id: int, account_id: int | None = None, book: tuple[str, int] | None = None
) -> tuple[Account, Position, Order]:
    """Lock, in the one order used everywhere, the account, the order's position and the order.
    ``account_id`` and ``book`` (broker, instrument id) are read from the order when not given."""
    if book is None or account_id is None:
        broker, instrument_id, account_id = Order.objects.values_list(
            "broker", "instrument_id", "account_id"
        ).get(pk=order_id)
    else:
        broker, instrument_id = book
    account = Account.objects.select_for_update(no_key=True).get(pk=account_id)
    audit_rows_locked(account)
    position, _ = Position.objects.select_for_update().get_or_create(
        account=account, broker=broker, instrument_id=instrument_id
    )
    order = Order.objects.select_for_update(no_key=True).select_related("instrument").get(pk=order_id)
    order.account = account
    return account, position, order


def _apply_locked(
    order: Order,
    position: Position,
    report: OrderReport,
    actor,
    *,
    submitted_at=None,
    fresh: bool = False,
    history: list | None = None,
    audit: list | None = None,
) -> Order:
    """``order_apply_report`` once the account, position and order are locked (see ``_lock_book``).

    ``fresh``: the order was created in this very transaction and this is the first report about it, so
    none of its fills can be recorded yet (the unique trade id constraint stays the wall). ``history``:
    where the order's history row goes to be written with the others of the transaction (written now
    when ``None``); ``audit``: the same for its audit event (an ``AuditEntry``)."""
    account = order.account
    if submitted_at is not None and order.submitted_at is None:
        order.submitted_at = submitted_at
    before = order.status
    applied = AppliedFills()
    if report.fills:
        recorded = (
            set()
            if fresh
            else set(
                Fill.objects.filter(
                    account_id=order.account_id,
                    broker=order.broker,
                    trade_id__in=[fill.trade_id for fill in report.fills],
                ).values_list("trade_id", flat=True)
            )
        )
        for fill in report.fills:
            if fill.trade_id in recorded:
                continue
            recorded.add(fill.trade_id)
            _apply_fill(order, position, fill, applied)
    known_id = order.kraken_order_id
    if report.exchange_order_id and not order.kraken_order_id:
        order.kraken_order_id = report.exchange_order_id
    if (
        before == OrderStatus.REJECTED
        and not known_id
        and report.exchange_order_id
        and report.status != Status.REJECTED
    ):
        # The exchange has an order we had closed as never arrived: believe the exchange, loudly.
        order.status = OrderStatus.UNKNOWN
        order.status_reason = (
            f"reappeared on the exchange as {report.exchange_order_id} after it was closed as never "
            "arrived; following the exchange now"
        )
        logger.error("order %s: %s", order.client_order_id, order.status_reason)
    reappeared = order.status != before
    order.status = _next_status(order.status, report.status, order.filled_quantity, order.quantity)
    if report.reason and not reappeared and (order.status != before or not order.status_reason):
        order.status_reason = report.reason
    if order.status in FINAL_STATUSES:
        order.closed_at = order.closed_at or timezone.now()
        _release(order, order.reserved_amount, applied)
    _write_balances(order, applied)
    if (
        order.status == before
        and not applied.count
        and order.status_reason == report.reason
        and order.kraken_order_id == known_id
    ):
        return order
    _save_order(order, history)
    event = AuditEntry(
        actor=actor,
        action="order.reappeared"
        if reappeared
        else f"order.{order.status.lower()}"
        if order.status != before
        else "order.fills",
        account=account,
        target=order,
        details=_order_details(order)
        | {"from": before, "new_fills": applied.count, "realised_pnl": str(applied.realised)}
        | ({"untracked_sold": str(applied.untracked)} if applied.untracked else {}),
    )
    if audit is None:
        audit_record_many([event])
    else:
        audit.append(event)
    if order.status != before:
        outcome = ORDERS.labels(order.broker, order.status.lower())
        transaction.on_commit(outcome.inc)
    if applied.count:
        # Every fill moves the equity: the account's NAV is marked again (and the kill switch fed) by the
        # ``risk.nav_snapshot`` task once the fills are committed. Robust: a broker that cannot take the
        # message is logged and never stops the other commit hooks; the scheduled snapshot still runs.
        account_id = account.pk  # (a lambda, not a partial: Django names the hook when it logs a failure)
        transaction.on_commit(lambda: _queue_fill_snapshot(account_id), robust=True)
    return order


def _queue_fill_snapshot(account_id: int) -> None:
    from risk.tasks import nav_snapshot

    nav_snapshot.delay(account_id, "fill")


def _apply_fill(order: Order, position: Position, report: FillReport, applied: AppliedFills) -> None:
    """One new fill (the caller skips those already recorded)."""
    instrument = order.instrument
    if report.quantity > order.quantity - order.filled_quantity:
        raise ledger.LedgerError(
            f"fill {report.trade_id} of {report.quantity} exceeds the rest of order {order.client_order_id}"
        )
    effect = ledger.apply_fill(
        _book(position),
        ledger.FillFacts(
            side=order.side,
            price=report.price,
            quantity=report.quantity,
            fee=report.fee,
            fee_currency=report.fee_currency,
            executed_at=report.executed_at,
        ),
        base_asset=instrument.base_asset,
        untracked_ok=order.broker == BrokerName.KRAKEN,  # it happened on Kraken: never refuse it here
    )
    if effect.untracked:
        applied.untracked += effect.untracked
    fill = Fill(
        account_id=order.account_id,
        order=order,
        broker=order.broker,
        instrument=instrument,
        side=order.side,
        trade_id=report.trade_id,
        price=report.price,
        quantity=report.quantity,
        fee=report.fee,
        fee_currency=report.fee_currency,
        liquidity=report.liquidity,
        executed_at=report.executed_at,
        realised_pnl=effect.realised_pnl,
        position_after=effect.book.quantity,
    )
    insert_rows([fill])
    _store_book(position, effect.book)
    if effect.closed_trip is not None:
        trip = effect.closed_trip
        trade = Trade(
            account_id=order.account_id,
            broker=order.broker,
            instrument=instrument,
            opened_at=trip.opened_at,
            closed_at=trip.closed_at,
            quantity=trip.quantity,
            entry_price=trip.entry_price,
            exit_price=trip.exit_price,
            fees=trip.fees,
            net_pnl=trip.net_pnl,
            return_pct=trip.return_pct,
            closing_fill=fill,
        )
        insert_rows([trade])
    # Order totals.
    filled = order.filled_quantity + report.quantity
    paid = (order.average_fill_price or 0) * order.filled_quantity + report.price * report.quantity
    order.filled_quantity = filled
    order.average_fill_price = ledger.q12(paid / filled)
    order.fees_paid += effect.fee_usd
    # Balances: the reservation this fill used is released, then the totals move.
    cost = report.price * report.quantity + (report.fee if report.fee_currency == QUOTE_ASSET else 0)
    used = ledger.release_for_fill(
        side=order.side, reserved=order.reserved_amount, fill_quantity=report.quantity, fill_cost=cost
    )
    _release(order, used, applied)
    applied.move(instrument.base_asset, total=effect.base_delta)
    applied.move(QUOTE_ASSET, total=effect.usd_delta)
    applied.count += 1
    applied.realised += effect.realised_pnl
    FILLS.labels(order.broker).inc()


def _book(position: Position) -> ledger.Book:
    return ledger.Book(**{name: getattr(position, name) for name in ledger.Book.__dataclass_fields__})


_BOOK_FIELDS = tuple(ledger.Book.__dataclass_fields__)
_STORED_BOOK_FIELDS = (*_BOOK_FIELDS, "updated_at")


def _store_book(position: Position, book: ledger.Book) -> None:
    for name in _BOOK_FIELDS:
        setattr(position, name, getattr(book, name))
    if position._state.adding:
        insert_rows([position])
    else:  # the exit plan's columns are not the ledger's: they are left as they are
        update_row(position, _STORED_BOOK_FIELDS)


def _release(order: Order, amount: Decimal, applied: AppliedFills) -> None:
    if amount <= 0 or not order.reserved_asset:
        return
    applied.move(order.reserved_asset, reserved=-amount)
    order.reserved_amount -= amount


def _write_balances(order: Order, applied: AppliedFills) -> None:
    """Apply the collected balance changes, one row per asset, in asset order: one conditional UPDATE
    when the row exists and its total stays non-negative (the reservation kept between zero and the
    total); else the row is locked and read, and a simulated book refuses to go negative while a live
    one is clamped to zero (the exchange is the truth; reconciliation corrects the drift)."""
    for asset in sorted(applied.balances):
        total_change, reserved_change = applied.balances[asset]
        if not total_change and not reserved_change:
            continue
        if _move_balance(order.account_id, order.broker, asset, total_change, reserved_change):
            continue
        balance = _lock_balance(order.account, order.broker, asset)
        balance.total += total_change
        balance.reserved = max(Decimal(0), balance.reserved + reserved_change)
        if balance.total < 0:
            if order.broker == BrokerName.SIM:
                raise ledger.LedgerError(
                    f"simulated {asset} balance of {order.account} would go negative ({balance.total})"
                )
            # Live: the exchange is the truth; reconciliation reports and corrects the drift.
            logger.warning("%s: Kraken %s balance below zero in our book; reconcile", order.account, asset)
            balance.total = Decimal(0)
        balance.reserved = min(balance.reserved, balance.total)
        balance.save(update_fields=["total", "reserved", "updated_at"])


# The two conditional balance updates of the order path, written out (see ``aether_site.rows`` for why the
# order path builds its statements once): standard SQL both engines run, every amount cast to NUMERIC as
# Django's own expressions are on SQLite. tests/trading/test_order_path_queries.py checks their answers.
_TAKE_RESERVATION = """
UPDATE {table} SET reserved = reserved + CAST(%s AS NUMERIC), updated_at = %s
WHERE account_id = %s AND broker = %s AND asset = %s AND total >= reserved + CAST(%s AS NUMERIC)
"""
# reserved ← min(max(reserved + Δreserved, 0), total + Δtotal), where total + Δtotal ≥ 0 (the WHERE).
_MOVE_BALANCE = """
UPDATE {table} SET
    total = total + CAST(%s AS NUMERIC),
    reserved = CASE
        WHEN reserved + CAST(%s AS NUMERIC) <= 0 THEN 0
        WHEN reserved + CAST(%s AS NUMERIC) > total + CAST(%s AS NUMERIC) THEN total + CAST(%s AS NUMERIC)
        ELSE reserved + CAST(%s AS NUMERIC)
    END,
    updated_at = %s
WHERE account_id = %s AND broker = %s AND asset = %s AND total >= CAST(%s AS NUMERIC)
"""


def _balance_update(sql: str, params: list) -> int:
    connection = transaction.get_connection()
    table = connection.ops.quote_name(Balance._meta.db_table)
    with connection.cursor() as cursor:
        cursor.execute(sql.format(table=table), params)
        return cursor.rowcount


def _now_param():
    return Balance._meta.get_field("updated_at").get_db_prep_save(
        timezone.now(), transaction.get_connection()
    )


def _take_reservation(account_id: int, broker: str, asset: str, amount: Decimal) -> bool:
    """Reserve ``amount`` of the balance when that much is available (total less reserved): one UPDATE,
    ``False`` when the row is missing or short."""
    params = [amount, _now_param(), account_id, broker, asset, amount]
    return _balance_update(_TAKE_RESERVATION, params) == 1


def _move_balance(account_id: int, broker: str, asset: str, total: Decimal, reserved: Decimal) -> bool:
    """Move the total by ``total`` and the reservation by ``reserved`` (kept between zero and the new
    total) when the total stays non-negative: one UPDATE, ``False`` when the row is missing or short."""
    params = [
        total,
        reserved,
        reserved,
        total,
        total,
        reserved,
        _now_param(),
        account_id,
        broker,
        asset,
        -total,
    ]
    return _balance_update(_MOVE_BALANCE, params) == 1


def _order_details(order: Order) -> dict:
    return {
        "client_order_id": order.client_order_id,
        "broker": order.broker,
        "pair": order.instrument.symbol,
        "side": order.side,
        "type": order.order_type,
        "quantity": str(order.quantity),
        "limit_price": None if order.limit_price is None else str(order.limit_price),
        "stop_price": None if order.stop_price is None else str(order.stop_price),
        "status": order.status,
        "status_reason": order.status_reason,
        "filled": str(order.filled_quantity),
        "kraken_order_id": order.kraken_order_id,
        "reserved": f"{order.reserved_amount} {order.reserved_asset}".strip(),
        "reason": order.reason,
    }


# ----------------------------------------------------------------------------------------------------------
# Cancel, simulated matching, simulated funds
# ----------------------------------------------------------------------------------------------------------


def order_cancel(
    *, order: Order, actor, reason: str = "", broker_factory: BrokerFactory | None = None
) -> Order:
    """Ask the order's broker to cancel it, then apply the answer (which may be a fill that got there
    first). A final order is returned unchanged."""
    _check_actor(actor, order.account)
    order = Order.objects.select_related("account", "instrument").get(pk=order.pk)
    if order.status in FINAL_STATUSES:
        return order
    if order.status == OrderStatus.NEW:
        # Never sent: cancel it here, under the row lock, so no worker sends it afterwards.
        with transaction.atomic():
            Account.objects.select_for_update(no_key=True).get(
                pk=order.account_id
            )  # lock order: account first
            locked = Order.objects.select_for_update(no_key=True).get(pk=order.pk)
            if locked.status == OrderStatus.NEW:
                report = OrderReport(
                    client_order_id=order.client_order_id,
                    status=Status.CANCELED,
                    reason=reason or "canceled before it was sent",
                )
                return order_apply_report(order_id=order.pk, report=report, actor=actor)
    factory = broker_factory or default_broker
    broker = factory(order.account, order.broker)
    try:
        report = broker.cancel(
            client_order_id=order.client_order_id, exchange_order_id=order.kraken_order_id or None
        )
    finally:
        _close(broker)
    if reason and report.status == Status.CANCELED:
        report = OrderReport(
            client_order_id=report.client_order_id,
            status=report.status,
            exchange_order_id=report.exchange_order_id,
            filled_quantity=report.filled_quantity,
            average_price=report.average_price,
            reason=reason,
            fills=report.fills,
        )
    return order_apply_report(order_id=order.pk, report=report, actor=actor)


def sim_orders_match_bar(*, instrument: Instrument, bar, actor=None) -> list[Order]:
    """Run every resting simulated order on ``instrument`` against a new closed bar; apply what fills."""
    from trading.brokers.sim import SimBroker

    actor = actor or SystemActor("sim_broker")
    touched = []
    account_ids = (
        Order.objects.filter(
            broker=BrokerName.SIM,
            instrument=instrument,
            status__in=[OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED],
        )
        .values_list("account_id", flat=True)
        .distinct()
    )
    for account in Account.objects.filter(pk__in=list(account_ids)):
        for report in SimBroker(account).match_bar(instrument=instrument, bar=bar):
            order = Order.objects.get(client_order_id=report.client_order_id)
            touched.append(order_apply_report(order_id=order.pk, report=report, actor=actor))
    return touched


def sim_balance_set(*, account: Account, asset: str, amount: Decimal, actor, reason: str) -> Balance:
    """Set a simulated balance (funding a simulated account). Never below what open orders reserve."""
    _check_actor(actor, account)
    if asset.upper() != QUOTE_ASSET:
        raise ValidationError(
            f"simulated accounts are funded in USD only; they buy {asset.upper()} through orders, so every "
            "position has a known cost"
        )
    amount = Decimal(amount)
    if not amount.is_finite() or amount < 0:
        raise ValidationError(f"a balance of {amount} is not possible")
    if not reason.strip():
        raise ValidationError("say why the simulated balance changes")
    with transaction.atomic():
        account = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        balance = _lock_balance(account, BrokerName.SIM, asset.upper())
        if amount < balance.reserved:
            raise ValidationError(
                f"{amount} {asset} is less than the {balance.reserved} reserved by open simulated orders"
            )
        before = balance.total
        balance.total = amount
        balance.save(update_fields=["total", "updated_at"])
        audit_record(
            actor=actor,
            action="sim_balance.set",
            account=account,
            target=balance,
            details={"asset": balance.asset, "before": str(before), "after": str(amount), "reason": reason},
        )
        # Money in or out from outside is neither profit nor loss: the kill switch's day record follows it.
        from risk.services import risk_external_flow

        risk_external_flow(
            account=account,
            broker=BrokerName.SIM,
            amount=amount - before,
            at=timezone.now(),
            source=f"sim_balance_set: {reason}",
            actor=actor,
        )
    return balance
