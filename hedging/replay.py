"""Replay the hedge decision core over hourly bars of several pairs for one account. Plain Python, no Django.

The same functions ``hedge_evaluate`` calls (:func:`~hedging.policy.volatility_inputs`'s arithmetic via
:func:`~hedging.policy.rolling_volatility`, :func:`~hedging.policy.drawdown_pct`,
:func:`~hedging.policy.target_pct`, :func:`~hedging.policy.rebalance_plan`,
:func:`~hedging.policy.buying_power_cap`) are driven over arrays of closed candles; nothing is persisted.

**The account.** It starts with ``equity`` USD; a passive strategy holds the crypto sleeve in equal value
across the pairs and always uses its whole buying power, ``equity x (1 - target)``: it buys at the start and
whenever the hedge releases USD. So the only thing deciding the USD share is the hedge.

**One bar** (closed at ``close_time``), in order:

1. fills decided at the previous close execute at this bar's **open**: market orders, the price moved
   against the taker by ``slippage_pct``, Kraken's taker fee (rounded up) paid in USD;
2. at the close: equity marked at the closes (less the taker fee to sell, as ``risk.engine.nav``);
   the inputs are measured on the closes up to this bar only: each pair's volatility of the last
   ``vol_window`` returns against the median of that rolling volatility over ``vol_lookback`` bars (the pair
   furthest above its usual level drives the hedge, as in the service), and the drawdown of equity from its
   highest close mark over ``drawdown_lookback_days``;
3. the target and the plan: a sell plan's orders, or a release's buys (the strategy spends the released USD
   back up to its cap, split equally), are sent for the next open. Band and minimum interval apply.

**The counterfactual** is the same account with the hedge held at the floor (``ceiling_pct = floor_pct``):
:func:`replay_report` runs both and compares, fees included.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path

import numpy as np

from hedging.policy import (
    Action,
    HedgeInputs,
    HedgeParams,
    HedgePerformance,
    Holding,
    PerformanceStep,
    account_equity,
    buying_power_cap,
    drawdown_pct,
    hedge_performance_of,
    rebalance_plan,
    rolling_volatility,
    target_pct,
    usd_share_pct,
)
from risk.engine.sizing import floor_to_lot, minimum_findings
from risk.replay import read_kraken_ohlcvt
from trading.brokers.base import PairRules, Side
from trading.fees import FeeRates
from trading.matching import Bar, fee_for

ZERO = Decimal(0)
HUNDRED = Decimal(100)
HOUR = timedelta(hours=1)


class ReplayError(RuntimeError):
    """The replay reached a state the core should have made impossible (a bug, not a market)."""


def aligned_bars(files: Mapping[str, Path | str], *, start: datetime, end: datetime) -> dict[str, list[Bar]]:
    """Each pair's hourly bars in ``[start, end)`` from Kraken OHLCVT files, kept only at the open times
    every pair has (exchanges skip empty hours; the replay needs one clock)."""
    series = {symbol: read_kraken_ohlcvt(path, start=start, end=end) for symbol, path in files.items()}
    common = set.intersection(*({bar.open_time for bar in bars} for bars in series.values()))
    return {symbol: [bar for bar in bars if bar.open_time in common] for symbol, bars in series.items()}


@dataclass(frozen=True, slots=True)
class ReplayConfig:
    params: HedgeParams
    pairs: Mapping[str, PairRules]
    fees: FeeRates
    slippage_pct: Decimal = Decimal("0.05")


@dataclass(frozen=True, slots=True)
class HedgeFill:
    at: datetime
    symbol: str
    side: Side
    reason: str  # "start", "hedge" (a sell of the plan), "release" (the strategy's buy-back)
    quantity: Decimal
    price: Decimal
    fee: Decimal


@dataclass(frozen=True, slots=True)
class HedgeMark:
    """The account at one bar's close, and what the hedge decided there."""

    at: datetime
    equity: Decimal
    usd: Decimal
    actual_pct: Decimal
    target_pct: Decimal
    vol_ratio: Decimal
    driver: str
    drawdown_pct: Decimal
    action: Action
    prices: Mapping[str, Decimal]
    quantities: Mapping[str, Decimal]


