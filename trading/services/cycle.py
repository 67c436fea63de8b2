"""The strategy cycle: one account, one pair, one closed bar, from data to orders to equity.

``cycle_run`` is the shell around the decision core (:func:`trading.cycle_core.decide`):

1. **Claim** the cycle row (unique per account, pair, timeframe and bar) under the account's row lock (the
   account task claims its pairs on the bar together, in one transaction). A cycle already done or skipped
   is returned as it is, so a retried task does nothing twice. Cycles of one account never overlap: a
   running cycle holds a lease (``CYCLE_LEASE_SECONDS``); another cycle of the account raises
   :class:`CycleBusy` (the task retries it shortly). A cycle whose worker died is resumed once its lease has
   lapsed; its orders carry client ids derived from the cycle, so a resumed cycle finds what it already placed
   instead of placing it again.
2. **Exits first**: the account's open position in the pair is watched on the bar by the risk service
   (:func:`risk.exits.exits_evaluate`: stop-loss, take-profit, trailing ratchet, the resting stop on Kraken).
3. **Decide**: features and the champion's probability (or, without a champion, the rule-based strategy, which
   the cycle records), the hedge's cap on buying power, sizing and the pre-trade checks: all in the core.
4. **Orders**: each intent goes through :func:`risk.pretrade.order_submit_checked` (checked again on fresh
   state, committed before any network call).
5. **Hedge** (the account's hedge policy, when the hedging app decides a rebalance is due) and a **NAV
   snapshot** (which also feeds the kill switch): each once per account and bar, and again after a cycle
   that placed an order (fills queue their own snapshot too, and beat records one every
   ``NAV_SNAPSHOT_EVERY_SECONDS``).

Everything the cycle decided, with reasons and order ids, is stored on the row (visible in the admin), and
the row says which strategy ran and why. Must not run inside a transaction (orders commit first).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal

from django.conf import settings
from django.core.exceptions import ObjectDoesNotExist
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from accounts.models import Account
from aether_site.caching import BoundedCache
from aether_site.rows import update_row
from governance.actors import SystemActor
from trading.brokers.base import Side
from trading.clock import platform_now
from trading.models import Candle, Cycle, CycleStatus, Instrument, Order, OrderType, Position
from trading.quotes import candle_bar
from trading.selectors import book_of, pair_rules_for

logger = logging.getLogger(__name__)

CYCLE = SystemActor("strategy_cycle")
#: Closed bars the cycle reads for ATR and realised volatility (as the exits service does).
VOLATILITY_BARS = 16


class CycleBusy(Exception):
    """Another cycle of the account holds the lease; try again in ``CYCLE_BUSY_RETRY_SECONDS``."""


class CycleError(RuntimeError):
    """The cycle cannot run (e.g. its bar is not stored as closed); the message says why."""


@dataclass
class AccountBar:
    """What the cycles of one account on one bar, run one after the other by :func:`account_cycles_run`,
    share instead of reading again: the bar's candles; the account with its policies, switch and
    thresholds (read again when the hedge evaluation found or left a hedge policy other than the one read
    with the account, or a NAV snapshot left the switch anything but armed); the risk state (read again
    after an exit, an entry or a hedge sale moved the book, and for a pair with an open position); and
    which cycle left the hedge evaluated and the NAV recorded on this bar. A pair another worker finished
    or took over, or a failed one, resets it all but the candles."""

    account: Account | None = None
    state: object | None = None  # risk.pretrade.RiskState
    candles: dict = field(default_factory=dict)  # instrument id → the bar's closed Candle
    hedged_by: int | None = None
    nav_by: int | None = None
    looked_back: bool = False  # hedged_by and nav_by are known: consulted, or none can exist (see the claim)

    def reset(self) -> None:
        """Forget everything but the bar's candles: the next cycle reads the account afresh."""
        self.account = self.state = self.hedged_by = self.nav_by = None
        self.looked_back = False


# ----------------------------------------------------------------------------------------------------------
# Claim and finish
# ----------------------------------------------------------------------------------------------------------


def _claim(
    *, account: Account, instrument: Instrument, timeframe: int, bar_open_time: datetime, now: datetime
) -> tuple[Cycle, bool]:
    """(cycle, run it?) under the account's row lock; see the module docstring. Leases are wall-clock time
    (``now``), whatever the platform clock: a dead worker's lease lapses even while a replay is paused."""
    return _claim_pairs(
        account=account, instruments=[instrument], timeframe=timeframe, bar_open_time=bar_open_time, now=now
    )[0]


