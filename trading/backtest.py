"""The backtest: the live decision core driven over arrays of candles. Plain Python, no Django.

``manage.py backtest`` (``trading/management/commands/backtest.py``) reads the candles (stored ``Candle``
rows or Kraken OHLCVT files) and the policy, and calls :func:`run_backtest`; nothing is persisted but the
report it prints.

**The same code as live, per bar.** Every closed bar of every pair is one cycle of
:func:`trading.cycle_core.decide` (strategy, hedge cap, :func:`risk.engine.size_entry`,
:func:`risk.engine.check_order`, :func:`risk.engine.evaluate_bar` and the trailing ratchet); its market
intents fill exactly as :class:`~trading.brokers.sim.SimBroker` fills a market order —
:func:`trading.matching.match_on_submit` against the quote the simulator would see at that moment (bid = ask
= the bar's close, with the close-to-close volatility and mean bar notional of the last 24 closed bars, as
``trading.quotes.DatabaseQuoteSource`` gives it), the funds checked like ``SimBroker`` checks them — and book
through :func:`trading.ledger.apply_fill`. After an entry fills its exits are planned from the fill price
(:func:`trading.cycle_core.plan_for_entry`, i.e. :func:`risk.engine.plan_exits`, as ``risk.exits`` does).

**One time step** (the close of the bars opening at ``t``; pairs share the timeframe's grid):

1. at the first bar of a UTC day: :func:`risk.engine.on_day_change`, then, with ``rearm_next_day``, a
   director's :func:`risk.engine.rearm` of a switch latched on an earlier day (what an operator does each
   morning; without it one trip would end the backtest's trading);
2. the hedge target (``hedging.policy``): :func:`~hedging.policy.target_pct` from the realised volatility of
   BTC/USD (the market's, ``volatility_inputs``: last ``vol_window`` bars against the median over
   ``vol_lookback``) and the account's drawdown from its high-water mark (:class:`_HedgeTarget`: the same
   ``Decimal``, estimated in floats and left to ``target_pct`` near a rounding step); then
   :func:`~hedging.policy.rebalance_plan`, whose sells go through the same check and matching;
3. each pair in turn: :func:`~trading.cycle_core.decide`, then its intents are filled;
4. equity is marked at the closes (:func:`risk.engine.marked_equity`, the NAV snapshot), fed to
   :func:`risk.engine.observe_equity` and :func:`risk.engine.on_equity`; a trip with ``FLATTEN`` sells every
   position at once (the shell carries out the kill switch's actions when it trips).

A pair without a bar at ``t`` (an exchange outage) is decided on its last bar, which ``decide`` calls stale.

**Models: walk-forward, never the future.** With a :class:`TrainingSpec`, each pair gets its own model
(as live: one champion per pair and timeframe), first fitted on the history before ``start`` and refitted
every ``retrain_every`` bars. A model used from decision bar ``s`` on is fitted only on bars ``i`` whose
label (the close ``horizon`` bars later) closed before bar ``s`` closed — ``i + horizon < s`` — and on at most
``train_bars`` of them; :attr:`BacktestResult.training` records every window so tests check it. The next
segment's probabilities are predicted in one batch (rows with incomplete features get none: the strategy
then says so, as live inference refuses them). Without a spec (or ``--no-model``) the rule strategy runs.

**Reported figures** (:meth:`BacktestResult.report`): returns are fractions. ``daily_returns``: each UTC
day's last marked equity over the previous day's (the first over the starting equity); ``worst_day_return``
their minimum; ``max_drawdown`` over every step's marked equity; ``sharpe``: mean over standard deviation of
the daily returns x sqrt(365); ``trades``: fills (each order fills once), ``round_trips`` closed positions;
``benchmark_return``: buy-and-hold of the same pairs in equal weight, bought at the first step's close and
sold at the last, paying the taker fee both ways; ``bar_steps_per_s``: pair-bars through the whole step per
second of the loop (model fitting and data preparation excluded, timed separately).

Known simplifications: every order is a market order that fills completely (as the simulator's); the ATR is
computed in floats over the arrays (live computes the same mean true range in ``Decimal``); one account.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from hedging.policy import Action as HedgeAction
from hedging.policy import HedgeInputs, HedgeParams, rebalance_plan, target_pct
from hedging.policy import Holding as HedgeHolding
from hedging.policy import drawdown_pct as hedge_drawdown_pct
from learning.features import BTC, FEATURES, WARMUP_BARS, features_of, labels, prepare_candles
from learning.modeling import make_pipeline, positive_probability
from learning.regime import label_of
from learning.walkforward import TrainingSpec
from risk.engine.checks import Mode, OrderIntent, PriceQuote, Snapshot, Verdict, check_order
from risk.engine.killswitch import Action as SwitchAction
from risk.engine.killswitch import SwitchState, on_day_change, on_equity, rearm
from risk.engine.nav import DayEquity, Mark, marked_equity, observe_equity
from risk.engine.policy import HUNDRED, RiskPolicy
from trading.brokers.base import OrderKind, OrderRequest, PairRules, Side
from trading.cycle_core import (
    BarView,
    CycleDecision,
    DeferredSnapshot,
    Intent,
    Purpose,
    decide,
    plan_for_entry,
)
from trading.fees import FeeRates, published_rates
from trading.ledger import Book, FillFacts, apply_fill
from trading.matching import Execution, Quote, SlippageModel, match_on_submit, plain
from trading.matching import check_order as kraken_rules
from trading.strategy import (
    ChampionStrategy,
    ChampionThresholds,
    DefaultStrategy,
    Holding,
    MarketView,
    RuleStrategy,
    Strategy,
)

ZERO = Decimal(0)
ONE = Decimal(1)
#: Closed bars the simulator's quote measures volatility and bar notional over (``trading.quotes``).
QUOTE_STATS_BARS = 24
#: Bars of the mean true range (``risk.exits.ATR_BARS``).
ATR_BARS = 14
REGIME = FEATURES.index("regime")


class BacktestError(ValueError):
    """The backtest cannot run on these inputs (too little history, no bars in the period, …)."""


# --- Inputs -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PairSeries:
    """One pair's candles: float ``open, high, low, close, volume`` indexed by UTC open time, history
    before the backtest's start included (warm-up and training)."""

    rules: PairRules
    frame: pd.DataFrame


