"""The pre-trade shell: build the engine's :class:`~risk.engine.Snapshot` of an account from the database and
pass every order the engine wants through :func:`~risk.engine.check_order` before the order service.

``order_submit_checked`` is the order path of the strategy cycle and of the exits (``risk/exits.py``):

1. ``risk_snapshot`` reads the account's state (below) and ``check_order`` decides accept / resize / reject;
2. a reject is audited (``risk.rejected``: codes and the sentence) and counted; nothing is sent;
3. a resize is audited (``risk.resized``) and counted, then the resized quantity is submitted; an accept is
   submitted as it is (``trading.services.orders.order_submit``, outside any transaction: it commits its
   intent before any network call, so this function must not be called inside one either);
4. after an entry (a buy) fills, its exits are planned (``risk.exits.exits_plan``) and, on a live account,
   a protective stop-loss rests on Kraken (``risk.exits.protective_stop_place``).

What the snapshot holds (the current book is the account mode's: ``sim`` or ``kraken``):

* prices: the quote source's last price (``DatabaseQuoteSource`` by default) with its time, for the order's
  pair and every held pair; ``max_price_age`` is ``MARKET_STALE_SECONDS``. A quote its source already calls
  stale (a pair the feed marked stale) is given no time, so the check treats it as stale too;
* equity: the book marked now (``risk.services.nav_mark_book``); when it cannot be marked (a held pair
  without a fresh price), the latest NAV snapshot of the book if taken within one bar, else unknown (the
  check then refuses entries);
* available USD: the book's USD balance minus what open orders reserve; held: each position minus what
  open sells on it reserve (a resting protective stop holds the whole position);
* exposures: each position at its last price (its average cost when no price is known at all) plus the USD
  reserved by open buys on the pair;
* groups: ``correlated_groups`` over the closed candles (``AETHER_TIMEFRAME``) of the traded pairs, the
  order's pair and the held pairs, for the policy's window (computed once per snapshot);
* recent orders: the creation times of the account's orders of the last hour (both books, every side).

The universe is every synced Kraken pair quoted in USD whose status is ``online``.
"""

from __future__ import annotations

import logging
import uuid
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal

import pandas as pd
from django.conf import settings
from django.db import transaction
from django.db.models import Count, Max, Min, Sum
from django.utils import timezone
from prometheus_client import Counter

from accounts.models import Account
from aether_site.caching import BoundedCache
from governance.services import audit_record
from risk import engine
from risk.selectors import engine_policy_for, switch_state_for
from trading.clock import platform_now
from trading.models import (
    LIVE_STATUSES,
    Balance,
    Candle,
    Instrument,
    Order,
    OrderStatus,
    Position,
    Side,
)
from trading.selectors import book_of, fee_rates_for, pair_rules_for

logger = logging.getLogger(__name__)

RISK_DECISIONS = Counter(
    "aether_risk_decisions", "Pre-trade decisions by verdict and reason code", ["verdict", "code"]
)

QUOTE_ASSET = "USD"


def slippage_pct() -> Decimal:
    """The expected slippage of a taker order, in %: the simulator's default basis points."""
    from trading.brokers.sim import default_slippage

    return default_slippage().bps / Decimal(100)


# ----------------------------------------------------------------------------------------------------------
# Snapshot
# ----------------------------------------------------------------------------------------------------------


def _price_quote(quote, now: datetime) -> engine.PriceQuote:
    if quote is None:
        return engine.PriceQuote(None, None)
    return engine.PriceQuote(quote.last, None if quote.is_stale(now) else quote.at)


def _equity(
    *, account: Account, broker: str, quotes, now: datetime, cash: Decimal, positions: list[Position]
) -> Decimal | None:
    from risk.selectors import nav_latest
    from risk.services import NavUnavailable, nav_mark_book

    try:
        return nav_mark_book(
            account=account, broker=broker, quotes=quotes, now=now, cash=cash, positions=positions
        ).equity
    except NavUnavailable as exc:
        latest = nav_latest(account=account)
        bar = timedelta(minutes=settings.AETHER_TIMEFRAME)
        if latest is not None and latest.broker == broker and now - latest.taken_at <= bar:
            logger.warning("%s: %s; using the NAV snapshot of %s", account.slug, exc, latest.taken_at)
            return latest.equity
        logger.warning("%s: equity unknown: %s", account.slug, exc)
        return None


#: Correlated groups by the candles they were computed from: the same for every account on a bar.
_GROUPS_CACHE = BoundedCache(64)