def _claim_pairs(
    *,
    account: Account,
    instruments: list[Instrument],
    timeframe: int,
    bar_open_time: datetime,
    now: datetime,
) -> list[tuple[Cycle, bool]]:
    """(cycle, run it?) for each of ``instruments``, in that order, on the bar: one transaction under the
    account's row lock for all of them. A cycle already done or skipped is returned as it is (not run);
    when all are, whatever else of the account runs. The others are claimed together, each with a lease of
    ``CYCLE_LEASE_SECONDS`` from ``now``, to run one after the other in that order: each renews its lease
    when its turn comes (:func:`_take_turn`), so a dead worker's cycles lapse within one lease, as one
    cycle's did. While any cycle of the account holds a live lease (another worker's),
    :class:`CycleBusy` is raised and nothing is claimed."""
    lease = timedelta(seconds=settings.CYCLE_LEASE_SECONDS)
    wanted = {instrument.pk for instrument in instruments}
    finished = (CycleStatus.DONE, CycleStatus.SKIPPED)
    with transaction.atomic():
        locked = Account.objects.select_for_update(no_key=True).get(pk=account.pk)
        # These cycles' rows and every running cycle of the account holding a lease, in one read.
        these = Q(instrument_id__in=wanted, timeframe=timeframe, bar_open_time=bar_open_time)
        rows = list(
            Cycle.objects.select_for_update()
            .filter(these | Q(status=CycleStatus.RUNNING, lease_until__gt=now), account=locked)
            .order_by("started_at", "pk")
        )
        mine = {
            row.instrument_id: row
            for row in rows
            if row.instrument_id in wanted
            and row.timeframe == timeframe
            and row.bar_open_time == bar_open_time
        }
        if all(pk in mine and mine[pk].status in finished for pk in wanted):
            # All done already (a retried or duplicate task): returned as they are, whatever else runs.
            return [(mine[instrument.pk], False) for instrument in instruments]
        holder = next(
            (row for row in rows if row.status == CycleStatus.RUNNING and row.lease_until > now), None
        )
        if holder is not None:
            if mine.get(holder.instrument_id) is holder:
                raise CycleBusy(f"{account.slug}: cycle #{holder.pk} is running in another worker")
            raise CycleBusy(f"{account.slug}: cycle #{holder.pk} ({holder.instrument}) holds the lease")
        broker = book_of(locked)
        claimed: list[tuple[Cycle, bool]] = []
        new: list[Cycle] = []
        for instrument in instruments:
            cycle = mine.get(instrument.pk)
            if cycle is not None and cycle.status in finished:
                claimed.append((cycle, False))
                continue
            if cycle is None:
                cycle = Cycle(
                    account=locked,
                    instrument=instrument,
                    timeframe=timeframe,
                    bar_open_time=bar_open_time,
                    broker=broker,
                    status=CycleStatus.RUNNING,
                    attempts=1,
                    started_at=now,
                    lease_until=now + lease,
                )
                new.append(cycle)
            else:  # failed, or its worker died and the lease lapsed: resumed
                cycle.status = CycleStatus.RUNNING
                cycle.attempts += 1
                cycle.started_at = now
                cycle.lease_until = now + lease
                cycle.broker = broker
                cycle.error = ""
                cycle.save(
                    update_fields=["status", "attempts", "started_at", "lease_until", "broker", "error"]
                )
            claimed.append((cycle, True))
        if new:
            Cycle.objects.bulk_create(new)  # one INSERT; the rows come back with their ids
            if any(cycle.pk is None for cycle in new):
                raise CycleError(
                    "the database returned no ids for the claimed cycles (SQLite 3.35 or later is needed)"
                )
    return claimed


def _take_turn(
    cycle: Cycle, *, account: Account, instrument: Instrument, timeframe: int, bar_open_time: datetime
) -> tuple[Cycle, bool, bool]:
    """A cycle claimed with the account's other pairs, when its turn comes: ``(cycle, run it?, kept)``.

    Kept (the common case): its lease was still live and still this task's, and one conditional UPDATE
    renews it (a whole lease from now) and sets its start. Otherwise its lease lapsed while earlier pairs
    ran, so another worker may have claimed in the account since: the pair is claimed again as any
    task claims (:func:`_claim`, under the account's lock; :class:`CycleBusy` while another worker holds
    a lease, a finished cycle returned as it is, a lapsed one resumed)."""
    now = timezone.now()
    until = now + timedelta(seconds=settings.CYCLE_LEASE_SECONDS)
    kept = Cycle.objects.filter(
        pk=cycle.pk, status=CycleStatus.RUNNING, attempts=cycle.attempts, lease_until__gt=now
    ).update(lease_until=until, started_at=now)
    if kept:
        cycle.lease_until, cycle.started_at = until, now
        return cycle, True, True
    cycle, run = _claim(
        account=account, instrument=instrument, timeframe=timeframe, bar_open_time=bar_open_time, now=now
    )
    return cycle, run, False