@dataclass(frozen=True)
class BacktestConfig:
    start: datetime
    end: datetime  # exclusive: bars opening before it
    equity: Decimal
    timeframe: int = 60
    policy: RiskPolicy = field(default_factory=RiskPolicy)
    fees: FeeRates = field(default_factory=published_rates)
    slippage: SlippageModel = field(default_factory=SlippageModel)
    thresholds: ChampionThresholds = field(default_factory=ChampionThresholds)
    training: TrainingSpec | None = field(default_factory=lambda: TrainingSpec(kind="hgb", horizon=24))
    train_bars: int = 24 * 365
    retrain_every: int = 24 * 7
    hedge: HedgeParams | None = field(default_factory=HedgeParams)
    rearm_next_day: bool = True

    def __post_init__(self) -> None:
        for label, moment in (("start", self.start), ("end", self.end)):
            if moment.tzinfo is None:
                raise BacktestError(f"{label} {moment} has no time zone: give UTC times")
        if self.end <= self.start:
            raise BacktestError(f"the period ends ({self.end}) before it starts ({self.start})")
        if not (self.equity > 0):
            raise BacktestError(f"starting equity must be positive, not {self.equity}")
        problems = self.policy.validate()
        if problems:
            raise BacktestError("invalid risk policy: " + "; ".join(problems))
        if self.hedge is not None and self.hedge.validate():
            raise BacktestError("invalid hedge policy: " + "; ".join(self.hedge.validate()))
        if self.retrain_every < 1 or self.train_bars < 1:
            raise BacktestError("retrain_every and train_bars must be at least 1 bar")

    @property
    def bar(self) -> timedelta:
        return timedelta(minutes=self.timeframe)

    @property
    def slippage_pct(self) -> Decimal:
        """The expected slippage the risk engine assumes (``risk.pretrade.slippage_pct``): the bps term."""
        return self.slippage.bps / HUNDRED


# --- Results ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TrainingWindow:
    """One model fit: the labelled bars it saw and the first decision it served. ``label_known_at``: the
    close time of the bar the newest training label reads; it must not be after ``first_decision_at``."""

    pair: str
    first_train_bar: datetime
    last_train_bar: datetime
    label_known_at: datetime
    first_decision_at: datetime  # close time of the first bar it scores
    rows: int


@dataclass(frozen=True, slots=True)
class FillRecord:
    at: datetime
    symbol: str
    side: Side
    purpose: str
    quantity: Decimal
    price: Decimal
    fee: Decimal
    reason: str


@dataclass(frozen=True, slots=True)
class TripRecord:
    at: datetime
    reason: str
    actions: tuple[str, ...]


@dataclass
class BacktestResult:
    config: BacktestConfig
    pairs: tuple[str, ...]
    steps: int
    bar_steps: int
    equity_curve: list[tuple[datetime, Decimal]]
    daily_equity: dict[date, Decimal]
    fills: list[FillRecord]
    round_trips: int
    winning_trips: int
    trips: list[TripRecord]
    rejected_entries: int
    refused_orders: list[str]
    training: list[TrainingWindow]
    strategy_runs: dict[str, int]
    skips: dict[str, int]
    cash: Decimal
    positions: dict[str, Decimal]
    final_prices: dict[str, Decimal]
    benchmark_return: float
    loop_seconds: float
    prepare_seconds: float
    training_seconds: float
    hedge_sells: int
    hedge_targets: list[float]
    decisions: list[CycleDecision] = field(default_factory=list)

    @property
    def final_equity(self) -> Decimal:
        return self.equity_curve[-1][1]

    @property
    def fees_paid(self) -> Decimal:
        return sum((fill.fee for fill in self.fills), ZERO)

    def daily_returns(self) -> dict[date, float]:
        returns, previous = {}, self.config.equity
        for day, equity in self.daily_equity.items():
            returns[day] = float(equity / previous - ONE)
            previous = equity
        return returns

    def report(self) -> dict[str, Any]:
        """The figures as one JSON-ready object (the keys are in the module docstring)."""
        equity = np.array([float(value) for _, value in self.equity_curve])
        curve = np.r_[float(self.config.equity), equity]
        drawdown = 1.0 - curve / np.maximum.accumulate(curve)
        daily = self.daily_returns()
        values = np.array(list(daily.values()))
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        policy = self.config.policy
        return {
            "pairs": list(self.pairs),
            "from": self.config.start.isoformat(),
            "to": self.config.end.isoformat(),
            "timeframe": self.config.timeframe,
            "starting_equity": str(self.config.equity),
            "final_equity": str(self.final_equity),
            "final_cash": str(self.cash),
            "final_positions": {symbol: str(quantity) for symbol, quantity in self.positions.items()},
            "final_prices": {symbol: str(price) for symbol, price in self.final_prices.items()},
            "total_return": float(self.final_equity / self.config.equity - ONE),
            "max_drawdown": float(drawdown.max()) if len(drawdown) else 0.0,
            "worst_day_return": float(values.min()) if len(values) else 0.0,
            "sharpe": float(values.mean() / std * math.sqrt(365)) if std > 0 else 0.0,
            "trades": len(self.fills),
            "round_trips": self.round_trips,
            "win_rate": self.winning_trips / self.round_trips if self.round_trips else None,
            "fees_paid": float(self.fees_paid),
            "kill_switch_trips": len(self.trips),
            "kill_switch_trip_times": [trip.at.isoformat() for trip in self.trips],
            "daily_returns": {day.isoformat(): value for day, value in daily.items()},
            "daily_drawdown_limit": float(policy.max_daily_drawdown_pct / HUNDRED),
            "flatten_on_breach": policy.flatten_on_breach,
            "benchmark_return": self.benchmark_return,
            "bar_steps": self.bar_steps,
            "bar_steps_per_s": self.bar_steps / self.loop_seconds if self.loop_seconds > 0 else None,
            "loop_seconds": self.loop_seconds,
            "prepare_seconds": self.prepare_seconds,
            "training_seconds": self.training_seconds,
            "models_trained": len(self.training),
            "training_windows": [
                {
                    "pair": window.pair,
                    "first_train_bar": window.first_train_bar.isoformat(),
                    "last_train_bar": window.last_train_bar.isoformat(),
                    "label_known_at": window.label_known_at.isoformat(),
                    "first_decision_at": window.first_decision_at.isoformat(),
                    "rows": window.rows,
                }
                for window in self.training
            ],
            "strategy_runs": dict(self.strategy_runs),
            "skips": dict(self.skips),
            "rejected_entries": self.rejected_entries,
            "refused_orders": len(self.refused_orders),
            "hedge_sells": self.hedge_sells,
            "hedge_target_mean": float(np.mean(self.hedge_targets)) if self.hedge_targets else 0.0,
        }