def _groups(*, symbols: set[str], window: int, threshold: float, now: datetime) -> tuple[frozenset, ...]:
    """Correlated groups of ``symbols`` from their closed candles over the last ``window`` bars. Computed
    once per process for the same candles: the key holds the window's first and last bar, its number of
    bars and the newest write among them, so a new or corrected bar computes them again."""
    timeframe = settings.AETHER_TIMEFRAME
    since = now - timedelta(minutes=timeframe) * (window + 2)
    candles = Candle.objects.filter(
        instrument__symbol__in=symbols, timeframe=timeframe, closed=True, open_time__gte=since
    )
    shape = candles.aggregate(
        first=Min("open_time"), last=Max("open_time"), bars=Count("id"), written=Max("updated_at")
    )
    key = (tuple(sorted(symbols)), timeframe, window, threshold, *shape.values())
    cached = _GROUPS_CACHE.get(key, None)
    if cached is not None:
        return cached
    closes: dict[str, dict[datetime, float]] = {symbol: {} for symbol in sorted(symbols)}
    for symbol, open_time, close in candles.values_list("instrument__symbol", "open_time", "close"):
        closes[symbol][open_time] = float(close)
    frame = pd.DataFrame(closes).sort_index()
    groups = (
        ()
        if len(frame.columns) < 2
        else engine.correlated_groups(frame, window=window, threshold=threshold).groups
    )
    _GROUPS_CACHE.put(key, groups)
    return groups


def risk_snapshot(
    *,
    account: Account,
    instrument: Instrument,
    now=None,
    quotes=None,
    policy: engine.RiskPolicy | None = None,
) -> engine.Snapshot:
    """What :func:`risk.engine.check_order` knows about ``account`` for an order on ``instrument`` (read
    without locks: the order service re-checks funds under its own; see the module docstring). ``policy``:
    the account's engine policy when the caller has just read it (else it is read here)."""
    return risk_state(account=account, instrument=instrument, now=now, quotes=quotes, policy=policy).snapshot


@dataclass(frozen=True)
class RiskState:
    """The snapshot with what was read to build it and a caller may need as well (the strategy cycle)."""

    snapshot: engine.Snapshot
    #: The current book's positions with ``quantity > 0`` (their instrument loaded), by symbol.
    positions: dict[str, Position]
    #: The current book's orders of unknown outcome (``UNKNOWN``: Kraken may or may not hold them).
    unresolved_orders: int
    #: The symbols the correlated groups were computed over.
    grouped: frozenset[str] = frozenset()
    #: The wall-clock time the recent orders were read at (their ages are wall-clock).
    read_at: datetime | None = None