def _release(cycles: list[Cycle]) -> None:
    """End the leases of claimed cycles this task will not run after all (it is stopping on an error), so
    a retry need not wait for them to lapse. Best effort: the error that stops the task is what counts."""
    if not cycles:
        return
    try:
        for cycle in cycles:
            Cycle.objects.filter(pk=cycle.pk, status=CycleStatus.RUNNING, attempts=cycle.attempts).update(
                lease_until=timezone.now()
            )
    except Exception:
        logger.exception("could not release the leases of cycles %s", ", ".join(str(c.pk) for c in cycles))


_FINISHED_FIELDS = (
    "status",
    "error",
    "finished_at",
    "duration_ms",
    "strategy",
    "signal",
    "reason",
    "probability",
    "model_version_id",
    "regime",
    "decisions",
)


def _finish(cycle: Cycle, *, status: str, started: float, error: str = "") -> Cycle:
    cycle.status = status
    cycle.error = error
    cycle.finished_at = timezone.now()
    cycle.duration_ms = round((time.perf_counter() - started) * 1000, 3)
    update_row(cycle, _FINISHED_FIELDS)  # no signals on a cycle row: aether_site.rows
    return cycle


# ----------------------------------------------------------------------------------------------------------
# Inputs of the core
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketInputs:
    """What the cycle reads of one pair at one bar; the same for every account (cached per process)."""

    signal: object  # learning.selectors.Signal
    features: object  # numpy row or None
    atr: Decimal | None
    realised_volatility: Decimal | None


_MARKET_CACHE = BoundedCache(64)


def _market_inputs(instrument: Instrument, timeframe: int, candle: Candle) -> MarketInputs:
    from learning.selectors import market_inputs_for, serving_champion
    from risk.replay import average_true_range
    from trading.matching import log_return_volatility

    bar = candle_bar(candle)
    champion = serving_champion(symbol=instrument.symbol, timeframe=timeframe)
    key = (instrument.pk, timeframe, candle.open_time, candle.updated_at, getattr(champion, "pk", None))
    cached = _MARKET_CACHE.get(key, None)
    if cached is not None:
        return cached
    signal, row = market_inputs_for(instrument=instrument, timeframe=timeframe, as_of=bar.close_time)
    recent = list(
        Candle.objects.filter(
            instrument=instrument, timeframe=timeframe, closed=True, open_time__lte=candle.open_time
        ).order_by("-open_time")[:VOLATILITY_BARS]
    )
    bars = [candle_bar(item) for item in reversed(recent)]
    inputs = MarketInputs(
        signal=signal,
        features=row,
        atr=average_true_range(bars),
        realised_volatility=log_return_volatility([item.close for item in bars]),
    )
    _MARKET_CACHE.put(key, inputs)
    return inputs


def _strategy_for(account: Account):
    from learning.services import thresholds_ensure
    from trading.strategy import ChampionStrategy, ChampionThresholds, DefaultStrategy

    # Read with the account (``ACCOUNT_STATE``); only an account's first cycle takes the lock to create the
    # defaults (audited).
    row = _related(account, "strategy_thresholds")
    if row is None:
        row = thresholds_ensure(actor=CYCLE, account=account)
    return DefaultStrategy(
        champion=ChampionStrategy(ChampionThresholds(entry_probability=float(row.entry_probability)))
    )


def _market_view(inputs: MarketInputs):
    from learning.features import FEATURES
    from learning.regime import label_of
    from trading.strategy import MarketView

    signal = inputs.signal
    features = inputs.features
    regime = signal.regime
    if regime is None and features is not None:
        regime = label_of(features[FEATURES.index("regime")])
    return MarketView(
        features=features,
        regime=regime,
        probability=signal.probability if signal.ok else None,
        model_note=signal.message if not signal.ok else f"champion model #{signal.model_version_id}",
    )


def _holding(position: Position | None):
    from risk.exits import plan_of
    from trading.strategy import FLAT, Holding

    if position is None or position.quantity <= 0:
        return FLAT
    entry = position.trip_buy_notional / position.trip_bought if position.trip_bought > 0 else None
    return Holding(
        quantity=position.quantity,
        average_cost=position.average_cost,
        entry_price=entry,
        exit_plan=plan_of(position) if position.exit_planned_at is not None else None,
    )


def _hedge_target(account: Account, now: datetime) -> Decimal:
    from hedging.selectors import hedge_target_for

    return hedge_target_for(account=account, now=now, policy=_related(account, "hedge_policy"))


#: The account's one-to-one rows the cycle reads with the account (``select_related``).
ACCOUNT_STATE = ("risk_policy", "kill_switch", "hedge_policy", "strategy_thresholds")


