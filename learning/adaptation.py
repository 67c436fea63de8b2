"""Threshold adaptation from recent results. Plain Python, no Django.

Inputs: the account's current thresholds, their policy bounds, and its recent closed trades (live or
simulated) as ``(closed_at, net_return)`` pairs. Only trades closed after the last adaptation (and not
after ``now``) count: a trade that already moved the thresholds never moves them again. The rule, over the
last ``window`` of those trades (nothing changes with fewer than ``min_trades`` of them):

- expectancy (mean net return) below ``-tolerance``: raise the entry probability one step (trade less,
  only on stronger signals); above ``+tolerance`` with a hit rate of at least 50 %: lower it one step;
- average loss larger than average win (payoff below 1): tighten the stop and widen the take-profit one
  step each (cut losers sooner, let winners run); payoff above 2 with a hit rate below 35 %: widen the
  stop one step (winners are large but stops are hit too often);
- every value is clamped to its bounds; and nothing changes within ``min_interval`` of the last change.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from datetime import datetime, timedelta
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class Thresholds:
    entry_probability: Decimal
    stop_atr_multiple: Decimal
    take_atr_multiple: Decimal


@dataclass(frozen=True, slots=True)
class Bounds:
    low: Thresholds
    high: Thresholds

    def clamp(self, values: Thresholds) -> Thresholds:
        def clip(name: str) -> Decimal:
            return min(max(getattr(values, name), getattr(self.low, name)), getattr(self.high, name))

        return Thresholds(*(clip(item.name) for item in fields(Thresholds)))


@dataclass(frozen=True, slots=True)
class AdaptationPolicy:
    window: int = 30
    min_trades: int = 10
    min_interval: timedelta = timedelta(hours=24)
    tolerance: Decimal = Decimal("0.001")
    entry_step: Decimal = Decimal("0.01")
    multiple_step: Decimal = Decimal("0.25")


@dataclass(frozen=True, slots=True)
class Adaptation:
    changed: bool
    before: Thresholds
    after: Thresholds
    reason: str
    stats: dict


def _stats(returns: Sequence[Decimal]) -> dict:
    wins = [r for r in returns if r > 0]
    losses = [-r for r in returns if r <= 0]
    average_win = sum(wins, Decimal(0)) / len(wins) if wins else Decimal(0)
    average_loss = sum(losses, Decimal(0)) / len(losses) if losses else Decimal(0)
    return {
        "trades": len(returns),
        "expectancy": sum(returns, Decimal(0)) / len(returns),
        "hit_rate": Decimal(len(wins)) / len(returns),
        "average_win": average_win,
        "average_loss": average_loss,
        "payoff": average_win / average_loss if average_loss > 0 else None,
    }


def adapt(
    *,
    current: Thresholds,
    bounds: Bounds,
    recent_trades: Sequence[tuple[datetime, Decimal | float | str]],
    now: datetime,
    last_changed_at: datetime | None,
    policy: AdaptationPolicy = AdaptationPolicy(),
) -> Adaptation:
    trades = []
    for closed_at, value in recent_trades:
        if not isinstance(closed_at, datetime) or closed_at.tzinfo is None:
            raise ValueError(f"a trade's close time must be an aware datetime, not {closed_at!r}")
        trades.append((closed_at, Decimal(str(value))))
    if any(not value.is_finite() for _, value in trades):
        raise ValueError("recent trade returns must be finite numbers")
    trades.sort(key=lambda trade: trade[0])
    fresh = [
        value
        for closed_at, value in trades
        if closed_at <= now and (last_changed_at is None or closed_at > last_changed_at)
    ]
    returns = fresh[-policy.window :]
    if len(returns) < policy.min_trades:
        since = (
            "" if last_changed_at is None else f" since the last adaptation at {last_changed_at.isoformat()}"
        )
        return Adaptation(
            False,
            current,
            current,
            f"only {len(returns)} trade(s) closed{since}; need {policy.min_trades}",
            {},
        )
    stats = _stats(returns)
    if last_changed_at is not None and now - last_changed_at < policy.min_interval:
        return Adaptation(
            False,
            current,
            current,
            f"rate limited: last change at {last_changed_at.isoformat()}, next allowed at "
            f"{(last_changed_at + policy.min_interval).isoformat()}",
            stats,
        )
    proposed, reasons = current, []
    if stats["expectancy"] < -policy.tolerance:
        proposed = replace(proposed, entry_probability=proposed.entry_probability + policy.entry_step)
        reasons.append(f"expectancy {stats['expectancy']:.4f} < 0: entry probability up")
    elif stats["expectancy"] > policy.tolerance and stats["hit_rate"] >= Decimal("0.5"):
        proposed = replace(proposed, entry_probability=proposed.entry_probability - policy.entry_step)
        reasons.append(
            f"expectancy {stats['expectancy']:.4f} > 0, hit rate {stats['hit_rate']:.2f}: entry down"
        )
    payoff = stats["payoff"]
    if payoff is not None and payoff < 1:
        proposed = replace(
            proposed,
            stop_atr_multiple=proposed.stop_atr_multiple - policy.multiple_step,
            take_atr_multiple=proposed.take_atr_multiple + policy.multiple_step,
        )
        reasons.append(f"payoff {payoff:.2f} < 1: stop tighter, take wider")
    elif payoff is not None and payoff > 2 and stats["hit_rate"] < Decimal("0.35"):
        proposed = replace(proposed, stop_atr_multiple=proposed.stop_atr_multiple + policy.multiple_step)
        reasons.append(f"payoff {payoff:.2f} > 2 with hit rate {stats['hit_rate']:.2f}: stop wider")
    clamped = bounds.clamp(proposed)
    if clamped != proposed:
        reasons.append("clamped to the policy bounds")
    if clamped == current:
        why = "; ".join(reasons) if reasons else "results within tolerance"
        return Adaptation(False, current, current, f"no change ({why})", stats)
    return Adaptation(True, current, clamped, "; ".join(reasons), stats)
