"""One strategy cycle's decision for one account, one pair, one closed bar. Plain Python, no Django.

:func:`decide` is the whole decision; the live shell (the Celery cycle task) and the backtest
(``trading/backtest.py``) both call it and carry out what it returns. It takes the account's risk
:class:`~risk.engine.Snapshot` (what the pre-trade check knows), the pair's position, the bar, the
strategy's inputs and the hedge target, and returns an immutable :class:`CycleDecision`:

1. **stale**: a bar that closed more than ``max_bar_age`` before ``snapshot.now`` decides nothing
   (``skip.code == "stale"``; no intent, the plan untouched).
2. **exits of an open position** (before anything else: they reduce risk, so a halt, a latched kill switch
   or the entry gates never stop them):

   * a position without a plan gets one (:func:`risk.engine.plan_exits` from its entry price, the bar's ATR);
   * else :func:`risk.engine.evaluate_bar` on the bar's low and high: a stop-loss, trailing stop or
     take-profit signal → a market sell of the whole position; otherwise the trailing stop ratchets
     (``exit_plan`` is the new plan, ``plan_changed``);
   * a latched kill switch with ``flatten_on_breach`` → a market sell ("flatten");
   * the strategy's ``EXIT`` → a market sell.

   Every sell passes :func:`risk.engine.check_order` (cut to what is held and free).
3. **entries**, only when flat: not when halted, latched or trading is disabled (``skip`` says which; the
   strategy still runs and its signal is recorded). On the strategy's ``ENTER``:

   * **hedge cap**: buying power ``B = min(available_usd, equity x (1 - hedge_target) - sum(exposures))``
     (:func:`hedging.policy.strategy_budget`; ``hedge_target`` the fraction of equity the hedge keeps in USD,
     0..1), so the account's exposure never exceeds its unhedged share;
   * **sizing**: :func:`risk.engine.size_entry` (risk per trade over the stop distance, pair and volatility
     caps, ``B``);
   * **check**: :func:`risk.engine.check_order` with the strategy's expected edge; a reject is recorded
     with its reasons and no intent, a resize sends the resized quantity.

``snapshot`` may be a :class:`DeferredSnapshot`: the few fields every cycle reads (the clock, the switch,
whether trading is enabled, fees and slippage) and a builder of the whole :class:`~risk.engine.Snapshot`,
called once, only when the cycle sizes or checks an order (the backtest: most bars check nothing). The
decision is the same as with the built snapshot.

Intents are market orders priced by the snapshot's quote of the pair; the shell submits them through
``risk.pretrade.order_submit_checked`` (live: the check runs again on the database snapshot) or the matching
core (backtest). After an entry fills the shell plans its exits from the fill price
(:func:`plan_for_entry`, the same as ``risk.exits.exits_plan``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from hedging.policy import strategy_budget
from risk.engine.checks import Decision, OrderIntent, Snapshot, Verdict, check_order
from risk.engine.exits import ExitPlan, ExitReason, ExitSignal, evaluate_bar, plan_exits
from risk.engine.killswitch import Status, SwitchState
from risk.engine.policy import HUNDRED, RiskPolicy
from risk.engine.reasons import RiskInputError, is_number
from risk.engine.sizing import Size, size_entry
from trading.brokers.base import PairRules, Side
from trading.fees import FeeRates
from trading.matching import plain
from trading.strategy import Action, Holding, MarketView, Signal, Strategy

ZERO = Decimal(0)
ONE = Decimal(1)


class Skip(StrEnum):
    """Why (part of) a cycle did nothing. ``STALE``: the whole cycle; the others: new entries only."""

    STALE = "stale"
    HALTED = "halted"
    KILL_SWITCH_LATCHED = "kill_switch_latched"
    TRADING_DISABLED = "trading_disabled"


class Purpose(StrEnum):
    ENTRY = "entry"
    STOP_LOSS = "stop_loss"
    TRAILING_STOP = "trailing_stop"
    TAKE_PROFIT = "take_profit"
    STRATEGY_EXIT = "strategy_exit"
    FLATTEN = "flatten"


@dataclass(frozen=True, slots=True)
class BarView:
    """The closed bar of the cycle (prices as ``Decimal``) and the pair's volatility at it: ``atr`` (mean
    true range of the last bars, price units) and/or ``realised_volatility`` (stdev of bar log returns)."""

    symbol: str
    open_time: datetime
    close_time: datetime
    high: Decimal
    low: Decimal
    close: Decimal
    atr: Decimal | None = None
    realised_volatility: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Intent:
    """An order the cycle wants sent: always a market order of ``quantity`` (already checked: ``check``)."""

    symbol: str
    side: Side
    quantity: Decimal
    purpose: Purpose
    reason: str
    check: Decision
    expected_edge_pct: Decimal | None = None
    trigger_price: Decimal | None = None  # the exit level that fired (exits from the plan)


@dataclass(frozen=True, slots=True, init=False)
class CycleDecision:
    """What one cycle decided. ``notes``: every reason, in order, as sentences for the cycle's record.

    Built once per pair and bar, so its ``__init__`` is written out: the one ``dataclass`` would generate
    (same parameters and defaults, ``tests/trading/test_cycle_core.py`` compares them), setting the frozen
    slots through their descriptors instead of ``object.__setattr__`` by name (half the cost)."""

    symbol: str
    bar_open_time: datetime
    strategy: str = ""  # the strategy that ran ("" when the cycle was skipped before it)
    signal: Signal | None = None
    intents: tuple[Intent, ...] = ()
    skip: Skip | None = None
    skip_reason: str = ""
    exit_plan: ExitPlan | None = None  # the position's plan after this bar (None: flat, or none yet)
    plan_changed: bool = False  # exit_plan differs from the holding's (planned, ratcheted or cleared)
    exit_signal: ExitSignal | None = None
    size: Size | None = None  # the entry's sizing, when one was sized
    rejected: Decision | None = None  # the entry's check when it was rejected
    buying_power: Decimal | None = None  # the hedge-capped buying power, when an entry was sized
    notes: tuple[str, ...] = ()

    def __init__(
        self,
        symbol: str,
        bar_open_time: datetime,
        strategy: str = "",
        signal: Signal | None = None,
        intents: tuple[Intent, ...] = (),
        skip: Skip | None = None,
        skip_reason: str = "",
        exit_plan: ExitPlan | None = None,
        plan_changed: bool = False,
        exit_signal: ExitSignal | None = None,
        size: Size | None = None,
        rejected: Decision | None = None,
        buying_power: Decimal | None = None,
        notes: tuple[str, ...] = (),
    ) -> None:
        s0, s1, s2, s3, s4, s5, s6, s7, s8, s9, s10, s11, s12, s13 = _DECISION_SLOTS
        s0(self, symbol)
        s1(self, bar_open_time)
        s2(self, strategy)
        s3(self, signal)
        s4(self, intents)
        s5(self, skip)
        s6(self, skip_reason)
        s7(self, exit_plan)
        s8(self, plan_changed)
        s9(self, exit_signal)
        s10(self, size)
        s11(self, rejected)
        s12(self, buying_power)
        s13(self, notes)

    @property
    def entry(self) -> Intent | None:
        return next((i for i in self.intents if i.purpose == Purpose.ENTRY), None)

    @property
    def exit(self) -> Intent | None:
        return next((i for i in self.intents if i.side == Side.SELL), None)


#: The setters of ``CycleDecision``'s slots, in field order (its ``__init__`` unpacks them).
_DECISION_SLOTS = tuple(CycleDecision.__dict__[f.name].__set__ for f in fields(CycleDecision))


class DeferredSnapshot:
    """A :class:`~risk.engine.Snapshot` built only when an order is sized or checked. ``now``, ``switch``,
    ``trading_enabled``, ``fees`` and ``slippage_pct`` are what every cycle reads; ``build()`` returns the
    whole snapshot (the same values in those fields: checked, a mismatch raises), called at most once.
    ``args``: what ``build`` is called with (``build(*args)``: no closure or ``partial`` per cycle)."""

    __slots__ = ("_args", "_build", "_built", "fees", "now", "slippage_pct", "switch", "trading_enabled")

    def __init__(
        self,
        *,
        now: datetime,
        switch: SwitchState,
        trading_enabled: bool,
        fees: FeeRates,
        slippage_pct: Decimal,
        build: Callable[..., Snapshot],
        args: tuple = (),
    ) -> None:
        self.now, self.switch, self.trading_enabled = now, switch, trading_enabled
        self.fees, self.slippage_pct = fees, slippage_pct
        self._build, self._args, self._built = build, args, None

    def full(self) -> Snapshot:
        built = self._built
        if built is None:
            built = self._build(*self._args)
            if (built.now, built.switch, built.trading_enabled, built.fees, built.slippage_pct) != (
                self.now, self.switch, self.trading_enabled, self.fees, self.slippage_pct,
            ):  # fmt: skip
                raise ValueError("the deferred snapshot's builder disagrees with its own fields")
            self._built = built
        return built


def _full(snapshot: Snapshot | DeferredSnapshot) -> Snapshot:
    return snapshot.full() if type(snapshot) is DeferredSnapshot else snapshot


def plan_for_entry(
    *,
    policy: RiskPolicy,
    pair: PairRules,
    entry_price: Decimal,
    fees: FeeRates,
    slippage_pct: Decimal,
    atr: Decimal | None,
    realised_volatility: Decimal | None = None,
) -> ExitPlan:
    """The exits of a new position (``risk.engine.plan_exits``); raises ``RiskInputError`` when none can be
    planned."""
    return plan_exits(
        policy=policy,
        pair=pair,
        entry_price=entry_price,
        fees=fees,
        slippage_pct=slippage_pct,
        atr=atr,
        realised_volatility=realised_volatility,
    )


def hedge_buying_power(*, snapshot: Snapshot, hedge_target: Decimal) -> Decimal:
    """``min(available_usd, strategy_budget)`` with :func:`hedging.policy.strategy_budget`:
    ``max(0, equity x (1 - hedge_target) - sum(exposures))``. Unknown equity or balance: 0 (the check then
    refuses the entry with its own reason)."""
    equity, available = snapshot.equity, snapshot.available_usd
    if not (is_number(equity) and is_number(available)):
        return ZERO
    exposure = sum(snapshot.exposures.values(), ZERO)
    budget = strategy_budget(equity=equity, target=hedge_target, exposure=exposure)
    return max(ZERO, min(available, budget))


def _gate_reason(code: Skip, snapshot: Snapshot | DeferredSnapshot) -> str:
    if code == Skip.HALTED:
        return f"halted by a director ({snapshot.switch.halt_reason}): no new entries"
    if code == Skip.KILL_SWITCH_LATCHED:
        return f"kill switch latched ({snapshot.switch.reason}): no new entries"
    return "trading is disabled for this account: no new entries"


def _sell(
    *,
    policy: RiskPolicy,
    snapshot: Snapshot | DeferredSnapshot,
    symbol: str,
    quantity: Decimal,
    purpose: Purpose,
    reason: str,
    trigger: Decimal | None = None,
) -> tuple[Intent | None, str]:
    check = check_order(
        policy=policy,
        snapshot=_full(snapshot),
        intent=OrderIntent(symbol=symbol, side=Side.SELL, quantity=quantity),
    )
    if check.verdict == Verdict.REJECT:
        return None, f"{purpose} not sent: {check.message}"
    intent = Intent(symbol, Side.SELL, check.quantity, purpose, reason, check, trigger_price=trigger)
    return intent, f"{purpose}: sell {plain(check.quantity)} {symbol}: {reason}"


_EXIT_PURPOSE = {
    ExitReason.STOP_LOSS: Purpose.STOP_LOSS,
    ExitReason.TRAILING_STOP: Purpose.TRAILING_STOP,
    ExitReason.TAKE_PROFIT: Purpose.TAKE_PROFIT,
}


def decide(
    *,
    policy: RiskPolicy,
    pair: PairRules,
    snapshot: Snapshot | DeferredSnapshot,
    bar: BarView,
    holding: Holding,
    market: MarketView,
    strategy: Strategy,
    hedge_target: Decimal,
    max_bar_age: timedelta,
    evaluate_exits: bool = True,
) -> CycleDecision:
    """The cycle's decision for ``pair`` at the close of ``bar`` (the steps are in the module docstring).
    ``snapshot.now`` is the cycle's clock; ``hedge_target`` a fraction in [0, 1]. Never raises for market
    data: unusable inputs become reasons.

    ``evaluate_exits=False``: the caller has already watched the position's exits on this bar (the live
    shell does, through ``risk.exits.exits_evaluate``, which also moves the resting stop on Kraken, and the
    kill switch's sweep flattens): no plan, stop, take-profit, trailing or flatten here, only the strategy's
    own exit. One evaluation per bar, never two (a ratchet must not be counted twice)."""
    symbol = pair.symbol
    if snapshot.now - bar.close_time > max_bar_age:
        reason = (
            f"the last closed {symbol} bar closed at {bar.close_time.isoformat()}, more than {max_bar_age} "
            f"before {snapshot.now.isoformat()}: stale, nothing decided"
        )
        return CycleDecision(
            symbol, bar.open_time, skip=Skip.STALE, skip_reason=reason, exit_plan=holding.exit_plan,
            notes=(reason,),
        )  # fmt: skip
    if not (ZERO <= hedge_target <= ONE):
        raise ValueError(f"hedge target {hedge_target} is not a fraction between 0 and 1")

    plan = holding.exit_plan
    signal = strategy.signal(market=market, holding=holding, policy=policy)
    said = f"{signal.strategy}: {signal.action}: {signal.reason}"
    is_open = holding.is_open
    if not is_open and (plan is None or not evaluate_exits) and signal.action != Action.ENTER:
        switch = snapshot.switch
        if not switch.halted and switch.status != Status.TRIPPED and snapshot.trading_enabled:
            # Most bars: flat, no plan to clear, entries open and no entry signal: the signal is the record
            # (the same decision as the full path below gives).
            return CycleDecision(
                symbol, bar.open_time, signal.strategy, signal, (), None, "", plan, False, None, None, None,
                None, (said,),
            )  # fmt: skip

    notes = [said]
    intents: list[Intent] = []
    plan_changed = False
    exit_signal = None
    fees, slippage = snapshot.fees, snapshot.slippage_pct

    # --- exits of the open position -------------------------------------------------------------------
    if is_open:
        if not evaluate_exits:
            pass
        elif plan is None:
            entry = holding.entry_price or holding.average_cost
            try:
                plan = plan_for_entry(
                    policy=policy, pair=pair, entry_price=entry, fees=fees, slippage_pct=slippage,
                    atr=bar.atr, realised_volatility=bar.realised_volatility,
                )  # fmt: skip
                plan_changed = True
                notes.append(f"exits planned for the open position from {plain(entry)}")
            except RiskInputError as exc:
                notes.append(f"exits not planned: {exc}")
        else:
            evaluation = evaluate_bar(plan, low=bar.low, high=bar.high)
            exit_signal = evaluation.signal
            if exit_signal is None and evaluation.plan is not plan:
                plan_changed = evaluation.plan != plan
                plan = evaluation.plan
        sell_reason = None
        if exit_signal is not None:
            purpose, sell_reason = _EXIT_PURPOSE[exit_signal.reason], exit_signal.message
        elif evaluate_exits and snapshot.switch.status == Status.TRIPPED and policy.flatten_on_breach:
            purpose, sell_reason = Purpose.FLATTEN, f"kill switch latched: {snapshot.switch.reason}"
        elif signal.action == Action.EXIT:
            purpose, sell_reason = Purpose.STRATEGY_EXIT, signal.reason
        if sell_reason is not None:
            intent, note = _sell(
                policy=policy, snapshot=snapshot, symbol=symbol, quantity=holding.quantity,
                purpose=purpose, reason=sell_reason,
                trigger=exit_signal.trigger_price if exit_signal is not None else None,
            )  # fmt: skip
            notes.append(note)
            if intent is not None:
                intents.append(intent)
        return CycleDecision(
            symbol, bar.open_time, signal.strategy, signal, tuple(intents), exit_plan=plan,
            plan_changed=plan_changed, exit_signal=exit_signal, notes=tuple(notes),
        )  # fmt: skip
    if plan is not None and evaluate_exits:  # flat with a stale plan: clear it
        plan, plan_changed = None, True
        notes.append("the position is flat: its exit plan is cleared")

    # --- entries (gates: a director's halt, then a latched kill switch, then trading disabled) ------------
    switch = snapshot.switch
    code = (
        Skip.HALTED
        if switch.halted
        else Skip.KILL_SWITCH_LATCHED
        if switch.status == Status.TRIPPED
        else Skip.TRADING_DISABLED
        if not snapshot.trading_enabled
        else None
    )
    if code is not None:
        reason = _gate_reason(code, snapshot)
        notes.append(reason)
        return CycleDecision(
            symbol, bar.open_time, signal.strategy, signal, skip=code, skip_reason=reason, exit_plan=plan,
            plan_changed=plan_changed, notes=tuple(notes),
        )  # fmt: skip
    if signal.action != Action.ENTER:
        return CycleDecision(
            symbol, bar.open_time, signal.strategy, signal, exit_plan=plan, plan_changed=plan_changed,
            notes=tuple(notes),
        )  # fmt: skip

    snapshot = _full(snapshot)
    quote = snapshot.prices.get(symbol)
    price = quote.price if quote is not None and is_number(quote.price) and quote.price > 0 else bar.close
    buying_power = hedge_buying_power(snapshot=snapshot, hedge_target=hedge_target)
    size = size_entry(
        policy=policy, pair=pair, equity=snapshot.equity, price=price, fees=fees, atr=bar.atr,
        realised_volatility=bar.realised_volatility, buying_power=buying_power,
    )  # fmt: skip
    if hedge_target > 0:
        notes.append(
            f"hedge keeps {plain(hedge_target * HUNDRED)} % of equity in USD: "
            f"buying power {plain(buying_power)} USD"
        )
    if not size.tradable:
        why = "; ".join(finding.message for finding in size.reasons) or "nothing to buy"
        notes.append(f"entry not sized: {why}")
        return CycleDecision(
            symbol, bar.open_time, signal.strategy, signal, exit_plan=plan, plan_changed=plan_changed,
            size=size, buying_power=buying_power, notes=tuple(notes),
        )  # fmt: skip
    intent = OrderIntent(
        symbol=symbol, side=Side.BUY, quantity=size.quantity, expected_edge_pct=signal.expected_edge_pct
    )
    check = check_order(policy=policy, snapshot=snapshot, intent=intent)
    if check.verdict == Verdict.REJECT:
        notes.append(check.message)
        return CycleDecision(
            symbol, bar.open_time, signal.strategy, signal, exit_plan=plan, plan_changed=plan_changed,
            size=size, rejected=check, buying_power=buying_power, notes=tuple(notes),
        )  # fmt: skip
    notes.append(f"entry: buy {plain(check.quantity)} {symbol} (sized by {size.limited_by}); {check.message}")
    entry = Intent(
        symbol, Side.BUY, check.quantity, Purpose.ENTRY, signal.reason, check,
        expected_edge_pct=signal.expected_edge_pct,
    )  # fmt: skip
    return CycleDecision(
        symbol, bar.open_time, signal.strategy, signal, (entry,), exit_plan=plan, plan_changed=plan_changed,
        size=size, buying_power=buying_power, notes=tuple(notes),
    )  # fmt: skip