# --- Preparation --------------------------------------------------------------------------------------------


def _dec(value: float) -> Decimal:
    # repr(): the shortest decimal that round-trips, i.e. the file's own text for Kraken's prices.
    return Decimal(repr(float(value)))


@dataclass
class _Pair:
    """One pair's arrays on the decision grid (prepared once, read per step)."""

    symbol: str
    rules: PairRules
    index: pd.DatetimeIndex  # the prepared grid (history included)
    features: np.ndarray
    close_f: np.ndarray
    rows: np.ndarray  # decision step → row of the prepared grid (-1: no bar at that step)
    views: dict[int, BarView]  # row → the bar as decide() sees it (complete bars of the period only)
    closes: dict[int, Decimal]
    volumes: dict[int, Decimal]
    regimes: list[str | None]
    probability: np.ndarray  # per row (NaN: no model score)
    model_note: list[str]  # per row: which model scored it, or why none did
    markets: dict[int, MarketView] = field(default_factory=dict)  # row → the strategy's view (after training)
    quote_stats: dict[int, tuple[Decimal | None, Decimal | None]] = field(default_factory=dict)
    log_returns: dict[tuple[int, int], Decimal | None] = field(default_factory=dict)


def _atr(high: np.ndarray, low: np.ndarray, close: np.ndarray) -> np.ndarray:
    """Mean true range of the last ``ATR_BARS`` bars ending at each row (``risk.replay.average_true_range``
    of the last ``ATR_BARS + 1`` bars); NaN until known."""
    previous = np.r_[np.nan, close[:-1]]
    true_range = np.maximum(high - low, np.maximum(np.abs(high - previous), np.abs(low - previous)))
    return pd.Series(true_range).rolling(ATR_BARS).mean().to_numpy()


def _prepare(
    series: Mapping[str, PairSeries], config: BacktestConfig, btc_frame: pd.DataFrame | None
) -> tuple[pd.DatetimeIndex, dict[str, _Pair], Any]:
    start, end = pd.Timestamp(config.start), pd.Timestamp(config.end)
    prepared_all = {}
    for symbol, item in series.items():
        frame = item.frame[item.frame.index < end]
        prepared_all[symbol] = prepare_candles(
            frame, pair=symbol, timeframe=config.timeframe, min_bars=WARMUP_BARS + 2
        )
    if BTC in prepared_all:
        btc = prepared_all[BTC]
    elif btc_frame is not None:
        btc = prepare_candles(
            btc_frame[btc_frame.index < end], pair=BTC, timeframe=config.timeframe, min_bars=WARMUP_BARS + 2
        )
    else:
        raise BacktestError(f"the features of every pair need {BTC} candles (cross-asset): give them")
    grid = pd.date_range(start, end - config.bar, freq=config.bar, tz=UTC)
    if not len(grid):
        raise BacktestError("no bar opens in the period")
    pairs = {}
    for symbol, prepared in prepared_all.items():
        index = prepared.index
        if index[0] > start - config.bar * WARMUP_BARS:
            raise BacktestError(
                f"{symbol}: history starts {index[0].isoformat()}; the features need {WARMUP_BARS} bars "
                f"before {start.isoformat()}"
            )
        position = index.get_indexer(grid)
        values = prepared.values
        complete = ~np.isnan(values).any(axis=1)
        rows = np.where((position >= 0) & complete[np.clip(position, 0, None)], position, -1)
        if (rows < 0).all():
            raise BacktestError(f"{symbol}: no bar in the period")
        high, low, close, volume = (values[:, i] for i in (1, 2, 3, 4))
        atr = _atr(high, low, close)
        first = int(rows[rows >= 0].min())
        last = int(rows.max())
        views, closes, volumes = {}, {}, {}
        bar = config.bar
        for row in range(max(0, first - QUOTE_STATS_BARS), last + 1):
            if not complete[row]:
                continue
            closes[row] = _dec(close[row])
            volumes[row] = _dec(volume[row])
            if row >= first:
                opened = index[row].to_pydatetime()
                views[row] = BarView(
                    symbol=symbol,
                    open_time=opened,
                    close_time=opened + bar,
                    high=_dec(high[row]),
                    low=_dec(low[row]),
                    close=closes[row],
                    atr=_dec(atr[row]) if math.isfinite(atr[row]) and atr[row] > 0 else None,
                )
        features = features_of(prepared, btc)
        pairs[symbol] = _Pair(
            symbol=symbol,
            rules=series[symbol].rules,
            index=index,
            features=features,
            close_f=close,
            rows=rows,
            views=views,
            closes=closes,
            volumes=volumes,
            regimes=[label_of(code) for code in features[:, REGIME]],
            probability=np.full(len(index), np.nan),
            model_note=["no model in this backtest"] * len(index),
        )
    return grid, pairs, btc