def risk_state(
    *,
    account: Account,
    instrument: Instrument,
    now=None,
    quotes=None,
    policy: engine.RiskPolicy | None = None,
    switch: engine.SwitchState | None = None,
    account_is_current: bool = False,
) -> RiskState:
    """:func:`risk_snapshot` with the positions and the count of unresolved orders it read. What the caller
    has just read is not read again: ``policy``, the account's engine policy; ``switch``, its kill switch's
    state; ``account_is_current``, ``account`` itself (its mode and switches as they are now)."""
    from trading.quotes import DatabaseQuoteSource

    now = now or platform_now()
    quotes = quotes or DatabaseQuoteSource()
    if not account_is_current:
        account = Account.objects.get(pk=account.pk)
    broker = book_of(account)
    policy = policy or engine_policy_for(account=account)

    universe = Instrument.objects.filter(symbol__endswith="/USD", status=Instrument.Status.ONLINE)
    pairs = {item.symbol: pair_rules_for(item) for item in universe}

    positions = list(
        Position.objects.filter(account=account, broker=broker, quantity__gt=0).select_related("instrument")
    )
    # Live orders' reservations by pair and side, and how many are of unknown outcome: one grouped read.
    offered: dict[str, Decimal] = defaultdict(Decimal)
    bids: dict[str, Decimal] = defaultdict(Decimal)
    unresolved = 0
    live = (
        Order.objects.filter(account=account, broker=broker, status__in=LIVE_STATUSES)
        .values("instrument__symbol", "side", "status")
        .annotate(total=Sum("reserved_amount"), orders=Count("id"))
        .order_by()
        .values_list("instrument__symbol", "side", "status", "total", "orders")
    )
    for symbol, side, status, total, orders in live:
        (offered if side == Side.SELL else bids)[symbol] += total or Decimal(0)
        if status == OrderStatus.UNKNOWN:
            unresolved += orders

    prices = {instrument.symbol: _price_quote(quotes.quote(instrument), now)}
    held: dict[str, Decimal] = {}
    exposures: dict[str, Decimal] = defaultdict(Decimal)
    for position in positions:
        symbol = position.instrument.symbol
        if symbol not in prices:
            prices[symbol] = _price_quote(quotes.quote(position.instrument), now)
        held[symbol] = position.quantity - offered.get(symbol, Decimal(0))
        mark = prices[symbol].price or position.average_cost
        exposures[symbol] += position.quantity * mark
    for symbol, reserved in bids.items():
        exposures[symbol] += reserved

    balance = Balance.objects.filter(account=account, broker=broker, asset=QUOTE_ASSET).first()
    available = balance.available if balance is not None else Decimal(0)

    symbols = set(settings.AETHER_PAIRS) | {instrument.symbol} | set(held)
    groups = _groups(
        symbols=symbols,
        window=policy.correlation_window,
        threshold=policy.correlation_threshold,
        now=now,
    )
    # Order times are wall-clock; the rate limit counts them by their wall-clock age, set on the check's
    # clock (the same in live trading; in a replay the platform clock runs ahead of, or behind, the wall).
    wall = timezone.now()
    recent = tuple(
        now - (wall - created)
        for created in Order.objects.filter(
            account=account, created_at__gte=wall - timedelta(hours=1)
        ).values_list("created_at", flat=True)
    )
    snapshot = engine.Snapshot(
        now=now,
        mode=engine.Mode.SIMULATION if account.simulation_mode else engine.Mode.LIVE,
        broker=broker,
        trading_enabled=account.trading_enabled,
        switch=switch or switch_state_for(account=account),
        pairs=pairs,
        prices=prices,
        max_price_age=timedelta(seconds=settings.MARKET_STALE_SECONDS),
        equity=_equity(
            account=account,
            broker=broker,
            quotes=quotes,
            now=now,
            cash=balance.total if balance is not None else Decimal(0),
            positions=positions,
        ),
        available_usd=available,
        held=held,
        fees=fee_rates_for(account=account, instrument=instrument),
        slippage_pct=slippage_pct(),
        exposures=dict(exposures),
        groups=groups,
        recent_orders=recent,
    )
    return RiskState(
        snapshot=snapshot,
        positions={position.instrument.symbol: position for position in positions},
        unresolved_orders=unresolved,
        grouped=frozenset(symbols),
        read_at=wall,
    )


def risk_state_for_pair(
    state: RiskState,
    *,
    account: Account,
    instrument: Instrument,
    now: datetime,
    switch: engine.SwitchState,
    quotes=None,
) -> RiskState | None:
    """``state``, read by :func:`risk_state` for another pair of the same account, turned into the state
    for an order on ``instrument`` at ``now``: the pair's price and fee rates read, the clock moved (the
    recent orders' wall-clock ages kept). Valid only while the account's book has not changed since
    ``state`` was read (no order placed, no fill applied): the strategy cycle of one account runs its pairs
    one after the other and reads the state again after any order. ``account`` (its mode and switches) and
    ``switch`` (its kill switch's state) are as the caller has just read them. ``None`` when ``state``
    cannot serve (the pair is outside the symbols its correlated groups were computed over, or the account
    changed books): read it with :func:`risk_state` then. It reads the pair's quote (two statements from
    the database's quote source) and its fee rates (one) instead of the eleven of a full state."""
    from trading.quotes import DatabaseQuoteSource

    snapshot = state.snapshot
    if instrument.symbol not in state.grouped or book_of(account) != snapshot.broker:
        return None
    prices = dict(snapshot.prices)  # the held pairs' marks, as the exposures used them
    prices[instrument.symbol] = _price_quote((quotes or DatabaseQuoteSource()).quote(instrument), now)
    wall = timezone.now()
    moved = (now - snapshot.now) - (wall - (state.read_at or wall))
    return replace(
        state,
        snapshot=replace(
            snapshot,
            now=now,
            mode=engine.Mode.SIMULATION if account.simulation_mode else engine.Mode.LIVE,
            trading_enabled=account.trading_enabled,
            switch=switch,
            prices=prices,
            fees=fee_rates_for(account=account, instrument=instrument),
            recent_orders=tuple(moment + moved for moment in snapshot.recent_orders),
        ),
        read_at=wall,
    )


# ----------------------------------------------------------------------------------------------------------
# The checked order path
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CheckedOrder:
    """The risk decision and the order it let through (``None`` on a reject)."""

    decision: engine.Decision
    order: Order | None


def _count_on_commit(decision: engine.Decision) -> None:
    codes = [str(code) for code in decision.codes] or ["none"]
    for code in codes:
        transaction.on_commit(RISK_DECISIONS.labels(str(decision.verdict), code).inc)