def _row_values(row) -> tuple | None:
    """Every stored field of ``row`` (``None`` for no row): two copies of one row compare equal only when
    nothing was saved in between."""
    if row is None:
        return None
    return tuple(getattr(row, field.attname) for field in type(row)._meta.concrete_fields)


def _related(account: Account, name: str):
    """The account's one-to-one row ``name`` (loaded with it: see ``ACCOUNT_STATE``), ``None`` when it has
    none."""
    try:
        return getattr(account, name)
    except ObjectDoesNotExist:
        return None


# ----------------------------------------------------------------------------------------------------------
# The cycle
# ----------------------------------------------------------------------------------------------------------


def _intent_record(intent, result, client_order_id: str, submitted_at: float) -> dict:
    order = result.order
    return {
        "kind": "order",
        "purpose": str(intent.purpose),
        "side": str(intent.side),
        "requested_quantity": str(intent.quantity),
        "reason": intent.reason,
        "verdict": str(result.decision.verdict),
        "codes": [str(code) for code in result.decision.codes],
        "message": result.decision.message,
        "client_order_id": client_order_id,
        "order_id": getattr(order, "pk", None),
        "status": getattr(order, "status", None),
        "filled_quantity": None if order is None else str(order.filled_quantity),
        "decision_to_order_ms": round((time.perf_counter() - submitted_at) * 1000, 3),
    }


def cycle_run(
    *,
    account: Account,
    instrument: Instrument,
    bar_open_time: datetime,
    timeframe: int | None = None,
    actor=CYCLE,
    quotes=None,
    broker_factory=None,
    now: datetime | None = None,
    context: AccountBar | None = None,
) -> Cycle:
    """Run (or return, when already done) the cycle of ``account`` on ``instrument``'s closed bar opened at
    ``bar_open_time``; see the module docstring. Raises :class:`CycleBusy` while another cycle of the account
    runs; any other error marks the cycle ``failed`` (with the error) and is raised. ``context``: what the
    account's cycles on this bar share when they run one after the other."""
    timeframe = settings.AETHER_TIMEFRAME if timeframe is None else timeframe
    cycle, run = _claim(
        account=account,
        instrument=instrument,
        timeframe=timeframe,
        bar_open_time=bar_open_time,
        now=timezone.now(),
    )
    if not run:
        if context is not None:  # finished by another task, which may have moved the book: read afresh
            context.reset()
        return cycle
    return _cycle_execute(
        cycle,
        account=account,
        instrument=instrument,
        bar_open_time=bar_open_time,
        timeframe=timeframe,
        actor=actor,
        quotes=quotes,
        broker_factory=broker_factory,
        now=now,
        context=context,
    )