def _train_and_predict(
    pair: _Pair, config: BacktestConfig, spec: TrainingSpec
) -> tuple[list[TrainingWindow], float]:
    """Walk-forward fits of one pair's model and its batch predictions per segment (module docstring)."""
    horizon = spec.horizon
    label = labels(pd.Series(pair.close_f), horizon=horizon, taker_fee=spec.taker_fee).to_numpy()
    usable = ~np.isnan(pair.features).any(axis=1)
    decision_rows = np.flatnonzero(pair.rows >= 0)
    windows, seconds = [], 0.0
    for begin in range(0, len(decision_rows), config.retrain_every):
        segment = pair.rows[decision_rows[begin : begin + config.retrain_every]]
        first = int(segment[0])
        newest = first - horizon - 1  # label of ``newest`` reads the close of bar first - 1: known at s
        oldest = max(0, newest - config.train_bars + 1)
        candidates = np.arange(oldest, newest + 1)
        train = (
            candidates[usable[candidates] & ~np.isnan(label[candidates])] if newest >= 0 else candidates[:0]
        )
        if len(train) < 2 or len(np.unique(label[train])) < 1:
            for row in segment:
                pair.model_note[row] = "no model: too little labelled history before this bar"
            continue
        started = time.perf_counter()
        pipeline = make_pipeline(spec.kind, spec.params, random_state=spec.random_state)
        with threadpool_limits(limits=spec.threads, user_api="openmp"):
            pipeline.fit(pair.features[train], label[train])
        seconds += time.perf_counter() - started
        complete = segment[usable[segment]]
        if len(complete):
            with threadpool_limits(limits=spec.threads, user_api="openmp"):
                pair.probability[complete] = positive_probability(pipeline, pair.features[complete])
        trained_until = pair.index[int(train[-1])].to_pydatetime()
        note = f"model fitted on {len(train)} bars to {trained_until:%Y-%m-%d %H:%M}"
        for row in segment:
            pair.model_note[row] = note if usable[row] else "features incomplete at this bar: no score"
        windows.append(
            TrainingWindow(
                pair=pair.symbol,
                first_train_bar=pair.index[int(train[0])].to_pydatetime(),
                last_train_bar=trained_until,
                label_known_at=(pair.index[int(train[-1]) + horizon] + config.bar).to_pydatetime(),
                first_decision_at=(pair.index[first] + config.bar).to_pydatetime(),
                rows=len(train),
            )
        )
    return windows, seconds


# --- The account --------------------------------------------------------------------------------------------


