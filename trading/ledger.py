"""Position, balance, PnL and reservation arithmetic. Plain Python (decision core): no Django.

Spot only: a position is a non-negative quantity of the base asset with an average cost per unit that
includes buy fees. A sell realises ``proceeds - fees - quantity x average cost``; the average cost does not
change on a sell. A round trip runs from the first buy of a flat position to the sell that makes it flat
again; closing it yields a :class:`ClosedTrip` (the ``Trade`` row).

Worked example (tests/trading/test_ledger.py checks it): buy 0.5 BTC at 20,000 with a 26 USD fee → cost
10,026, average cost 20,052. Sell 0.5 at 22,000 with a 28.60 USD fee → proceeds 10,971.40, realised
10,971.40 - 10,026 = 945.40 USD; the trip's fees are 54.60 and its return 945.40 / 10,026 = 9.4295 %.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from decimal import ROUND_HALF_EVEN, ROUND_UP, Decimal

ZERO = Decimal(0)
#: Precision of stored derived values (average cost, PnL): the database's 12 decimal places.
STORE = Decimal("1e-12")
QUOTE_ASSET = "USD"


class LedgerError(ValueError):
    """A fill the book cannot take (e.g. selling more than is held); the message names the numbers."""


def q12(value: Decimal) -> Decimal:
    return value.quantize(STORE, rounding=ROUND_HALF_EVEN)


@dataclass(frozen=True, slots=True)
class Book:
    """One position and its current round trip."""

    quantity: Decimal = ZERO
    average_cost: Decimal = ZERO
    realised_pnl: Decimal = ZERO
    opened_at: datetime | None = None
    trip_max_quantity: Decimal = ZERO
    trip_bought: Decimal = ZERO
    trip_buy_notional: Decimal = ZERO
    trip_sold: Decimal = ZERO
    trip_sell_notional: Decimal = ZERO
    trip_fees: Decimal = ZERO
    trip_buy_fees: Decimal = ZERO
    trip_realised_pnl: Decimal = ZERO


@dataclass(frozen=True, slots=True)
class FillFacts:
    side: str  # "buy" | "sell"
    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_currency: str  # "USD" or the base asset
    executed_at: datetime


@dataclass(frozen=True, slots=True)
class ClosedTrip:
    opened_at: datetime
    closed_at: datetime
    quantity: Decimal
    entry_price: Decimal
    exit_price: Decimal
    fees: Decimal
    net_pnl: Decimal
    return_pct: Decimal


@dataclass(frozen=True, slots=True)
class FillEffect:
    book: Book
    realised_pnl: Decimal  # of this fill, USD, net of its fee
    fee_usd: Decimal
    base_delta: Decimal  # change of the base asset's total
    usd_delta: Decimal  # change of the USD total
    closed_trip: ClosedTrip | None
    untracked: Decimal = ZERO  # sold beyond the position (no known cost; see ``apply_fill``)


def apply_fill(book: Book, fill: FillFacts, *, base_asset: str, untracked_ok: bool = False) -> FillEffect:
    """The book after ``fill``, with the balance changes and the round trip it closes, if any.

    A sell larger than the position is refused, unless ``untracked_ok`` (an exchange fill that already
    happened, e.g. of holdings bought outside Aether): then the part beyond the position has no known cost,
    realises nothing, and is reported as ``untracked``."""
    if fill.price <= 0 or fill.quantity <= 0 or fill.fee < 0:
        raise LedgerError(
            f"fill with price {fill.price}, quantity {fill.quantity}, fee {fill.fee} is not valid"
        )
    if fill.fee_currency not in (QUOTE_ASSET, base_asset):
        raise LedgerError(f"fee currency {fill.fee_currency} is neither USD nor {base_asset}")
    notional = fill.price * fill.quantity
    fee_in_base = fill.fee_currency == base_asset
    fee_usd = fill.fee * fill.price if fee_in_base else fill.fee
    if fill.side == "buy":
        return _buy(book, fill, notional, fee_usd, fee_in_base)
    if fill.side == "sell":
        return _sell(book, fill, notional, fee_usd, fee_in_base, untracked_ok)
    raise LedgerError(f"side {fill.side!r} is neither buy nor sell")


def _buy(book: Book, fill: FillFacts, notional: Decimal, fee_usd: Decimal, fee_in_base: bool) -> FillEffect:
    received = fill.quantity - fill.fee if fee_in_base else fill.quantity
    if received <= 0:
        raise LedgerError(f"a buy of {fill.quantity} with a fee of {fill.fee} in the base receives nothing")
    cost = notional if fee_in_base else notional + fill.fee
    quantity = book.quantity + received
    average = q12((book.quantity * book.average_cost + cost) / quantity)
    usd_delta = -(notional if fee_in_base else notional + fill.fee)
    new = replace(
        book,
        quantity=quantity,
        average_cost=average,
        opened_at=book.opened_at if book.quantity > 0 else fill.executed_at,
        trip_max_quantity=max(book.trip_max_quantity, quantity),
        trip_bought=book.trip_bought + fill.quantity,
        trip_buy_notional=book.trip_buy_notional + notional,
        trip_fees=q12(book.trip_fees + fee_usd),
        # A fee in the base is paid in quantity (the cost is the notional): it adds nothing to the cost.
        trip_buy_fees=book.trip_buy_fees if fee_in_base else q12(book.trip_buy_fees + fee_usd),
    )
    return FillEffect(new, ZERO, q12(fee_usd), received, usd_delta, None)


def _sell(
    book: Book, fill: FillFacts, notional: Decimal, fee_usd: Decimal, fee_in_base: bool, untracked_ok: bool
) -> FillEffect:
    leaves = fill.quantity + fill.fee if fee_in_base else fill.quantity
    untracked = max(ZERO, leaves - book.quantity)
    if untracked and not untracked_ok:
        raise LedgerError(
            f"selling {leaves} (fee included) exceeds the position of {book.quantity}: spot never goes short"
        )
    proceeds = notional if fee_in_base else notional - fill.fee
    tracked = leaves - untracked
    realised = q12(proceeds * tracked / leaves - tracked * book.average_cost)
    quantity = book.quantity - tracked
    new = replace(
        book,
        quantity=quantity,
        average_cost=book.average_cost if quantity > 0 else ZERO,
        realised_pnl=book.realised_pnl + realised,
        trip_sold=book.trip_sold + fill.quantity,
        trip_sell_notional=book.trip_sell_notional + notional,
        trip_fees=q12(book.trip_fees + fee_usd),
        trip_realised_pnl=book.trip_realised_pnl + realised,
    )
    trip = None
    if quantity == 0 and tracked > 0:
        trip = _close_trip(new, fill.executed_at)
        new = Book(realised_pnl=new.realised_pnl)
    usd_delta = proceeds
    return FillEffect(new, realised, q12(fee_usd), -leaves, usd_delta, trip, untracked)


def _close_trip(book: Book, closed_at: datetime) -> ClosedTrip:
    entry = q12(book.trip_buy_notional / book.trip_bought) if book.trip_bought else ZERO
    exit_price = q12(book.trip_sell_notional / book.trip_sold) if book.trip_sold else ZERO
    cost_basis = book.trip_buy_notional + book.trip_buy_fees
    ret = (book.trip_realised_pnl / cost_basis * 100) if cost_basis else ZERO
    return ClosedTrip(
        opened_at=book.opened_at or closed_at,
        closed_at=closed_at,
        quantity=book.trip_max_quantity,
        entry_price=entry,
        exit_price=exit_price,
        fees=book.trip_fees,
        net_pnl=book.trip_realised_pnl,
        return_pct=ret.quantize(Decimal("1e-8"), rounding=ROUND_HALF_EVEN),
    )


# ----------------------------------------------------------------------------------------------------------
# Reservations: what an order holds while it may still execute.
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reservation:
    asset: str
    amount: Decimal


def reservation_for(
    *,
    side: str,
    quantity: Decimal,
    price: Decimal,
    taker_pct: Decimal,
    buffer_pct: Decimal,
    base_asset: str,
    cost_decimals: int,
) -> Reservation:
    """A buy holds USD for its quantity at ``price`` raised by ``buffer_pct`` (room for slippage on market
    and stop orders; 0 for a limit, whose price is a bound) plus the taker fee, rounded up; a sell holds the
    base quantity."""
    if side == "sell":
        return Reservation(base_asset, quantity)
    bound = price * (1 + buffer_pct / 100)
    amount = quantity * bound * (1 + taker_pct / 100)
    return Reservation(QUOTE_ASSET, amount.quantize(Decimal(1).scaleb(-cost_decimals), rounding=ROUND_UP))


def release_for_fill(*, side: str, reserved: Decimal, fill_quantity: Decimal, fill_cost: Decimal) -> Decimal:
    """How much of an order's remaining reservation a fill uses up: the base sold, or the USD spent
    (notional plus a USD fee); never more than what is still reserved."""
    used = fill_quantity if side == "sell" else fill_cost
    return min(reserved, used)