def _cycle_execute(
    cycle: Cycle,
    *,
    account: Account,
    instrument: Instrument,
    bar_open_time: datetime,
    timeframe: int,
    actor,
    quotes,
    broker_factory,
    now: datetime | None,
    context: AccountBar | None,
) -> Cycle:
    """Run ``cycle``, claimed (running, with its lease) by the caller: steps 2 to 5 of the module
    docstring. Any error marks the cycle ``failed`` (with the error) and is raised."""
    from risk import engine
    from risk.exits import exits_evaluate
    from risk.pretrade import order_submit_checked, risk_state, risk_state_for_pair
    from risk.services import NavUnavailable, nav_snapshot_record
    from trading.cycle_core import decide

    given_now = now
    started = time.perf_counter()
    records: list[dict] = []
    cycle.decisions = records
    try:
        now = given_now or platform_now()
        candle = None if context is None else context.candles.get(instrument.pk)
        if candle is None:
            candle = Candle.objects.filter(
                instrument=instrument, timeframe=timeframe, open_time=bar_open_time, closed=True
            ).first()
        if candle is None:
            raise CycleError(
                f"{instrument.symbol}: no closed {timeframe}m bar opened at {bar_open_time.isoformat()}"
            )
        bar = candle_bar(candle)
        # The mode and switches as they are now, with the account's risk and hedge policies, kill switch
        # and strategy thresholds (one read; what the decision below reads of them; shared with the
        # account's next cycle on this bar until a NAV snapshot may have moved the kill switch).
        if context is not None and context.account is not None:
            account = context.account
        else:
            account = Account.objects.select_related(*ACCOUNT_STATE).get(pk=account.pk)
            if context is not None:
                context.account = account

        # 2. Exits of the open position, by the risk service (one evaluation per bar).
        exit_orders = False
        for outcome in exits_evaluate(
            instrument=instrument, bar=bar, account=account, quotes=quotes, broker_factory=broker_factory
        ):
            exit_orders = exit_orders or (outcome.checked is not None and outcome.checked.order is not None)
            if outcome.signal is not None or outcome.problems:
                order = outcome.checked.order if outcome.checked is not None else None
                records.append(
                    {
                        "kind": "exit",
                        "reason": outcome.signal.message if outcome.signal is not None else "",
                        "order_id": getattr(order, "pk", None),
                        "status": getattr(order, "status", None),
                        "problems": list(outcome.problems),
                    }
                )

        # 3. Decide.
        inputs = _market_inputs(instrument, timeframe, candle)
        market = _market_view(inputs)
        risk_policy, switch = _related(account, "risk_policy"), _related(account, "kill_switch")
        policy = engine.RiskPolicy() if risk_policy is None else risk_policy.to_engine()  # engine_policy_for
        switch_state = engine.SwitchState() if switch is None else switch.to_engine()  # as switch_state_for
        state = None
        if (
            context is not None
            and context.state is not None
            and not exit_orders
            and instrument.symbol not in context.state.positions
        ):
            # The book has not moved since the account's previous cycle on this bar read it, and the pair
            # holds no position whose exit plan the exits above may just have moved.
            state = risk_state_for_pair(
                context.state,
                account=account,
                instrument=instrument,
                now=now,
                quotes=quotes,
                switch=switch_state,
            )
        if state is None:
            state = risk_state(
                account=account,
                instrument=instrument,
                now=now,
                quotes=quotes,
                policy=policy,
                switch=switch_state,
                account_is_current=True,
            )
        if context is not None:
            context.state = state
        snapshot = state.snapshot
        position = state.positions.get(instrument.symbol)
        unresolved = state.unresolved_orders
        if unresolved:
            # Orders Kraken may or may not hold: no new exposure until reconciliation resolves them.
            snapshot = replace(snapshot, trading_enabled=False)
        hedge_target = _hedge_target(account, now)
        from trading.cycle_core import BarView

        decision = decide(
            policy=policy,
            pair=pair_rules_for(instrument),
            snapshot=snapshot,
            bar=BarView(
                symbol=instrument.symbol,
                open_time=bar.open_time,
                close_time=bar.close_time,
                high=bar.high,
                low=bar.low,
                close=bar.close,
                atr=inputs.atr,
                realised_volatility=inputs.realised_volatility,
            ),
            holding=_holding(position),
            market=market,
            strategy=_strategy_for(account),
            hedge_target=hedge_target,
            max_bar_age=timedelta(minutes=timeframe),
            evaluate_exits=False,
        )
        signal = inputs.signal
        cycle.strategy = decision.strategy
        cycle.signal = str(decision.signal.action) if decision.signal is not None else ""
        cycle.reason = decision.skip_reason or (decision.signal.reason if decision.signal else "")
        if unresolved and decision.skip is not None:
            cycle.reason = (
                f"{unresolved} order(s) of unknown outcome (UNKNOWN): no new entries until reconciliation "
                f"resolves them. {cycle.reason}"
            )
        cycle.probability = signal.probability
        cycle.model_version_id = signal.model_version_id
        cycle.regime = market.regime or ""
        records.append(
            {
                "kind": "decision",
                "notes": list(decision.notes),
                "skip": str(decision.skip) if decision.skip else None,
                "hedge_target": str(hedge_target),
                "buying_power": None if decision.buying_power is None else str(decision.buying_power),
                "rejected": None if decision.rejected is None else decision.rejected.message,
                "model": market.model_note,
            }
        )

        # 4. Orders, each checked again on fresh state and committed before any network call. A cycle
        # resumed after a dead worker that had already placed orders places none: it decided again on a
        # changed book, and its ids (cy<pk>-<n>) are taken by what the first attempt sent.
        already = (
            list(
                Order.objects.filter(account=account, client_order_id__startswith=f"cy{cycle.pk}-")
                .order_by("client_order_id")
                .values("pk", "client_order_id", "side", "status")
            )
            if cycle.attempts > 1
            else []
        )
        if already and decision.intents:
            records.append(
                {
                    "kind": "resumed",
                    "summary": (
                        f"an earlier attempt of this cycle placed {len(already)} order(s); the "
                        f"{len(decision.intents)} intent(s) decided now are not sent"
                    ),
                    "orders": [{**item, "order_id": item.pop("pk")} for item in already],
                }
            )
        for index, intent in enumerate(() if already else decision.intents):
            client_order_id = f"cy{cycle.pk}-{index}"
            submitted_at = time.perf_counter()
            result = order_submit_checked(
                account=account,
                actor=actor,
                instrument=instrument,
                side=Side(intent.side),
                order_type=OrderType.MARKET,
                quantity=intent.quantity,
                client_order_id=client_order_id,
                reason=f"cycle #{cycle.pk}: {intent.reason}",
                expected_edge_pct=intent.expected_edge_pct,
                quotes=quotes,
                broker_factory=broker_factory,
                now=now,
            )
            records.append(_intent_record(intent, result, client_order_id, submitted_at))

        # 5. Hedge and NAV snapshot (which feeds the kill switch): each once per account and bar, and again
        # after a cycle that placed an order; see _done_on_this_bar.
        traded = exit_orders or _placed(records)
        if context is not None and traded:
            context.state = None  # the book moved: the next cycle reads it again
        if traded:
            hedged_by, nav_by = None, None
        elif context is not None and context.looked_back:
            hedged_by, nav_by = context.hedged_by, context.nav_by
        else:
            hedged_by, nav_by = _done_on_this_bar(cycle)
        if hedged_by is None:
            hedge_records, evaluated_policy = _hedge(
                account=account, actor=actor, now=now, quotes=quotes, broker_factory=broker_factory
            )
            records.extend(hedge_records)
            if context is not None:
                # A hedge policy other than the one read with the account (the evaluation created it or
                # ended a lapsed override, or a director changed it since): the next cycle reads the
                # account again; a rebalance that sold moved the book.
                if evaluated_policy is not None and _row_values(evaluated_policy) != _row_values(
                    _related(account, "hedge_policy")
                ):
                    context.account = None
                if any(item.get("order_ids") for item in hedge_records):
                    context.state = None
        else:
            records.append(
                {
                    "kind": "hedge",
                    "summary": f"evaluated on this bar by cycle #{hedged_by}; this cycle placed no order",
                    "evaluated_by": hedged_by,
                }
            )
        if nav_by is not None:
            records.append(
                {
                    "kind": "nav",
                    "summary": f"recorded on this bar by cycle #{nav_by}; this cycle placed no order",
                    "recorded_by": nav_by,
                }
            )
        else:
            # The snapshot reads the clock under its own lock (unless a caller fixed it): one queued by a
            # fill meanwhile must not make this one "older than the last".
            try:
                nav = nav_snapshot_record(
                    account=account, actor=actor, reason="cycle", now=given_now, quotes=quotes
                )
            except NavUnavailable as exc:  # e.g. a held pair without a fresh price: reported, not failed
                records.append({"kind": "nav", "problem": str(exc)})
            else:
                records.append(
                    {
                        "kind": "nav",
                        "equity": str(nav.equity),
                        "drawdown_pct": str(nav.drawdown_pct),
                        "kill_switch": nav.kill_switch_status,
                    }
                )
            if context is not None and _switch_moved(account, records):
                # The snapshot fed the kill switch and it is (or went) tripped: enforcement may cancel
                # orders and flatten positions. The next cycle reads the account and the book afresh.
                context.account = context.state = None
        if context is not None:
            context.looked_back = True
            context.hedged_by = _done_by(
                cycle.pk, records, kind="hedge", done="summary", relied="evaluated_by"
            )
            context.nav_by = _done_by(cycle.pk, records, kind="nav", done="equity", relied="recorded_by")
    except Exception as exc:
        _finish(cycle, status=CycleStatus.FAILED, started=started, error=f"{type(exc).__name__}: {exc}")
        raise
    status = CycleStatus.SKIPPED if decision.skip is not None and not _placed(records) else CycleStatus.DONE
    return _finish(cycle, status=status, started=started)


