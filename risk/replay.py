"""Replay the risk decision core over hourly bars for one simulated account. Plain Python, no Django.

This is the "crash replay" of the risk issue: the same functions live trading calls (``size_entry``,
``check_order``, ``plan_exits``/``evaluate_bar``, ``marked_equity``/``observe_equity``, ``on_equity``), the
simulated matching of ``trading.matching`` and the ledger arithmetic of ``trading.ledger``, driven over an
array of candles for one pair. Nothing is persisted; the answer is a :class:`ReplayResult`.

**Entry rule** (deterministic, deliberately naive: the kill switch exists for a strategy that keeps buying a
falling market): at the open of a bar, when flat, propose a market buy sized by :func:`size_entry` (ATR of
the previous ``atr_bars`` bars, buying power = the USD balance) with a claimed edge of
``expected_edge_pct``. ``entry_rule="every_bar"`` re-enters at the next open after every exit;
``"day_open"`` enters only at the first bar of each UTC day. Every proposal goes through
:func:`check_order`: a latched kill switch rejects it (``KILL_SWITCH_LATCHED``), recorded as a
:class:`BlockedEntry`.

**One bar** (``open_time`` → ``close_time``), in order:

1. at the first bar of a UTC day: :func:`on_day_change`, then (``rearm_next_day``) a director's
   :func:`rearm`; equity is marked at the open: the day's start equity and first high-water mark;
2. a flatten left pending by a trip on the previous bar: market sell at this open (slippage and fee);
3. the entry rule (above): market buy at this open, exits planned from the fill price;
4. exits: :func:`evaluate_bar` on the bar's low/high; a stop (or trailing stop) fills as a resting stop
   (:func:`match_on_bar`: the worse of trigger and open, minus slippage), a take-profit likewise;
5. equity marks, each fed to :func:`observe_equity` and :func:`on_equity`: after every fill (at the fill
   price: the NAV snapshot "on every fill"), then at the bar's **low**, then at its **close**.

**Which mark the drawdown check uses, and why.** Every mark is checked, and the binding one in a falling bar
is the *low*: for a long-only book the low is the worst equity the bar can have reached, so the 3 % promise
is checked against the worst case; a close-only check would miss an intrabar dip past the limit that
recovers by the close and would trip an hour late. The high-water mark, in turn, comes only from marks the
shell really records (the day's open, fills, bar closes) — never from a bar's high, which may come after
its low and would turn a bar's range into a fake drawdown. Both choices are conservative (they can only
trip earlier and measure the loss from a truthful peak). The price of the low mark: the moment of the low
inside the bar is unknown, so the flatten it triggers is sent at the **next bar's open** — the "one-bar gap"
in the bound below.

**The bound** (checked by ``tests/risk/test_crash_replay.py``). Let ``H`` be the day's high-water mark,
``L`` the limit (a fraction), and the last mark before the trip — which did *not* breach, so
``H - E_safe < L x H`` — be ``E_safe = cash + q x p_safe - fee(q x p_safe)`` with ``q`` held. When nothing
but the exit of those ``q`` happens after it (price ``x``, base price before slippage ``b``, fee
``fee_x``), the end equity is ``cash + q x x - fee_x`` and::

    H - E_end = (H - E_safe) + q (p_safe - b) + q (b - x) + fee_x - fee(q x p_safe)
              < L x H        + q (p_safe - b) + q (b - x) + fee_x
                  limit        price move       slippage    exit fee
                               (the gap)

Each :class:`Trip` records ``E_safe``, ``p_safe`` and ``q``; the exit is a :class:`ReplayFill`.

Not modelled: partial fills, resting entry orders (every entry is a market order that fills at once, so
``CANCEL_ENTRY_ORDERS`` has nothing to cancel), a hedge, other pairs.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path
from typing import Literal

from risk.engine.checks import Mode, OrderIntent, PriceQuote, Snapshot, Verdict, check_order
from risk.engine.exits import ExitPlan, ExitReason, evaluate_bar, plan_exits
from risk.engine.killswitch import (
    Action,
    SwitchState,
    entries_allowed,
    on_day_change,
    on_equity,
    rearm,
)
from risk.engine.nav import DayEquity, Mark, marked_equity, observe_equity, utc_day
from risk.engine.policy import HUNDRED, RiskPolicy
from risk.engine.sizing import size_entry
from trading.brokers.base import OrderKind, OrderRequest, PairRules, Side
from trading.fees import FeeRates
from trading.ledger import Book, FillFacts, apply_fill
from trading.matching import Bar, Execution, SlippageModel, match_on_bar

ZERO = Decimal(0)


class ReplayError(RuntimeError):
    """The replay reached a state the decision core should have made impossible (a bug, not a market)."""


HOUR = timedelta(hours=1)
#: A bar's close is its last trade *before* ``close_time`` (which is the next bar's open, possibly the next
#: UTC day): marks of the bar's low, close and in-bar fills are stamped ``close_time - LAST_INSTANT``.
LAST_INSTANT = timedelta(microseconds=1)
_BPS_PER_PCT = Decimal(100)

MarkKind = Literal["open", "fill", "low", "close"]
FillReason = Literal["entry", "stop_loss", "trailing_stop", "take_profit", "flatten"]


# --- Data --------------------------------------------------------------------------------------------------


def read_kraken_ohlcvt(
    path: Path | str, *, start: datetime, end: datetime, interval: timedelta = HOUR
) -> list[Bar]:
    """The bars of a Kraken OHLCVT export (``time,open,high,low,close,volume,trades``, no header; ``time``
    is the bar's open in Unix seconds) whose open time is in ``[start, end)``, oldest first."""
    lo, hi = int(start.timestamp()), int(end.timestamp())
    bars = []
    with open(path, newline="") as handle:
        for row in csv.reader(handle):
            stamp = int(row[0])
            if lo <= stamp < hi:
                opened = datetime.fromtimestamp(stamp, UTC)
                o, h, low, c, volume = (Decimal(value) for value in row[1:6])
                bars.append(Bar(o, h, low, c, volume, opened, opened + interval))
    return bars


def average_true_range(bars: Sequence[Bar]) -> Decimal | None:
    """Mean true range of ``bars`` (the first bar only gives the previous close); ``None`` with fewer than
    two bars."""
    if len(bars) < 2:
        return None
    ranges = [
        max(bar.high - bar.low, abs(bar.high - before.close), abs(bar.low - before.close))
        for before, bar in pairwise(bars)
    ]
    return sum(ranges, ZERO) / len(ranges)


# --- Values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    policy: RiskPolicy
    pair: PairRules
    fees: FeeRates
    slippage: SlippageModel = field(default_factory=SlippageModel)
    entry_rule: Literal["every_bar", "day_open"] = "every_bar"
    expected_edge_pct: Decimal = Decimal(2)  # the entry rule's claimed edge (the edge gate needs one)
    atr_bars: int = 14
    rearm_next_day: bool = True  # a director re-arms a latched switch at the next UTC day's first bar
    account_id: int = 1


@dataclass(frozen=True, slots=True)
class ReplayFill:
    at: datetime
    side: Side
    reason: FillReason
    quantity: Decimal
    base_price: Decimal  # before slippage (open, trigger or open through a gap)
    price: Decimal  # the fill price, slippage included
    fee: Decimal

    @property
    def slippage_cost(self) -> Decimal:
        """USD lost to slippage against ``base_price`` (positive)."""
        move = self.price - self.base_price if self.side == Side.BUY else self.base_price - self.price
        return move * self.quantity


@dataclass(frozen=True, slots=True)
class EquityMark:
    at: datetime
    kind: MarkKind
    price: Decimal  # the pair's price the holding is marked at
    quantity: Decimal  # held when marked
    equity: Decimal
    high_water: Decimal  # the UTC day's high-water mark after this mark
    drawdown_pct: Decimal
    fills: int  # fills so far (``ReplayResult.fills[mark.fills:]`` came after this mark)


@dataclass(frozen=True, slots=True)
class Trip:
    """A kill-switch trip, with the last mark before it (which did not breach) for the bound."""

    at: datetime
    day: date
    mark: EquityMark  # the mark that tripped
    safe: EquityMark  # the last mark before it
    actions: tuple[Action, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class BlockedEntry:
    at: datetime
    codes: tuple[str, ...]
    message: str


@dataclass(frozen=True, slots=True)
class DayReport:
    day: date
    start_equity: Decimal  # marked at the day's first open
    high_water: Decimal  # the day's equity high-water mark (open, fill and close marks)
    low: Decimal  # the lowest mark of the day (bar lows included)
    end_equity: Decimal  # marked at the day's last close
    entries: int
    exits: int
    blocked_entries: int
    tripped_at: datetime | None
    trip_reason: str

    @property
    def tripped(self) -> bool:
        return self.tripped_at is not None

    @property
    def loss_from_high(self) -> Decimal:
        """``high_water - end_equity`` (USD; negative: the day ended at a new high)."""
        return self.high_water - self.end_equity

    @property
    def loss_from_high_pct(self) -> Decimal:
        return self.loss_from_high / self.high_water * HUNDRED

    @property
    def max_drawdown_pct(self) -> Decimal:
        """From the high-water mark to the day's lowest mark (the low may precede the final mark)."""
        return (self.high_water - self.low) / self.high_water * HUNDRED


@dataclass(frozen=True, slots=True)
class ReplayResult:
    days: tuple[DayReport, ...]
    fills: tuple[ReplayFill, ...]
    trips: tuple[Trip, ...]
    blocked: tuple[BlockedEntry, ...]
    marks: tuple[EquityMark, ...]
    cash: Decimal
    quantity: Decimal
    flatten_pending: bool  # a trip on the last bar asked for a flatten no bar was left to carry out

    def day(self, day: date) -> DayReport:
        return next(report for report in self.days if report.day == day)


# --- The driver --------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Day:
    day: date
    opened_at: datetime
    start: Decimal
    low: Decimal
    entries: int = 0
    exits: int = 0
    blocked: int = 0


class _Account:
    """The replay's mutable state; every decision is delegated to the decision core."""

    def __init__(self, config: ReplayConfig, equity: Decimal) -> None:
        self.config = config
        self.cash = equity
        self.book = Book()
        self.plan: ExitPlan | None = None
        self.switch = SwitchState()
        self.day_equity: DayEquity | None = None
        self.pending_flatten = False
        self.orders: list[datetime] = []
        self.fills: list[ReplayFill] = []
        self.trips: list[Trip] = []
        self.blocked: list[BlockedEntry] = []
        self.marks: list[EquityMark] = []
        self.days: list[DayReport] = []
        self.current: _Day | None = None
        self._order_seq = 0
        self.bar_end: datetime | None = None  # the bar's last instant: in-bar marks are stamped here

    # -- marks and the kill switch --

    def equity_at(self, price: Decimal) -> Decimal:
        mark = Mark(self.config.pair.symbol, self.book.quantity, price)
        return marked_equity(cash_usd=self.cash, marks=[mark], fees=self.config.fees)

    def mark(self, *, at: datetime, kind: MarkKind, price: Decimal) -> None:
        equity = self.equity_at(price)
        observed = observe_equity(self.day_equity, equity=equity, at=at)
        if kind == "low":  # a bar's low is a drawdown probe, never a new high-water mark
            base = self.day_equity if self.day_equity and self.day_equity.day == observed.day else None
            high_water = base.high_water if base is not None else equity
            observed = DayEquity(day=observed.day, high_water=high_water, equity=equity, at=at)
        self.day_equity = observed
        entry = EquityMark(
            at,
            kind,
            price,
            self.book.quantity,
            equity,
            observed.high_water,
            observed.drawdown_pct,
            len(self.fills),
        )
        safe = self.marks[-1] if self.marks else entry
        self.marks.append(entry)
        if self.current is not None:
            self.current.low = min(self.current.low, equity)
        transition = on_equity(self.switch, day=observed, policy=self.config.policy)
        if transition.actions:
            self.switch = transition.state
            self.trips.append(
                Trip(at, observed.day, entry, safe, transition.actions, transition.state.reason)
            )
            if Action.FLATTEN in transition.actions and self.book.quantity > 0:
                self.pending_flatten = True

    # -- orders --

    def _request(self, side: Side, kind: OrderKind, quantity: Decimal, stop: Decimal | None = None):
        self._order_seq += 1
        return OrderRequest(
            account_id=self.config.account_id,
            client_order_id=f"replay-{self._order_seq}",
            pair=self.config.pair,
            side=side,
            kind=kind,
            quantity=quantity,
            stop_price=stop,
        )

    def _snapshot(self, *, now: datetime, price: Decimal) -> Snapshot:
        config = self.config
        symbol = config.pair.symbol
        return Snapshot(
            now=now,
            mode=Mode.SIMULATION,
            broker="sim",
            trading_enabled=True,
            switch=self.switch,
            pairs={symbol: config.pair},
            prices={symbol: PriceQuote(price, now)},
            max_price_age=timedelta(minutes=5),
            equity=self.equity_at(price),
            available_usd=self.cash,
            held={symbol: self.book.quantity},
            fees=config.fees,
            slippage_pct=config.slippage.bps / _BPS_PER_PCT,
            exposures={symbol: self.book.quantity * price},
            groups=(frozenset({symbol}),),
            recent_orders=tuple(self.orders),
        )

    def _fill(self, execution: Execution, *, side: Side, reason: FillReason, base_price: Decimal) -> None:
        facts = FillFacts(
            side=str(side),
            price=execution.price,
            quantity=execution.quantity,
            fee=execution.fee,
            fee_currency=execution.fee_currency,
            executed_at=execution.executed_at,
        )
        effect = apply_fill(self.book, facts, base_asset=self.config.pair.base_asset)
        self.book = effect.book
        self.cash += effect.usd_delta
        if self.cash < 0:
            raise ReplayError(f"USD balance went negative ({self.cash}) at {execution.executed_at}")
        self.orders.append(execution.executed_at)
        self.fills.append(
            ReplayFill(
                execution.executed_at,
                side,
                reason,
                execution.quantity,
                base_price,
                execution.price,
                execution.fee,
            )
        )
        if self.current is not None:
            if side == Side.BUY:
                self.current.entries += 1
            else:
                self.current.exits += 1
        self.mark(at=min(execution.executed_at, self.bar_end), kind="fill", price=execution.price)

    def sell_all(self, bar: Bar, *, reason: FillReason, kind: OrderKind, trigger: Decimal | None) -> None:
        symbol = self.config.pair.symbol
        intent = OrderIntent(symbol=symbol, side=Side.SELL, quantity=self.book.quantity)
        snapshot = self._snapshot(now=bar.open_time, price=bar.open)
        decision = check_order(policy=self.config.policy, snapshot=snapshot, intent=intent)
        if decision.verdict == Verdict.REJECT:
            raise ReplayError(f"an exit was rejected: {decision.message}")
        request = self._request(Side.SELL, kind, decision.quantity, trigger)
        execution = match_on_bar(request, bar, fees=self.config.fees, slippage=self.config.slippage)
        if execution is None:
            raise ReplayError(f"the {reason} at {trigger} did not fill on the bar at {bar.open_time}")
        if kind == OrderKind.MARKET:
            base = bar.open
        elif kind == OrderKind.STOP_LOSS:
            base = min(trigger, bar.open)
        else:  # take-profit: the trigger, or the better open
            base = max(trigger, bar.open)
        self.plan = None
        self._fill(execution, side=Side.SELL, reason=reason, base_price=base)

    def try_entry(self, bar: Bar, history: Sequence[Bar]) -> None:
        config = self.config
        atr = average_true_range(history[-(config.atr_bars + 1) :])
        if atr is None or atr <= 0:
            return
        equity = self.equity_at(bar.open)
        size = size_entry(
            policy=config.policy,
            pair=config.pair,
            equity=equity,
            price=bar.open,
            fees=config.fees,
            atr=atr,
            buying_power=self.cash,
        )
        if not size.tradable:
            return
        intent = OrderIntent(
            symbol=config.pair.symbol,
            side=Side.BUY,
            quantity=size.quantity,
            expected_edge_pct=config.expected_edge_pct,
        )
        decision = check_order(
            policy=config.policy, snapshot=self._snapshot(now=bar.open_time, price=bar.open), intent=intent
        )
        if decision.verdict == Verdict.REJECT:
            self.blocked.append(
                BlockedEntry(bar.open_time, tuple(str(code) for code in decision.codes), decision.message)
            )
            if self.current is not None:
                self.current.blocked += 1
            return
        if not entries_allowed(self.switch):
            raise ReplayError(f"the pre-trade check let an entry through a blocked account: {decision}")
        request = self._request(Side.BUY, OrderKind.MARKET, decision.quantity)
        execution = match_on_bar(request, bar, fees=config.fees, slippage=config.slippage)
        self._fill(execution, side=Side.BUY, reason="entry", base_price=bar.open)
        self.plan = plan_exits(
            policy=config.policy,
            pair=config.pair,
            entry_price=execution.price,
            fees=config.fees,
            slippage_pct=config.slippage.bps / _BPS_PER_PCT,
            atr=atr,
        )

    # -- days --

    def start_day(self, bar: Bar) -> None:
        config = self.config
        self.switch = on_day_change(self.switch, now=bar.open_time, policy=config.policy).state
        if self.switch.latched and config.rearm_next_day and utc_day(bar.open_time) > self.switch.tripped_on:
            self.switch = rearm(self.switch, now=bar.open_time).state
        equity = self.equity_at(bar.open)
        self.current = _Day(utc_day(bar.open_time), bar.open_time, start=equity, low=equity)
        self.mark(at=bar.open_time, kind="open", price=bar.open)

    def end_day(self) -> None:
        day = self.current
        if day is None:
            return
        trip = next((trip for trip in self.trips if trip.day == day.day), None)
        self.days.append(
            DayReport(
                day=day.day,
                start_equity=day.start,
                high_water=self.day_equity.high_water,
                low=day.low,
                end_equity=self.day_equity.equity,
                entries=day.entries,
                exits=day.exits,
                blocked_entries=day.blocked,
                tripped_at=trip.at if trip else None,
                trip_reason=trip.reason if trip else "",
            )
        )


def replay(bars: Sequence[Bar], *, config: ReplayConfig, equity: Decimal, warmup: int = 0) -> ReplayResult:
    """Run the account (``equity`` USD in cash, nothing held) over ``bars`` (one pair, oldest first, in time
    order). The first ``warmup`` bars only feed the ATR; trading starts at ``bars[warmup]``, which should
    open a UTC day."""
    problems = config.policy.validate()
    if problems:
        raise ValueError("; ".join(problems))
    if warmup < 2 or warmup >= len(bars):
        raise ValueError(f"warmup must leave bars to replay and give the ATR at least two bars, not {warmup}")
    account = _Account(config, equity)
    for index in range(warmup, len(bars)):
        bar = bars[index]
        account.bar_end = bar.close_time - LAST_INSTANT
        if account.current is None or utc_day(bar.open_time) != account.current.day:
            account.end_day()
            account.start_day(bar)
        if account.pending_flatten and account.book.quantity > 0:
            account.pending_flatten = False
            account.sell_all(bar, reason="flatten", kind=OrderKind.MARKET, trigger=None)
        wants_entry = config.entry_rule == "every_bar" or bar.open_time == account.current.opened_at
        if account.book.quantity == 0 and wants_entry:
            # No short cut on the switch here: the pre-trade check is the gate, and its refusals are recorded.
            account.try_entry(bar, bars[:index])
        if account.plan is not None and account.book.quantity > 0:
            evaluation = evaluate_bar(account.plan, low=bar.low, high=bar.high)
            account.plan = evaluation.plan
            signal = evaluation.signal
            if signal is not None:
                take = signal.reason == ExitReason.TAKE_PROFIT
                kind = OrderKind.TAKE_PROFIT if take else OrderKind.STOP_LOSS
                account.sell_all(bar, reason=str(signal.reason), kind=kind, trigger=signal.trigger_price)
        account.mark(at=account.bar_end, kind="low", price=bar.low)
        account.mark(at=account.bar_end, kind="close", price=bar.close)
    account.end_day()
    return ReplayResult(
        days=tuple(account.days),
        fills=tuple(account.fills),
        trips=tuple(account.trips),
        blocked=tuple(account.blocked),
        marks=tuple(account.marks),
        cash=account.cash,
        quantity=account.book.quantity,
        flatten_pending=account.pending_flatten and account.book.quantity > 0,
    )