class _Account:
    """The backtest's mutable book; every decision is the decision core's."""

    def __init__(self, config: BacktestConfig, pairs: dict[str, _Pair]) -> None:
        self.config = config
        self.pairs = pairs
        self.cash = config.equity
        self.books: dict[str, Book] = {symbol: Book() for symbol in pairs}
        self.plans: dict[str, Any] = dict.fromkeys(pairs)
        self.switch = SwitchState()
        self.day_equity: DayEquity | None = None
        self.orders: list[datetime] = []
        self.fills: list[FillRecord] = []
        self.refused: list[str] = []
        self.trips: list[TripRecord] = []
        self.round_trips = 0
        self.winning = 0
        self.sequence = 0
        self.last_rebalance: datetime | None = None
        self.hedge_sells = 0
        self.rules = {symbol: pair.rules for symbol, pair in pairs.items()}
        self.groups = (frozenset(pairs),)
        self._holdings: dict[str, tuple[Book, Any, Holding]] = {}

    # -- marks --

    @property
    def holds(self) -> bool:
        """Whether any position is open."""
        for book in self.books.values():  # noqa: SIM110 (per bar: no generator)
            if book.quantity:
                return True
        return False

    def equity(self, prices: Mapping[str, Decimal]) -> Decimal:
        if not self.holds:
            return self.cash
        marks = [
            Mark(symbol, book.quantity, prices.get(symbol))
            for symbol, book in self.books.items()
            if book.quantity
        ]
        return marked_equity(cash_usd=self.cash, marks=marks, fees=self.config.fees) if marks else self.cash

    def snapshot(self, now: datetime, prices: Mapping[str, Decimal], equity: Decimal) -> Snapshot:
        config = self.config
        held = {symbol: book.quantity for symbol, book in self.books.items()}
        recent = self.orders[-config.policy.max_orders_per_hour :]
        return Snapshot(
            now=now,
            mode=Mode.SIMULATION,
            broker="sim",
            trading_enabled=True,
            switch=self.switch,
            pairs=self.rules,
            prices={symbol: PriceQuote(price, now) for symbol, price in prices.items()},
            max_price_age=config.bar,
            equity=equity,
            available_usd=self.cash,
            held=held,
            fees=config.fees,
            slippage_pct=config.slippage_pct,
            exposures={symbol: held[symbol] * price for symbol, price in prices.items() if held[symbol]},
            groups=self.groups,
            recent_orders=tuple(recent),
        )

    # -- fills --

    def quote(self, pair: _Pair, row: int, at: datetime) -> Quote:
        """The simulator's quote after the bar at ``row`` closed (``DatabaseQuoteSource``). Its volatility
        and bar notional are those of the row's last closed bars: computed once per row."""
        stats = pair.quote_stats.get(row)
        if stats is None:
            closes, volumes, returns = pair.closes, pair.volumes, pair.log_returns
            rows = [r for r in range(row - QUOTE_STATS_BARS + 1, row + 1) if r in closes]
            notionals = [volumes[r] * closes[r] for r in rows if volumes[r] > 0]
            stats = pair.quote_stats[row] = (
                _log_return_volatility(closes, rows, returns),
                sum(notionals, ZERO) / len(notionals) if notionals else None,
            )
        return Quote.from_last(
            pair.closes[row],
            at,
            volatility=stats[0],
            bar_notional=stats[1],
            fresh_until=at + 2 * self.config.bar,
        )

    def execute(
        self, pair: _Pair, row: int, at: datetime, *, side: Side, quantity: Decimal, purpose: str, reason: str
    ) -> Execution | None:
        """A market order filled as ``SimBroker.submit`` fills it (``None``: refused, recorded)."""
        config = self.config
        self.sequence += 1
        request = OrderRequest(
            account_id=0,
            client_order_id=f"backtest-{self.sequence}",
            pair=pair.rules,
            side=side,
            kind=OrderKind.MARKET,
            quantity=quantity,
        )
        quote = self.quote(pair, row, at)
        problems = kraken_rules(request, reference_price=quote.touch(side))
        execution = (
            None if problems else match_on_submit(request, quote, fees=config.fees, slippage=config.slippage)
        )
        if execution is not None:
            book = self.books[pair.symbol]
            if side == Side.BUY and execution.price * execution.quantity + execution.fee > self.cash:
                problems = [f"insufficient funds: {plain(self.cash)} USD available in the simulated book"]
            elif side == Side.SELL and execution.quantity > book.quantity:
                problems = [f"selling {plain(execution.quantity)} exceeds the {plain(book.quantity)} held"]
        if problems:
            self.refused.append(
                f"{at.isoformat()} {side} {plain(quantity)} {pair.symbol}: {'; '.join(problems)}"
            )
            return None
        effect = apply_fill(
            self.books[pair.symbol],
            FillFacts(
                side=str(side),
                price=execution.price,
                quantity=execution.quantity,
                fee=execution.fee,
                fee_currency=execution.fee_currency,
                executed_at=execution.executed_at,
            ),
            base_asset=pair.rules.base_asset,
        )
        self.books[pair.symbol] = effect.book
        self.cash += effect.usd_delta
        self.orders.append(at)
        if effect.closed_trip is not None:
            self.round_trips += 1
            self.winning += effect.closed_trip.net_pnl > 0
        self.fills.append(
            FillRecord(
                at, pair.symbol, side, purpose, execution.quantity, execution.price, execution.fee, reason
            )
        )
        return execution

    def carry_out(self, pair: _Pair, row: int, decision: CycleDecision) -> None:
        symbol = pair.symbol
        at = decision.bar_open_time + self.config.bar
        if decision.plan_changed:
            self.plans[symbol] = decision.exit_plan
        for intent in decision.intents:
            self._carry(pair, row, at, intent)

    def _carry(self, pair: _Pair, row: int, at: datetime, intent: Intent) -> None:
        execution = self.execute(
            pair,
            row,
            at,
            side=intent.side,
            quantity=intent.quantity,
            purpose=str(intent.purpose),
            reason=intent.reason,
        )
        if execution is None:
            return
        symbol = pair.symbol
        if intent.side == Side.SELL:
            if self.books[symbol].quantity == 0:
                self.plans[symbol] = None
            return
        view = pair.views[row]
        book = self.books[symbol]
        entry = book.trip_buy_notional / book.trip_bought
        self.plans[symbol] = plan_for_entry(
            policy=self.config.policy,
            pair=pair.rules,
            entry_price=entry,
            fees=self.config.fees,
            slippage_pct=self.config.slippage_pct,
            atr=view.atr,
        )

    def holding(self, symbol: str) -> Holding:
        """The pair's position as the cycle sees it; the same (immutable) value while neither the book nor
        the plan changes."""
        book, plan = self.books[symbol], self.plans[symbol]
        cached = self._holdings.get(symbol)
        if cached is not None and cached[0] is book and cached[1] is plan:
            return cached[2]
        if not book.quantity:
            holding = Holding(exit_plan=plan)
        else:
            entry = book.trip_buy_notional / book.trip_bought if book.trip_bought else None
            holding = Holding(book.quantity, book.average_cost, entry, plan)
        self._holdings[symbol] = (book, plan, holding)
        return holding


def _log_return_volatility(
    closes: Mapping[int, Decimal], rows: list[int], returns: dict[tuple[int, int], Decimal | None]
) -> Decimal | None:
    """:func:`trading.matching.log_return_volatility` of ``closes`` at ``rows``, the same ``Decimal``
    operations in the same order, with each consecutive pair's log return computed once per run (``returns``;
    ``None``: a close not positive, left out as there)."""
    values = []
    for key in pairwise(rows):
        value = returns.get(key, returns)
        if value is returns:
            a, b = closes[key[0]], closes[key[1]]
            value = returns[key] = (b / a).ln() if a > 0 and b > 0 else None
        if value is not None:
            values.append(value)
    if len(values) < 2:
        return None
    mean = sum(values, ZERO) / len(values)
    variance = sum(((r - mean) ** 2 for r in values), ZERO) / (len(values) - 1)
    return variance.sqrt()


# --- The run ------------------------------------------------------------------------------------------------


def default_strategy(config: BacktestConfig) -> Strategy:
    return DefaultStrategy(champion=ChampionStrategy(config.thresholds), fallback=RuleStrategy())


