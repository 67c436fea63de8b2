"""Equity marked to market, and the UTC day's equity high-water mark the kill switch measures from.

Equity is what the account would hold in USD if it sold everything now at the marks, after the taker fee::

    equity = cash_usd + sum_i (q_i x p_i - fee(q_i x p_i, taker_pct))

with ``fee`` Kraken's fee rounded up (:func:`trading.matching.fee_for`), so the mark is never optimistic.
``cash_usd`` is the whole USD balance (reservations of open orders included: they are still the account's).

The day's drawdown is measured from the highest equity seen since the UTC day began, not from the day's
first equity: ``drawdown_pct = (high_water - equity) / high_water x 100``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime
from decimal import Decimal

from risk.engine.policy import HUNDRED
from risk.engine.reasons import RiskInputError, is_number
from trading.fees import FeeRates
from trading.matching import fee_for


@dataclass(frozen=True, slots=True)
class Mark:
    """One holding and the price it is marked at (a bid, or the last trade when no book is known)."""

    symbol: str
    quantity: Decimal
    price: Decimal | None


def marked_equity(*, cash_usd: Decimal, marks: Iterable[Mark], fees: FeeRates) -> Decimal:
    """The liquidation value of the account (formula in the module docstring). Raises
    :class:`RiskInputError` for a held quantity without a usable price: no equity is better than a wrong
    one (the caller keeps the last snapshot and the kill switch its last state)."""
    if not is_number(cash_usd):
        raise RiskInputError(f"USD balance {cash_usd} is not a number")
    equity = cash_usd
    for mark in marks:
        if not is_number(mark.quantity) or mark.quantity < 0:
            raise RiskInputError(f"{mark.symbol}: held quantity {mark.quantity} is not valid")
        if mark.quantity == 0:
            continue
        if not is_number(mark.price) or mark.price <= 0:
            raise RiskInputError(f"{mark.symbol}: no usable price ({mark.price}) to mark {mark.quantity}")
        value = mark.quantity * mark.price
        equity += value - fee_for(value, fees.taker_pct)
    return equity


def utc_day(at: datetime) -> date:
    """The UTC calendar day of an aware datetime (naive datetimes are refused: ambiguous days)."""
    if at.tzinfo is None:
        raise RiskInputError(f"{at} has no time zone: days are UTC days")
    return at.astimezone(UTC).date()


@dataclass(frozen=True, slots=True)
class DayEquity:
    """The UTC day's equity record: its high-water mark and the latest equity."""

    day: date
    high_water: Decimal
    equity: Decimal
    at: datetime

    @property
    def drawdown_pct(self) -> Decimal:
        """``(high_water - equity) / high_water x 100``. A day whose high is not positive (an account not
        funded yet, a live book before its first reconciliation) has no drawdown to measure: 0, so an
        empty account never trips the kill switch; new exposure is refused there anyway (no equity)."""
        if self.high_water <= 0:
            return Decimal(0)
        return max(Decimal(0), (self.high_water - self.equity) / self.high_water * HUNDRED)


def observe_equity(previous: DayEquity | None, *, equity: Decimal, at: datetime) -> DayEquity:
    """The day record after observing ``equity`` at ``at``: a new UTC day starts a new record whose mark is
    this equity; within the day the mark is ``max(mark, equity)``. Observations older than ``previous``
    are refused (the shell feeds them in time order)."""
    # Per bar in the backtest, so the common case goes first: a finite Decimal (else is_number decides) and
    # a UTC time (its own calendar day; else utc_day).
    if not (type(equity) is Decimal and equity.is_finite()) and not is_number(equity):
        raise RiskInputError(f"equity {equity} is not a number")
    day = at.date() if at.tzinfo is UTC else utc_day(at)
    if previous is None or day > previous.day:
        return DayEquity(day, equity, equity, at)
    if at < previous.at:
        raise RiskInputError(f"equity at {at} is older than the last one at {previous.at}")
    high_water = previous.high_water
    # max(high_water, equity) without the call: the same object (the mark when equal, exponent included)
    return DayEquity(previous.day, equity if equity > high_water else high_water, equity, at)


def external_flow(previous: DayEquity, *, amount: Decimal) -> DayEquity:
    """The day record after money entered (``amount`` > 0, a deposit) or left (< 0, a withdrawal) the
    account from outside: the high-water mark and the latest equity move by the flow, so a deposit is not
    profit and a withdrawal is not a drawdown. The time of the record stays (snapshots still arrive in
    order)."""
    if not is_number(amount):
        raise RiskInputError(f"external flow {amount} is not a number")
    return replace(previous, high_water=previous.high_water + amount, equity=previous.equity + amount)