def account_cycles_run(
    *,
    account: Account,
    bar_open_time: datetime,
    timeframe: int | None = None,
    actor=CYCLE,
    quotes=None,
    broker_factory=None,
    now: datetime | None = None,
) -> list[Cycle]:
    """The account's cycle on every traded pair whose bar opened at ``bar_open_time`` is stored closed, one
    pair after the other (in symbol order), sharing what the cycles of one account on one bar have in
    common (:class:`AccountBar`: the account, the risk state until an order moves the book, the hedge and
    NAV done once). The pairs are claimed together, in one transaction (:func:`_claim_pairs`), and each
    later pair renews its lease when its turn comes (:func:`_take_turn`); cycles already finished are
    returned as they are (all of them: whatever else of the account runs). A pair's failure is logged,
    the other pairs still run, and the first failure is raised at the end (a retry runs only what did not
    finish). :class:`CycleBusy` (another worker holds a lease of the account) is raised by the claim
    before any pair runs, or by a pair whose lease lapsed and that could not be claimed again; the pairs
    not started are released and a retry claims again. What the feed's ``trading.bar_closed`` queues,
    one task per account."""
    timeframe = settings.AETHER_TIMEFRAME if timeframe is None else timeframe
    traded = {instrument.pk: instrument for instrument in configured_instruments()}
    candles = list(
        Candle.objects.filter(
            instrument_id__in=traded, timeframe=timeframe, open_time=bar_open_time, closed=True
        )
    )
    context = AccountBar(candles={candle.instrument_id: candle for candle in candles})
    instruments = sorted((traded[candle.instrument_id] for candle in candles), key=lambda i: i.symbol)
    if not instruments:
        return []
    # One claim for all the pairs (CycleBusy, raised here, claims none); a pair another task finished
    # before it is returned as it is, and the pairs claimed run one after the other.
    claimed = _claim_pairs(
        account=account,
        instruments=instruments,
        timeframe=timeframe,
        bar_open_time=bar_open_time,
        now=timezone.now(),
    )
    if all(run for _, run in claimed):
        # No cycle of the account on this bar had finished (only a pair with the bar stored can have one,
        # and those are all claimed here), and none can finish while these leases are live: no earlier
        # cycle left the hedge evaluated or the NAV recorded, with no need to look.
        context.looked_back = True
    cycles: list[Cycle] = []
    failure: Exception | None = None
    pending = [cycle for cycle, run in claimed if run]  # claimed, their turn not come yet
    turns = 0
    try:
        for instrument, (cycle, run) in zip(instruments, claimed, strict=True):
            if not run:
                cycles.append(cycle)
                continue
            pending.remove(cycle)
            if turns:  # the first pair was claimed just now; a later one renews its lease first
                cycle, run, kept = _take_turn(
                    cycle,
                    account=account,
                    instrument=instrument,
                    timeframe=timeframe,
                    bar_open_time=bar_open_time,
                )
                if not kept:
                    logger.warning(
                        "%s %s: cycle #%s's lease lapsed while earlier pairs ran; claimed again (%s)",
                        account.slug,
                        instrument.symbol,
                        cycle.pk,
                        "to run" if run else "finished by another worker",
                    )
                    context.reset()  # other workers may have run in this account meanwhile: read afresh
                if not run:
                    cycles.append(cycle)
                    continue
            turns += 1
            try:
                cycles.append(
                    _cycle_execute(
                        cycle,
                        account=account,
                        instrument=instrument,
                        bar_open_time=bar_open_time,
                        timeframe=timeframe,
                        actor=actor,
                        quotes=quotes,
                        broker_factory=broker_factory,
                        now=now,
                        context=context,
                    )
                )
            except Exception as exc:  # recorded on the cycle by _cycle_execute; the other pairs still run
                logger.exception("%s %s: cycle failed", account.slug, instrument.symbol)
                failure = failure or exc
                context.reset()  # what the failed cycle left in it is not trusted: the next pair reads afresh
    except BaseException:  # e.g. CycleBusy on a pair claimed again, a database error: stop, and let the
        _release(pending)  # pairs not started go now rather than when their leases lapse
        raise
    if failure is not None:
        raise failure
    return cycles