def run_backtest(
    series: Mapping[str, PairSeries],
    config: BacktestConfig,
    *,
    btc_frame: pd.DataFrame | None = None,
    strategy: Strategy | None = None,
    on_progress: Callable[[int, int], None] | None = None,
    keep_decisions: bool = False,
) -> BacktestResult:
    """Run one simulated account over ``series`` (see the module docstring). ``btc_frame``: BTC/USD's
    candles when BTC/USD is not traded (its features feed every pair's). ``on_progress(done, total)`` is
    called every few hundred steps; ``keep_decisions`` keeps every :class:`CycleDecision` (tests)."""
    if not series:
        raise BacktestError("no pair to backtest")
    prepare_started = time.perf_counter()
    grid, pairs, btc = _prepare(series, config, btc_frame)
    prepare_seconds = time.perf_counter() - prepare_started
    training: list[TrainingWindow] = []
    training_seconds = 0.0
    if config.training is not None:
        for pair in pairs.values():
            windows, seconds = _train_and_predict(pair, config, config.training)
            training += windows
            training_seconds += seconds
    strategy = strategy or default_strategy(config)

    # Per-step and per-row lists, read by index in the loop (part of the preparation, timed with it).
    prepare_started = time.perf_counter()
    hedge_target = _hedge_targets(config, btc, grid)
    opens = grid.to_pydatetime().tolist()
    bar = config.bar
    nows = [opened + bar for opened in opens]
    observed_at = [now - timedelta(microseconds=1) for now in nows]
    ordered = list(pairs.values())
    # decision step -> the pair's row, or its last row before (an outage), -1 before its first bar
    step_rows = {pair.symbol: np.maximum.accumulate(pair.rows).tolist() for pair in ordered}
    for pair in ordered:
        # the strategy's view of each decision row: the same inputs per row whenever it is decided
        probabilities = pair.probability.tolist()
        features, regimes, notes = pair.features, pair.regimes, pair.model_note
        for row in pair.views:
            probability = probabilities[row]
            probability = None if probability != probability else probability  # NaN: no score
            pair.markets[row] = MarketView(features[row], regimes[row], probability, notes[row])
    prepare_seconds += time.perf_counter() - prepare_started

    account = _Account(config, pairs)
    policy = config.policy
    fees, slippage_pct = config.fees, config.slippage_pct
    decisions: list[CycleDecision] = []
    curve: list[tuple[datetime, Decimal]] = []
    daily: dict[date, Decimal] = {}
    runs: dict[str, int] = {}
    skips: dict[str, int] = {}
    rejected = 0
    high_water = config.equity
    targets: list[float] = []
    current_day: date | None = None
    total = len(grid)
    bar_steps = 0
    floor_target = ZERO
    single = ordered[0] if len(ordered) == 1 else None
    if single is not None:
        single_symbol, single_rows = single.symbol, step_rows[single.symbol]
    last_target, last_float = None, 0.0

    loop_started = time.perf_counter()
    for step in range(total):
        opened, now = opens[step], nows[step]
        day = opened.date()
        if day != current_day:
            current_day = day
            account.switch = on_day_change(account.switch, now=opened, policy=policy).state
            if account.switch.latched and config.rearm_next_day and day > account.switch.tripped_on:
                account.switch = rearm(account.switch, now=opened).state
        if single is not None:
            row = single_rows[step]
            rows = {single_symbol: row}
            prices = {single_symbol: single.closes[row]} if row >= 0 else {}
        else:
            rows = {symbol: values[step] for symbol, values in step_rows.items()}
            prices = {symbol: pairs[symbol].closes[row] for symbol, row in rows.items() if row >= 0}
        equity = account.equity(prices)

        target = floor_target
        if hedge_target is not None:
            target = hedge_target(step, equity, high_water)
            if target is not last_target:  # mostly the same (cached) Decimal as the step before
                last_target, last_float = target, float(target)
            targets.append(last_float)
            if account.holds and _rebalance(account, pairs, rows, prices, equity, target, now, config):
                equity = account.equity(prices)

        for pair in ordered:
            symbol = pair.symbol
            row = rows[symbol]
            if row < 0:
                continue
            bar_steps += 1
            decision = decide(
                policy=policy,
                pair=pair.rules,
                snapshot=DeferredSnapshot(
                    now=now,
                    switch=account.switch,
                    trading_enabled=True,
                    fees=fees,
                    slippage_pct=slippage_pct,
                    build=account.snapshot,
                    args=(now, prices, equity),
                ),
                bar=pair.views[row],
                holding=account.holding(symbol),
                market=pair.markets[row],
                strategy=strategy,
                hedge_target=target,
                max_bar_age=bar,
            )
            ran = decision.strategy or "none"
            runs[ran] = runs.get(ran, 0) + 1
            if decision.skip is not None:
                skips[decision.skip] = skips.get(decision.skip, 0) + 1
            if decision.rejected is not None:
                rejected += 1
            if keep_decisions:
                decisions.append(decision)
            if decision.intents or decision.plan_changed:
                account.carry_out(pair, row, decision)
                if decision.intents:
                    equity = account.equity(prices)

        observed = observe_equity(account.day_equity, equity=equity, at=observed_at[step])
        account.day_equity = observed
        transition = on_equity(account.switch, day=observed, policy=policy)
        if transition.actions:
            account.switch = transition.state
            account.trips.append(
                TripRecord(now, transition.state.reason, tuple(map(str, transition.actions)))
            )
            if SwitchAction.FLATTEN in transition.actions:
                for pair in ordered:
                    held = account.books[pair.symbol].quantity
                    if held and rows[pair.symbol] >= 0:
                        _flatten(account, pair, rows[pair.symbol], now, held, transition.state.reason)
                equity = account.equity(prices)
        if equity > high_water:
            high_water = equity
        curve.append((now, equity))
        daily[day] = equity
        if on_progress is not None and (step % 500 == 499 or step == total - 1):
            on_progress(step + 1, total)
    loop_seconds = time.perf_counter() - loop_started

    first_prices = {p.symbol: p.close_f[int(p.rows[p.rows >= 0][0])] for p in ordered}
    last_prices = {
        symbol: pairs[symbol].closes[values[-1]] for symbol, values in step_rows.items() if values[-1] >= 0
    }
    taker = float(config.fees.taker_pct) / 100.0
    benchmark = float(
        np.mean([float(last_prices[s]) / first_prices[s] * (1 - taker) ** 2 - 1.0 for s in first_prices])
    )
    return BacktestResult(
        config=config,
        pairs=tuple(pairs),
        steps=total,
        bar_steps=bar_steps,
        equity_curve=curve,
        daily_equity=daily,
        fills=account.fills,
        round_trips=account.round_trips,
        winning_trips=account.winning,
        trips=account.trips,
        rejected_entries=rejected,
        refused_orders=account.refused,
        training=training,
        strategy_runs=runs,
        skips=skips,
        cash=account.cash,
        positions={symbol: book.quantity for symbol, book in account.books.items()},
        final_prices=last_prices,
        benchmark_return=benchmark,
        loop_seconds=loop_seconds,
        prepare_seconds=prepare_seconds,
        training_seconds=training_seconds,
        hedge_sells=account.hedge_sells,
        hedge_targets=targets,
        decisions=decisions,
    )