@dataclass(frozen=True, slots=True)
class ReplayResult:
    marks: tuple[HedgeMark, ...]
    fills: tuple[HedgeFill, ...]
    usd: Decimal
    quantities: Mapping[str, Decimal]

    @property
    def start_equity(self) -> Decimal:
        return self.marks[0].equity

    @property
    def end_equity(self) -> Decimal:
        return self.marks[-1].equity

    @property
    def return_pct(self) -> Decimal:
        return ((self.end_equity / self.start_equity - 1) * HUNDRED).quantize(Decimal("0.0001"))

    @property
    def fees(self) -> Decimal:
        return sum((fill.fee for fill in self.fills), ZERO)

    def max_drawdown_pct(self) -> Decimal:
        high, worst = ZERO, ZERO
        for mark in self.marks:
            high = max(high, mark.equity)
            worst = max(worst, drawdown_pct(equity=mark.equity, high_water=high))
        return worst.quantize(Decimal("0.01"))

    def overlay_steps(self) -> list[PerformanceStep]:
        """The per-bar steps the service's overlay attribution would see (:func:`hedge_performance_of`):
        equity at consecutive closes, the USD share at the first, the sleeve's price return between them
        (value-weighted by what was held at the first close) and the fees of the hedge's sells between."""
        steps = []
        fills = list(self.fills)
        for before, after in zip(self.marks, self.marks[1:], strict=False):
            value = sum((before.quantities[s] * before.prices[s] for s in before.prices), ZERO)
            moved = sum(
                (before.quantities[s] * (after.prices[s] - before.prices[s]) for s in before.prices), ZERO
            )
            fees = sum((f.fee for f in fills if f.reason == "hedge" and before.at < f.at <= after.at), ZERO)
            steps.append(
                PerformanceStep(
                    equity_start=before.equity,
                    equity_end=after.equity,
                    usd_share=before.usd / before.equity,
                    sleeve_return=moved / value if value > 0 else ZERO,
                    hedge_fees=fees,
                )
            )
        return steps


class _Account:
    def __init__(self, config: ReplayConfig, equity: Decimal) -> None:
        self.config = config
        self.usd = equity
        self.quantities = {symbol: ZERO for symbol in config.pairs}
        self.fills: list[HedgeFill] = []
        self.marks: list[HedgeMark] = []
        self.pending: list[tuple[str, Side, Decimal, str]] = []  # (symbol, side, quantity, reason)
        self.last_rebalance_at: datetime | None = None

    def holdings(self, prices: Mapping[str, Decimal], vols: Mapping[str, float]) -> list[Holding]:
        return [
            Holding(
                symbol,
                pair,
                self.quantities[symbol],
                self.quantities[symbol],
                prices[symbol],
                vols.get(symbol),
            )
            for symbol, pair in self.config.pairs.items()
            if self.quantities[symbol] > 0
        ]

    def equity(self, prices: Mapping[str, Decimal]) -> Decimal:
        return account_equity(usd=self.usd, holdings=self.holdings(prices, {}), fees=self.config.fees)

    def execute(self, at: datetime, opens: Mapping[str, Decimal]) -> None:
        slip = self.config.slippage_pct / HUNDRED
        for symbol, side, quantity, reason in self.pending:
            if side == Side.SELL:
                if quantity > self.quantities[symbol]:
                    raise ReplayError(
                        f"a hedge sell of {quantity} {symbol} exceeds the {self.quantities[symbol]} held"
                    )
                price = opens[symbol] * (1 - slip)
                fee = fee_for(price * quantity, self.config.fees.taker_pct)
                self.usd += price * quantity - fee
                self.quantities[symbol] -= quantity
            else:
                price = opens[symbol] * (1 + slip)
                fee = fee_for(price * quantity, self.config.fees.taker_pct)
                cost = price * quantity + fee
                if cost > self.usd:  # the open gapped up: buy what the USD allows
                    quantity = floor_to_lot(
                        (self.usd - Decimal("0.0001")) / (price * (1 + self.config.fees.taker_pct / HUNDRED)),
                        self.config.pairs[symbol],
                    )
                    if quantity <= 0:
                        continue
                    fee = fee_for(price * quantity, self.config.fees.taker_pct)
                    cost = price * quantity + fee
                self.usd -= cost
                self.quantities[symbol] += quantity
            self.fills.append(HedgeFill(at, symbol, side, reason, quantity, price, fee))
        self.pending = []

    def buy_up_to_cap(self, *, budget: Decimal, prices: Mapping[str, Decimal], reason: str) -> None:
        """The strategy spends ``budget`` USD (fees included) in equal parts on every pair."""
        share = budget / len(self.config.pairs)
        for symbol, pair in self.config.pairs.items():
            price = prices[symbol] * (1 + self.config.slippage_pct / HUNDRED)
            quantity = floor_to_lot(share / (price * (1 + self.config.fees.taker_pct / HUNDRED)), pair)
            if quantity > 0 and not minimum_findings(quantity, price, pair):
                self.pending.append((symbol, Side.BUY, quantity, reason))