def _switch_moved(account: Account, records: list[dict]) -> bool:
    """Did this cycle's NAV snapshot leave the kill switch anything but armed as it was read (a trip, a
    re-arm, or enforcement of a latched switch)? Unknown (no snapshot recorded) counts as moved."""
    nav = next((item for item in records if item.get("kind") == "nav"), None)
    switch = _related(account, "kill_switch")
    before = "armed" if switch is None else switch.status
    return nav is None or "equity" not in nav or nav.get("kill_switch") != "armed" or before != "armed"


def pairs_wait_seconds() -> float:
    """How long a closed bar's fan-out waits for the other traded pairs' bars of the same open time:
    ``CYCLE_PAIRS_WAIT_SECONDS``, and in a replay at most half a replayed bar (a longer wait would make
    the bar stale before its cycles run)."""
    wait = float(settings.CYCLE_PAIRS_WAIT_SECONDS)
    if settings.AETHER_MARKET_DATA == "replay":
        wait = min(wait, float(settings.EMBEDDED_SECONDS_PER_BAR) / 2)
    return wait


def configured_instruments() -> list[Instrument]:
    """The instruments of ``AETHER_PAIRS`` that the universe holds, whatever their status: a pair Kraken
    has put in cancel-only or delisted still needs its exits watched (the risk checks refuse new entries
    on it). A configured pair missing from the universe is logged, never allowed to stop the others."""
    symbols = list(settings.AETHER_PAIRS)
    found = list(Instrument.objects.filter(symbol__in=symbols))
    missing = sorted(set(symbols) - {instrument.symbol for instrument in found})
    if missing:
        logger.error("AETHER_PAIRS: %s not in the synced universe; no cycles for them", ", ".join(missing))
    return found


def _placed(records: list[dict]) -> bool:
    """Did the cycle's decisions place an order (i.e. may the book have changed)?"""
    return any(item.get("order_id") for item in records if item.get("kind") in ("order", "exit"))