def _flatten(account: _Account, pair: _Pair, row: int, now: datetime, held: Decimal, reason: str) -> None:
    """The kill switch's FLATTEN: a checked market sell of the whole position."""
    snapshot = account.snapshot(now, {pair.symbol: pair.closes[row]}, account.cash)
    check = check_order(
        policy=account.config.policy,
        snapshot=snapshot,
        intent=OrderIntent(symbol=pair.symbol, side=Side.SELL, quantity=held),
    )
    if check.verdict == Verdict.REJECT:
        account.refused.append(f"{now.isoformat()} flatten {pair.symbol}: {check.message}")
        return
    account.execute(
        pair, row, now, side=Side.SELL, quantity=check.quantity, purpose=str(Purpose.FLATTEN), reason=reason
    )
    if account.books[pair.symbol].quantity == 0:
        account.plans[pair.symbol] = None


# --- Hedge --------------------------------------------------------------------------------------------------


#: How close (in units of 0.01 %) the float estimate of a hedge target may come to a rounding step, or a score
#: to a clip, before the exact ``hedging.policy.target_pct`` decides: far above the float error (~1e-9).
_NEAR = 1e-6


class _HedgeTarget:
    """``target(step, equity, high_water)``: :func:`hedging.policy.target_pct` as a fraction, with BTC/USD's
    realised volatility at each step and the account's drawdown from ``high_water``
    (:func:`hedging.policy.drawdown_pct`) — the same ``Decimal`` as ``target_pct`` returns, at a float's cost.

    ``target_pct`` is ``clip(w_v x s_v + w_d x s_d)`` mapped onto ``[floor, ceiling]`` and floored to 0.01 %,
    a continuous function of its inputs but for that flooring. The volatility score ``s_v`` is a per-step
    array (vectorised once); per step the drawdown score and the target are estimated in floats, whose error
    (~1e-12 of a percent) is far below ``_NEAR``: an estimate at least ``_NEAR`` from every rounding step
    and clip gives the exact result (the ``Decimal`` of ``target_pct``, exponent included); one closer is
    computed by ``target_pct`` itself. ``tests/trading/test_backtest.py`` checks the two agree."""

    def __init__(self, params: HedgeParams, vol_now: np.ndarray, vol_reference: np.ndarray) -> None:
        self.params = params
        self.vol_now, self.vol_reference = vol_now.tolist(), vol_reference.tolist()
        self.floor = params.floor_pct / HUNDRED
        self.ceiling = params.ceiling_pct / HUNDRED
        self._floor_pct, self._span = float(params.floor_pct), float(params.ceiling_pct - params.floor_pct)
        self._floor_steps, self._ceiling_steps = (
            float(params.floor_pct) * 100,
            float(params.ceiling_pct) * 100,
        )
        self._w_v, self._w_d = float(params.vol_weight), float(params.drawdown_weight)
        self._d_start, self._d_full = float(params.drawdown_start_pct), float(params.drawdown_full_pct)
        calm, turmoil = float(params.vol_calm_ratio), float(params.vol_turmoil_ratio)
        known = np.isfinite(vol_now) & np.isfinite(vol_reference) & (vol_reference > 0)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(known, vol_now / np.where(known, vol_reference, 1.0), np.nan)
        # s_v: NaN where no volatility history (the target is the floor), -1 where too close to a clip.
        score = np.clip((ratio - calm) / (turmoil - calm), 0.0, 1.0)
        near = (np.abs(ratio - calm) <= _NEAR * max(calm, 1e-12)) | (
            np.abs(ratio - turmoil) <= _NEAR * turmoil
        )
        self.vol_score = np.where(known, np.where(near, -1.0, score), np.nan).tolist()
        self._steps: dict[int, Decimal] = {}
        self._clipped: dict[tuple[float, float], Decimal] = {}

    def exact(self, step: int, equity: Decimal, high_water: Decimal) -> Decimal:
        """``hedging.policy.target_pct`` itself, as a fraction."""
        vol, ref = self.vol_now[step], self.vol_reference[step]
        if not (math.isfinite(vol) and math.isfinite(ref) and ref > 0):
            return self.floor  # no volatility history yet: the automatic target's floor
        drawdown = hedge_drawdown_pct(equity=equity, high_water=high_water)
        return target_pct(self.params, HedgeInputs(vol, ref, drawdown)) / HUNDRED

    def __call__(self, step: int, equity: Decimal, high_water: Decimal) -> Decimal:
        s_v = self.vol_score[step]
        if s_v != s_v:  # NaN
            return self.floor
        if s_v < 0:
            return self.exact(step, equity, high_water)
        if equity >= high_water:
            s_d = 0.0
        else:
            high = float(high_water)
            drawdown = (high - float(equity)) / high * 100.0
            start, full = self._d_start, self._d_full
            if abs(drawdown - start) <= _NEAR or abs(drawdown - full) <= _NEAR:
                return self.exact(step, equity, high_water)
            s_d = 0.0 if drawdown < start else 1.0 if drawdown > full else (drawdown - start) / (full - start)
        if s_v == 0.0 and s_d == 0.0:
            return self.floor  # both scores clipped to 0: target_pct's floor (its own Decimal)
        if (s_v == 0.0 or s_v == 1.0) and (s_d == 0.0 or s_d == 1.0):
            # Both scores clipped (exactly 0 or 1 in target_pct too): the target depends on nothing else.
            value = self._clipped.get((s_v, s_d))
            if value is None:
                value = self._clipped[(s_v, s_d)] = self.exact(step, equity, high_water)
            return value
        score = self._w_v * s_v + self._w_d * s_d
        if abs(score - 1.0) <= _NEAR:
            return self.exact(step, equity, high_water)
        if score > 1.0:
            return self.ceiling
        steps = (self._floor_pct + self._span * score) * 100.0
        whole = math.floor(steps)
        if steps - whole <= _NEAR or whole + 1 - steps <= _NEAR:
            return self.exact(step, equity, high_water)
        if whole <= self._floor_steps:
            return self.floor
        if whole >= self._ceiling_steps:
            return self.ceiling
        value = self._steps.get(whole)
        if value is None:
            value = self._steps[whole] = Decimal(whole).scaleb(-2) / HUNDRED
        return value