def _decision_details(decision, intent: engine.OrderIntent, *, client_order_id: str, reason: str) -> dict:
    return {
        "verdict": str(decision.verdict),
        "codes": [str(code) for code in decision.codes],
        "message": decision.message,
        "reasons": [{"code": str(item.code), "message": item.message} for item in decision.reasons],
        "pair": intent.symbol,
        "side": str(intent.side),
        "requested_quantity": str(intent.quantity),
        "quantity": str(decision.quantity),
        "limit_price": None if intent.limit_price is None else str(intent.limit_price),
        "expected_edge_pct": None if intent.expected_edge_pct is None else str(intent.expected_edge_pct),
        "client_order_id": client_order_id,
        "reason": reason,
    }


def order_submit_checked(
    *,
    account: Account,
    actor,
    instrument: Instrument,
    side: str,
    order_type: str,
    quantity: Decimal,
    limit_price: Decimal | None = None,
    client_order_id: str | None = None,
    reason: str,
    expected_edge_pct: Decimal | None = None,
    quotes=None,
    broker_factory=None,
    now: datetime | None = None,
) -> CheckedOrder:
    """Check the order with the risk engine, then submit what it allows (see the module docstring).

    Must not run inside a transaction (the order service commits its intent before any network call).
    A known ``client_order_id`` returns its order unchanged (idempotent, nothing re-checked or re-sent)."""
    from trading.services.orders import order_submit

    if client_order_id and Order.objects.filter(client_order_id=client_order_id).exists():
        order = order_submit(
            account=account,
            actor=actor,
            instrument=instrument,
            side=side,
            order_type=order_type,
            quantity=quantity,
            limit_price=limit_price,
            client_order_id=client_order_id,
            reason=reason,
            broker_factory=broker_factory,
            quotes=quotes,
        )
        decision = engine.Decision(
            engine.Verdict.ACCEPT, order.quantity, (), f"Already recorded as {client_order_id}."
        )
        return CheckedOrder(decision, order)

    client_order_id = client_order_id or str(uuid.uuid4())
    intent = engine.OrderIntent(
        symbol=instrument.symbol,
        side=Side(side),
        quantity=Decimal(quantity),
        limit_price=limit_price,
        expected_edge_pct=expected_edge_pct,
    )
    policy = engine_policy_for(account=account)
    snapshot = risk_snapshot(account=account, instrument=instrument, now=now, quotes=quotes, policy=policy)
    decision = engine.check_order(policy=policy, snapshot=snapshot, intent=intent)

    with transaction.atomic():
        locked = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        if decision.verdict != engine.Verdict.ACCEPT:
            audit_record(
                actor=actor,
                action=f"risk.{'rejected' if decision.verdict == engine.Verdict.REJECT else 'resized'}",
                account=locked,
                target=instrument,
                details=_decision_details(decision, intent, client_order_id=client_order_id, reason=reason),
            )
        _count_on_commit(decision)
    if decision.verdict == engine.Verdict.REJECT:
        logger.info("%s: %s", account.slug, decision.message)
        return CheckedOrder(decision, None)

    order = order_submit(
        account=account,
        actor=actor,
        instrument=instrument,
        side=side,
        order_type=order_type,
        quantity=decision.quantity,
        limit_price=limit_price,
        client_order_id=client_order_id,
        reason=reason,
        broker_factory=broker_factory,
        quotes=quotes,
    )
    if side == Side.BUY and order.filled_quantity > 0:
        _after_entry_fill(order=order, actor=actor, broker_factory=broker_factory, quotes=quotes)
    return CheckedOrder(decision, order)


def _after_entry_fill(*, order: Order, actor, broker_factory=None, quotes=None) -> None:
    """Plan the exits of the position an entry filled into and, on Kraken, rest its protective stop. A
    plan that cannot be made is audited (``risk.exits_unplanned``) and retried on the next bar; the fill
    itself stands either way."""
    from risk.exits import ExitPlanUnavailable, exits_plan_and_protect

    account, instrument = order.account, order.instrument
    try:
        exits_plan_and_protect(
            account=account,
            instrument=instrument,
            broker=order.broker,
            actor=actor,
            broker_factory=broker_factory,
            quotes=quotes,
        )
    except ExitPlanUnavailable as exc:
        logger.error("%s %s: exits not planned: %s", account.slug, instrument.symbol, exc)
        with transaction.atomic():
            audit_record(
                actor=actor,
                action="risk.exits_unplanned",
                account=account,
                target=order,
                details={"pair": instrument.symbol, "problem": str(exc), "order": order.client_order_id},
            )
