"""The daily drawdown kill switch and the directors' manual halt, as pure state transitions.

States: ``ARMED`` (entries allowed) and ``TRIPPED`` (latched: no entries). Independently a director may
``halt`` (no entries) and ``resume``. Every transition returns the new :class:`SwitchState` and the
:class:`Action` list the shell must carry out (and audit) in order:

* ``on_equity``: when ``DayEquity.drawdown_pct >= max_daily_drawdown_pct`` an armed switch trips →
  ``BLOCK_ENTRIES``, ``CANCEL_ENTRY_ORDERS``, ``FLATTEN`` (if ``flatten_on_breach``), ``ALERT``.
* ``on_day_change``: at a new UTC day a tripped switch becomes re-armable; with
  ``auto_rearm_at_day_change`` it re-arms itself (``REARMED``).
* ``rearm``: a director re-arms a tripped switch, refused on the UTC day it tripped.
* ``halt`` / ``resume``: manual; ``resume`` never re-arms a tripped switch.

Exits are never blocked by this module: :func:`entries_allowed` is about new exposure only.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import date, datetime
from decimal import Decimal
from enum import StrEnum

from risk.engine.nav import DayEquity, utc_day
from risk.engine.policy import RiskPolicy


class Status(StrEnum):
    ARMED = "armed"
    TRIPPED = "tripped"


class Action(StrEnum):
    BLOCK_ENTRIES = "block_entries"
    CANCEL_ENTRY_ORDERS = "cancel_entry_orders"
    FLATTEN = "flatten"
    ALERT = "alert"
    REARMED = "rearmed"
    RESUMED = "resumed"


class KillSwitchRefused(ValueError):
    """A director's transition that is not allowed now; the message says why and when it will be."""


@dataclass(frozen=True, slots=True)
class SwitchState:
    status: Status = Status.ARMED
    tripped_on: date | None = None  # UTC day of the trip
    tripped_at: datetime | None = None
    reason: str = ""  # why it tripped
    halted: bool = False
    halt_reason: str = ""

    @property
    def latched(self) -> bool:
        return self.status == Status.TRIPPED


@dataclass(frozen=True, slots=True)
class Transition:
    state: SwitchState
    actions: tuple[Action, ...] = ()


def entries_allowed(state: SwitchState) -> bool:
    """New exposure is allowed only when the switch is armed and no director halted the account."""
    return state.status == Status.ARMED and not state.halted


def on_equity(state: SwitchState, *, day: DayEquity, policy: RiskPolicy) -> Transition:
    """Trip an armed switch when the day's drawdown from its high-water mark reaches the policy's maximum.

    Called on every equity mark (every bar in the backtest): equity at or above the day's high has no
    drawdown (``DayEquity.drawdown_pct`` is 0 there, so it is not computed), a latched switch needs none,
    and "nothing happens" is one :class:`Transition` per state (it is immutable)."""
    limit = policy.max_daily_drawdown_pct
    if day.equity >= day.high_water:
        drawdown = _NO_DRAWDOWN
        if state.latched or drawdown < limit:
            return _unchanged(state)
    else:
        if state.latched:
            return _unchanged(state)
        drawdown = day.drawdown_pct
        if drawdown < limit:
            return _unchanged(state)
    reason = (
        f"daily drawdown {drawdown:.2f} % from the UTC day's high of {day.high_water} USD to "
        f"{day.equity} USD reached the limit of {policy.max_daily_drawdown_pct} %"
    )
    actions = [Action.BLOCK_ENTRIES, Action.CANCEL_ENTRY_ORDERS]
    if policy.flatten_on_breach:
        actions.append(Action.FLATTEN)
    actions.append(Action.ALERT)
    tripped = replace(state, status=Status.TRIPPED, tripped_on=day.day, tripped_at=day.at, reason=reason)
    return Transition(tripped, tuple(actions))


_NO_DRAWDOWN = Decimal(0)  # what DayEquity.drawdown_pct gives at or above the high


class _Unchanged:
    """The last "nothing happens" transition, reused while the state is the same object (one per bar
    otherwise). Reading and replacing the one reference is atomic: threads share it safely."""

    last = Transition(SwitchState())


def _unchanged(state: SwitchState) -> Transition:
    last = _Unchanged.last
    if last.state is not state:
        last = _Unchanged.last = Transition(state)
    return last


def on_day_change(state: SwitchState, *, now: datetime, policy: RiskPolicy) -> Transition:
    """At or after the first moment of a new UTC day: auto re-arm a tripped switch if the policy allows."""
    if state.latched and policy.auto_rearm_at_day_change and utc_day(now) > state.tripped_on:
        return Transition(_armed(state), (Action.REARMED,))
    return Transition(state)


def rearm(state: SwitchState, *, now: datetime) -> Transition:
    """A director re-arms a tripped switch; refused while the UTC day of the trip lasts."""
    if not state.latched:
        raise KillSwitchRefused("the kill switch is already armed")
    if utc_day(now) <= state.tripped_on:
        raise KillSwitchRefused(
            f"the kill switch tripped on {state.tripped_on} (UTC) and stays latched until the next UTC day"
        )
    return Transition(_armed(state), (Action.REARMED,))


def halt(state: SwitchState, *, reason: str) -> Transition:
    """A director stops new entries now; open entry orders are cancelled. Exits keep working."""
    return Transition(
        replace(state, halted=True, halt_reason=reason), (Action.BLOCK_ENTRIES, Action.CANCEL_ENTRY_ORDERS)
    )


def resume(state: SwitchState) -> Transition:
    """A director lifts a manual halt. A tripped switch stays latched (it needs :func:`rearm`)."""
    if not state.halted:
        raise KillSwitchRefused("the account is not halted")
    return Transition(replace(state, halted=False, halt_reason=""), (Action.RESUMED,))


def _armed(state: SwitchState) -> SwitchState:
    return replace(state, status=Status.ARMED, tripped_on=None, tripped_at=None, reason="")