def replay(
    bars: Mapping[str, Sequence[Bar]], *, config: ReplayConfig, equity: Decimal, warmup: int
) -> ReplayResult:
    """Run the account over ``bars`` (aligned: one list per pair, same open times), deciding from bar
    ``warmup`` on; the bars before only feed the volatility's history. ``warmup`` must cover
    ``vol_lookback + vol_window`` bars for a full reference."""
    params = config.params
    symbols = list(config.pairs)
    length = len(bars[symbols[0]])
    if any(len(bars[s]) != length for s in symbols) or warmup >= length:
        raise ValueError("bars must be aligned and longer than the warm-up")
    closes = {s: np.array([float(bar.close) for bar in bars[s]]) for s in symbols}
    rolling = {s: rolling_volatility(closes[s], window=params.vol_window) for s in symbols}
    account = _Account(config, equity)
    equity_closes: list[Decimal] = []
    lookback_marks = params.drawdown_lookback_days * 24
    for index in range(warmup, length):
        bar = {s: bars[s][index] for s in symbols}
        now = bar[symbols[0]].close_time
        if account.pending:
            account.execute(bar[symbols[0]].open_time, {s: bar[s].open for s in symbols})
        prices = {s: bar[s].close for s in symbols}
        marked = account.equity(prices)
        equity_closes.append(marked)
        high = max(equity_closes[-lookback_marks:])
        drawdown = drawdown_pct(equity=marked, high_water=high)
        vols, ratios = {}, {}
        for s in symbols:
            history = rolling[s][max(0, index - params.vol_lookback + 1) : index + 1]
            history = history[np.isfinite(history)]
            if history.size and np.isfinite(rolling[s][index]) and np.median(history) > 0:
                vols[s] = float(rolling[s][index])
                ratios[s] = (vols[s], float(np.median(history)))
        if not ratios:
            raise ValueError(f"no volatility history at {now}: a longer warm-up is needed")
        driver = max(ratios, key=lambda s: (ratios[s][0] / ratios[s][1], s))
        inputs = HedgeInputs(
            vol_now=ratios[driver][0], vol_reference=ratios[driver][1], drawdown_pct=drawdown
        )
        target = target_pct(params, inputs)
        if index == warmup:  # the strategy's first buys: its whole buying power
            account.buy_up_to_cap(
                budget=buying_power_cap(marked, target / HUNDRED), prices=prices, reason="start"
            )
            action = Action.HOLD
        else:
            plan = rebalance_plan(
                params=params,
                target_pct=target,
                usd=account.usd,
                holdings=account.holdings(prices, vols),
                fees=config.fees,
                now=now,
                last_rebalance_at=account.last_rebalance_at,
                slippage_pct=config.slippage_pct,
            )
            action = plan.action
            if plan.action == Action.SELL:
                account.pending += [(o.symbol, Side.SELL, o.quantity, "hedge") for o in plan.orders]
                account.last_rebalance_at = now
            elif plan.action == Action.RELEASE:
                account.buy_up_to_cap(budget=plan.release_usd, prices=prices, reason="release")
                account.last_rebalance_at = now
        account.marks.append(
            HedgeMark(
                at=now,
                equity=marked,
                usd=account.usd,
                actual_pct=usd_share_pct(usd=account.usd, equity=marked),
                target_pct=target,
                vol_ratio=inputs.vol_ratio.quantize(Decimal("0.0001")),
                driver=driver,
                drawdown_pct=drawdown.quantize(Decimal("0.01")),
                action=action,
                prices=dict(prices),
                quantities=dict(account.quantities),
            )
        )
    return ReplayResult(tuple(account.marks), tuple(account.fills), account.usd, dict(account.quantities))


@dataclass(frozen=True, slots=True)
class ReplayReport:
    hedged: ReplayResult
    at_floor: ReplayResult  # the counterfactual: the same account, the hedge held at the floor
    overlay: HedgePerformance  # what the service's method estimates from the hedged run's path

    @property
    def hedge_value_pct(self) -> Decimal:
        """Percentage points the hedge added over the counterfactual (exact: both runs pay their fees)."""
        return self.hedged.return_pct - self.at_floor.return_pct


def replay_report(
    bars: Mapping[str, Sequence[Bar]], *, config: ReplayConfig, equity: Decimal, warmup: int
) -> ReplayReport:
    """The hedged run, the counterfactual with the hedge at the floor, and the overlay estimate."""
    hedged = replay(bars, config=config, equity=equity, warmup=warmup)
    floor_only = replace(config, params=replace(config.params, ceiling_pct=config.params.floor_pct))
    at_floor = replay(bars, config=floor_only, equity=equity, warmup=warmup)
    overlay = hedge_performance_of(hedged.overlay_steps(), floor_pct=config.params.floor_pct)
    return ReplayReport(hedged=hedged, at_floor=at_floor, overlay=overlay)


def bars_with_warmup(
    files: Mapping[str, Path | str], *, start: datetime, end: datetime, params: HedgeParams
) -> tuple[dict[str, list[Bar]], int]:
    """Aligned bars from ``vol_lookback + vol_window + 1`` hours before ``start`` to ``end``, and the index of
    the first bar at or after ``start`` (the warm-up)."""
    early = start - HOUR * (params.vol_lookback + params.vol_window + 1)
    bars = aligned_bars(files, start=early, end=end)
    first = next(bars.values().__iter__())
    warmup = next(i for i, bar in enumerate(first) if bar.open_time >= start)
    return bars, warmup