def _done_on_this_bar(cycle: Cycle) -> tuple[int | None, int | None]:
    """(the cycle that leaves the hedge evaluated, the cycle that leaves the NAV recorded) on this cycle's
    account and bar since the book last changed; ``None`` where this cycle must do it.

    The hedge is evaluated and the NAV snapshot recorded once per account and bar, and again by every cycle
    that placed an order: a cycle that placed none changed nothing the hedge reads (the book; the bar's
    closed candles are the same), so it relies on the account's previous finished cycle of the bar when
    that one did the work or itself relied on an earlier one (a hedge or NAV record with a problem, or
    none, does not count). Cycles of one account never overlap, so "previous" is by finishing time. What
    else moves the book between two cycles of one bar (a director's order, a resting order filled) is seen
    by the next bar's first cycle, as it was between bars before; every fill also queues its own NAV
    snapshot (``risk.nav_snapshot``), and beat records one every ``NAV_SNAPSHOT_EVERY_SECONDS``, so the
    kill switch sees the equity between bars as well."""
    previous = (
        Cycle.objects.filter(
            account_id=cycle.account_id,
            instrument__symbol__in=settings.AETHER_PAIRS,  # the unique key's index, pair by pair
            timeframe=cycle.timeframe,
            bar_open_time=cycle.bar_open_time,
            status__in=(CycleStatus.DONE, CycleStatus.SKIPPED),
        )
        .exclude(pk=cycle.pk)
        .order_by("-finished_at", "-pk")
        .values_list("pk", "decisions")
        .first()
    )
    if previous is None:
        return None, None
    pk, decisions = previous
    return (
        _done_by(pk, decisions, kind="hedge", done="summary", relied="evaluated_by"),
        _done_by(pk, decisions, kind="nav", done="equity", relied="recorded_by"),
    )


def _done_by(pk: int, decisions, *, kind: str, done: str, relied: str) -> int | None:
    """The cycle that did ``kind``'s work according to cycle ``pk``'s ``decisions``: ``pk`` itself when its
    record shows the work done (``done`` present, no problem), the cycle it relied on (``relied``), or
    ``None``."""
    record = next((item for item in decisions or () if item.get("kind") == kind), None)
    if record is None or record.get("problem"):
        return None
    if record.get(relied):
        return record[relied]
    return pk if done in record else None


def _hedge(*, account: Account, actor, now: datetime, quotes, broker_factory) -> tuple[list[dict], object]:
    """(the cycle's records of the hedge's evaluation, the hedge policy as the evaluation left it). One that
    cannot be made (no price, no volatility, a policy problem) wrote nothing: it is recorded as a problem
    on the cycle and logged, and the NAV snapshot after it still runs (no policy is returned)."""
    from hedging.services import HedgeUnavailable, hedge_evaluate

    try:
        outcome = hedge_evaluate(
            account=account, actor=actor, now=now, quotes=quotes, broker_factory=broker_factory
        )
    except HedgeUnavailable as exc:
        logger.error("%s: hedge not evaluated: %s", account.slug, exc)
        return [{"kind": "hedge", "problem": str(exc)}], None
    record = {"kind": "hedge", "summary": outcome.summary()}
    placed = [item.order_id for item in outcome.outcomes if item.order_id is not None]
    if placed:
        record["order_ids"] = placed
    return [record], outcome.policy


# ----------------------------------------------------------------------------------------------------------
# Which cycles are due
# ----------------------------------------------------------------------------------------------------------


def cycles_due(*, timeframe: int | None = None) -> list[tuple[int, int, datetime]]:
    """(account id, instrument id, bar open time) of every traded pair's newest closed bar that an account
    has no finished cycle for: what beat's sweep queues (the feed queues cycles as bars close; the sweep
    catches what a restart or a lost message missed). Older bars are not caught up: a cycle decides on the
    newest bar only."""
    timeframe = settings.AETHER_TIMEFRAME if timeframe is None else timeframe
    due = []
    accounts = list(Account.objects.order_by("pk").values_list("pk", flat=True))
    for instrument in configured_instruments():
        newest = (
            Candle.objects.filter(instrument=instrument, timeframe=timeframe, closed=True)
            .order_by("-open_time")
            .values_list("open_time", flat=True)
            .first()
        )
        if newest is None:
            continue
        finished = set(
            Cycle.objects.filter(
                instrument=instrument,
                timeframe=timeframe,
                bar_open_time=newest,
                status__in=[CycleStatus.DONE, CycleStatus.SKIPPED],
            ).values_list("account_id", flat=True)
        )
        due.extend(
            (account_id, instrument.pk, newest) for account_id in accounts if account_id not in finished
        )
    return due