def _hedge_targets(config: BacktestConfig, btc, grid: pd.DatetimeIndex) -> _HedgeTarget | None:
    """The hedge target per step (:class:`_HedgeTarget`) from BTC/USD's realised volatility: the last
    ``vol_window`` bars' standard deviation of log returns against its median over ``vol_lookback``."""
    params = config.hedge
    if params is None:
        return None
    close = pd.Series(btc.column("close"), index=btc.index)
    returns = np.log(close).diff()
    vol_now = returns.rolling(params.vol_window).std()
    reference = vol_now.rolling(params.vol_lookback, min_periods=params.vol_window).median()
    at = btc.index.get_indexer(grid)
    now_values = np.where(at >= 0, vol_now.to_numpy()[np.clip(at, 0, None)], np.nan)
    ref_values = np.where(at >= 0, reference.to_numpy()[np.clip(at, 0, None)], np.nan)
    return _HedgeTarget(params, now_values.astype(float), ref_values.astype(float))


def _rebalance(
    account: _Account,
    pairs: Mapping[str, _Pair],
    rows: Mapping[str, int],
    prices: Mapping[str, Decimal],
    equity: Decimal,
    target: Decimal,
    now: datetime,
    config: BacktestConfig,
) -> bool:
    """``hedging.policy.rebalance_plan`` at the target; its sells filled like any order. True when it sold."""
    held = [symbol for symbol, book in account.books.items() if book.quantity and symbol in prices]
    if not held:
        return False
    # Cheap pre-check with the plan's own numbers: inside the band nothing can happen.
    share = account.cash / equity * HUNDRED if equity > 0 else HUNDRED
    if share >= target * HUNDRED - config.hedge.band_pct:
        return False
    holdings = [
        HedgeHolding(
            symbol=symbol,
            pair=pairs[symbol].rules,
            quantity=account.books[symbol].quantity,
            free=account.books[symbol].quantity,
            price=prices[symbol],
        )
        for symbol in held
    ]
    plan = rebalance_plan(
        params=config.hedge,
        target_pct=target * HUNDRED,
        usd=account.cash,
        holdings=holdings,
        fees=config.fees,
        now=now,
        last_rebalance_at=account.last_rebalance,
        slippage_pct=config.slippage_pct,
    )
    if plan.action != HedgeAction.SELL:
        return False
    sold = False
    snapshot = account.snapshot(now, prices, equity)
    for order in plan.orders:
        check = check_order(
            policy=config.policy,
            snapshot=snapshot,
            intent=OrderIntent(symbol=order.symbol, side=Side.SELL, quantity=order.quantity),
        )
        if check.verdict == Verdict.REJECT:
            account.refused.append(f"{now.isoformat()} hedge sell {order.symbol}: {check.message}")
            continue
        pair = pairs[order.symbol]
        if account.execute(
            pair,
            rows[order.symbol],
            now,
            side=Side.SELL,
            quantity=check.quantity,
            purpose="hedge",
            reason=plan.reason,
        ):
            sold = True
            account.hedge_sells += 1
            if account.books[order.symbol].quantity == 0:
                account.plans[order.symbol] = None
    if sold:
        account.last_rebalance = now
    return sold


# --- Data ---------------------------------------------------------------------------------------------------

#: Kraken's bulk files name pairs by their altname with Kraken's own asset codes.
KRAKEN_FILE_BASES = {"BTC": "XBT", "DOGE": "XDG"}


def kraken_file_name(symbol: str, timeframe: int) -> str:
    """The file Kraken ships for ``symbol``'s ``timeframe``-minute bars: ``BTC/USD`` → ``XBTUSD_60.csv``."""
    base, _, quote = symbol.partition("/")
    return f"{KRAKEN_FILE_BASES.get(base, base)}{quote}_{timeframe}.csv"


def read_kraken_file(path, *, until: datetime | None = None) -> pd.DataFrame:
    """A Kraken OHLCVT file (``time,open,high,low,close,volume,trades``, no header) as float columns indexed
    by UTC open time; bars opening at or after ``until`` are left out. A repeated time keeps its last line
    (as the importer does)."""
    frame = pd.read_csv(
        path, header=None, names=["time", "open", "high", "low", "close", "volume", "trades"], dtype=float
    )
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time").astype("int64"), unit="s", utc=True))
    frame = frame.drop(columns="trades")
    frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    if until is not None:
        frame = frame[frame.index < pd.Timestamp(until)]
    return frame.rename_axis("open_time")
