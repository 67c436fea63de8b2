"""Walk-forward evaluation: datasets, purged splits, a fee-aware backtest of the signal, metrics. Plain
Python, no Django.

Splits are by time. The later part of the history is cut into ``n_folds`` consecutive test blocks; the
last bar a block's model is fitted on opens ``horizon + embargo_bars + 1`` bars before the block's first
bar (25 with the defaults, 24 bars in between; the purge: a training label looks ``horizon`` bars ahead, so
the last one reads at most the close of the bar just before the block, never a test price). ``expanding``
windows train on everything before that; ``rolling`` on the last ``rolling_bars``.

The champion (``previous``) is compared bar by bar: on the candidate's out-of-sample bars that open after
the champion's last training bar plus its label horizon and the embargo (it has seen nothing of them),
both signals are backtested on the same bars under the same rules.

The backtest is long-only spot, no leverage: at the close of each bar the position becomes 1 when the
probability is above ``entry_probability`` and goes back to 0 when it is below ``exit_probability`` after
the position has been held for the label's horizon (the trade the model rated); it earns the next bar's
close-to-close return and pays the taker fee on every change of position (and to close whatever is open at
the end). Buy-and-hold over the same bars pays one entry and one exit. A pooled model's portfolio holds its
pairs in equal weight. By default the first half of the usable bars trains the first fold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import log_loss
from threadpoolctl import threadpool_limits

from learning.errors import LearningDataError
from learning.features import FEATURES, MIN_TRAINING_BARS, PreparedCandles, feature_frame, labels
from learning.modeling import TrainedModel, make_pipeline, positive_probability


@dataclass(frozen=True)
class TrainingSpec:
    kind: str = "hgb"
    horizon: int = 24
    timeframe: int = 60
    params: dict[str, Any] = field(default_factory=dict)
    n_folds: int = 4
    min_train_bars: int | None = None  # None: the first half of the usable bars
    embargo_bars: int = 0
    mode: str = "expanding"
    rolling_bars: int = 24 * 365 * 2
    taker_fee: float = 0.004
    entry_probability: float = 0.55
    exit_probability: float = 0.45
    random_state: int = 0
    # OpenMP threads per fit. One by default: Celery workers share the machine's cores, and HistGradient-
    # Boosting's threads spin-wait badly when the cores are busy (12x slower measured on 2 busy cores).
    threads: int = 1

    def __post_init__(self) -> None:
        if self.horizon < 1:
            raise ValueError("horizon must be at least one bar")
        if self.mode not in ("expanding", "rolling"):
            raise ValueError(f"walk-forward mode {self.mode!r} is not expanding or rolling")
        if self.n_folds < 1:
            raise ValueError("n_folds must be at least 1")
        if not 0 <= self.exit_probability <= self.entry_probability <= 1:
            raise ValueError("need 0 <= exit_probability <= entry_probability <= 1")

    @property
    def gap_bars(self) -> int:
        return self.horizon + self.embargo_bars

    @property
    def bars_per_year(self) -> float:
        return 365.0 * 24 * 60 / self.timeframe

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Dataset:
    """One row per (pair, bar) with every feature known: ``FEATURES`` columns plus ``pair``, ``label``
    (NaN at the end, where the future is not known yet) and ``next_return`` (next bar's close-to-close)."""

    frame: pd.DataFrame
    pairs: tuple[str, ...]
    data_sha256: str

    @property
    def times(self) -> pd.DatetimeIndex:
        return pd.DatetimeIndex(self.frame.index.unique().sort_values())


def _digest_candles(digest, prepared: PreparedCandles) -> None:
    digest.update(prepared.pair.encode())
    digest.update(str(prepared.timeframe).encode())
    digest.update(prepared.frame.index.asi8.tobytes())
    digest.update(np.ascontiguousarray(prepared.frame.to_numpy(dtype=float)).tobytes())


def candles_sha256(candles: Sequence[PreparedCandles], *, btc: PreparedCandles | None = None) -> str:
    """SHA-256 over the pairs' names, bar times and float values: the identity of a training frame. The
    BTC/USD candles behind an altcoin's cross-asset features are part of it (marked as such) unless BTC/USD
    is itself one of the trained pairs."""
    digest = hashlib.sha256()
    for prepared in sorted(candles, key=lambda item: item.pair):
        _digest_candles(digest, prepared)
    if btc is not None and btc.pair not in {prepared.pair for prepared in candles}:
        digest.update(b"\x00cross-asset\x00")
        _digest_candles(digest, btc)
    return digest.hexdigest()


def build_dataset(
    candles: Sequence[PreparedCandles], *, btc: PreparedCandles | None, spec: TrainingSpec
) -> Dataset:
    parts = []
    for prepared in candles:
        features = feature_frame(prepared, btc)
        close = prepared.frame["close"]
        part = features.assign(
            pair=prepared.pair,
            label=labels(close, horizon=spec.horizon, taker_fee=spec.taker_fee),
            next_return=(close.shift(-1) / close - 1.0).fillna(0.0),
        )
        part = part[part[list(FEATURES)].notna().all(axis=1)]
        if part["label"].notna().sum() < (spec.min_train_bars or MIN_TRAINING_BARS):
            raise LearningDataError(
                prepared.pair,
                f"{part['label'].notna().sum()} bars with complete features and a known label (after the "
                f"{len(prepared.unfilled_gaps)} gap(s) and the warm-up); need at least "
                f"{spec.min_train_bars or MIN_TRAINING_BARS}",
            )
        parts.append(part)
    frame = pd.concat(parts).sort_index(kind="stable")
    return Dataset(
        frame=frame, pairs=tuple(p.pair for p in candles), data_sha256=candles_sha256(candles, btc=btc)
    )


# --- Backtest and metrics ----------------------------------------------------------------------------------


def positions(probability: np.ndarray, *, entry: float, exit_: float, min_hold: int = 0) -> np.ndarray:
    """1 from a bar whose probability is above ``entry``; back to 0 at the first bar below ``exit_`` once
    the position has been held ``min_hold`` bars (the label's horizon: the trade the model rated)."""
    out = np.zeros(len(probability))
    held, position = 0, 0.0
    for index, value in enumerate(probability.tolist()):
        if position == 0.0:
            if value > entry:
                position, held = 1.0, 0
        else:
            held += 1
            if held >= min_hold and value < exit_:
                position = 0.0
        out[index] = position
    return out


def strategy_returns(position: np.ndarray, next_return: np.ndarray, *, fee: float) -> np.ndarray:
    """Per-bar net return: the position's share of the next bar's return, less fees on changes (the
    last bar also pays to close)."""
    changes = np.abs(np.diff(np.r_[0.0, position]))
    net = position * next_return - fee * changes
    if len(net) and position[-1] != 0:
        net[-1] -= fee * abs(position[-1])
    return net


def performance(net: np.ndarray, *, bars_per_year: float, position: np.ndarray | None = None) -> dict:
    years = len(net) / bars_per_year if len(net) else 0.0
    equity = np.r_[1.0, np.cumprod(1.0 + net)]  # from the starting equity: a first-bar loss is a drawdown
    drawdown = 1.0 - equity / np.maximum.accumulate(equity)
    std = float(net.std()) if len(net) > 1 else 0.0
    result = {
        "total_return": float(equity[-1] - 1.0),
        "sharpe": float(net.mean() / std * np.sqrt(bars_per_year)) if std > 0 else 0.0,
        "max_drawdown": float(drawdown.max()),
        "bars": len(net),
    }
    if position is not None:
        changes = np.abs(np.diff(np.r_[0.0, position, 0.0]))
        result["turnover_per_year"] = float(changes.sum() / years) if years else 0.0
        result["trades"] = int((np.diff(np.r_[0.0, position]) > 0).sum())
        result["exposure"] = float(position.mean()) if len(position) else 0.0
    return result


def backtest(frame: pd.DataFrame, probability: np.ndarray, spec: TrainingSpec) -> dict:
    """The signal's and buy-and-hold's performance over ``frame`` (rows of one or more pairs, in time
    order), each pair traded on its own and the pairs held in equal weight."""
    strategy, hold, held = [], [], []
    for pair in dict.fromkeys(frame["pair"]):
        mask = (frame["pair"] == pair).to_numpy()
        nxt = frame["next_return"].to_numpy()[mask]
        index = frame.index[mask]
        pos = positions(
            probability[mask],
            entry=spec.entry_probability,
            exit_=spec.exit_probability,
            min_hold=spec.horizon,
        )
        strategy.append(pd.Series(strategy_returns(pos, nxt, fee=spec.taker_fee), index=index))
        held.append(pd.Series(pos, index=index))
        hold.append(pd.Series(strategy_returns(np.ones(mask.sum()), nxt, fee=spec.taker_fee), index=index))
    mean = lambda series: pd.concat(series, axis=1).mean(axis=1).to_numpy()  # noqa: E731
    per_year = spec.bars_per_year
    return {
        "strategy": performance(mean(strategy), bars_per_year=per_year, position=mean(held)),
        "buy_hold": performance(mean(hold), bars_per_year=per_year),
    }


def classification(y: np.ndarray, probability: np.ndarray) -> dict:
    known = ~np.isnan(y)
    y, probability = y[known], probability[known]
    if not len(y):
        return {"hit_rate": None, "log_loss": None, "base_rate": None, "scored_bars": 0}
    clipped = np.clip(probability, 1e-6, 1 - 1e-6)
    return {
        "hit_rate": float(((probability >= 0.5) == (y == 1)).mean()),
        "log_loss": float(log_loss(y, clipped, labels=[0.0, 1.0])),
        "base_rate": float(y.mean()),
        "scored_bars": len(y),
    }


# --- Walk-forward -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fold:
    number: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp


def folds(dataset: Dataset, spec: TrainingSpec) -> list[Fold]:
    times = dataset.times
    step = pd.Timedelta(minutes=spec.timeframe)
    gap = step * spec.gap_bars
    min_train = spec.min_train_bars or len(times) // 2
    first_test = min_train + spec.gap_bars
    if len(times) - first_test < spec.n_folds * 24:
        raise LearningDataError(
            "+".join(dataset.pairs),
            f"{len(times)} usable bars: too few for {spec.n_folds} walk-forward folds after "
            f"{min_train} training bars and a {spec.gap_bars}-bar purge",
        )
    blocks = np.array_split(np.arange(first_test, len(times)), spec.n_folds)
    result = []
    for number, block in enumerate(blocks, start=1):
        test_start, test_end = times[block[0]], times[block[-1]]
        train_end = test_start - gap - step
        train_start = (
            times[0] if spec.mode == "expanding" else max(times[0], train_end - step * spec.rolling_bars)
        )
        result.append(Fold(number, train_start, train_end, test_start, test_end))
    return result


@dataclass(frozen=True)
class PreviousModel:
    """The champion to compare with: its predictor, features, and the last bar it was trained on. Only
    out-of-sample bars after ``trained_until`` plus the purge count (before that it has seen the
    answers): see :func:`comparison_cutoff`."""

    model: TrainedModel
    version_id: int
    trained_until: pd.Timestamp


def comparison_cutoff(previous: PreviousModel, spec: TrainingSpec) -> pd.Timestamp:
    """The last bar the champion may have seen: its last training label read the close ``horizon`` bars
    after ``trained_until``; the embargo and the candidate's own horizon, when longer, are kept too. Bars
    strictly after it are new to the champion."""
    bars = max(spec.gap_bars, previous.model.horizon + spec.embargo_bars)
    return previous.trained_until + pd.Timedelta(minutes=spec.timeframe) * bars


def unavailable_previous(*, version_id: int, trained_until: pd.Timestamp | None, why: str) -> dict:
    """The ``previous`` summary of a champion that could not be evaluated (e.g. its artifact failed the
    integrity check): recorded, so the gate knows there is no head-to-head and why."""
    return {
        "version_id": version_id,
        "trained_until": None if trained_until is None else _stamp(trained_until),
        "comparable_bars": 0,
        "unavailable": why,
    }


@dataclass
class WalkForwardResult:
    spec: TrainingSpec
    pairs: tuple[str, ...]
    folds: list[dict]
    oos: dict
    previous: dict | None
    data_sha256: str

    @property
    def score(self) -> float:
        """What the promotion gate compares: the out-of-sample net Sharpe of the signal."""
        return self.oos["strategy"]["sharpe"]

    def to_dict(self) -> dict:
        return {
            "score": self.score,
            "score_name": "oos_strategy_sharpe",
            "oos": self.oos,
            "folds": self.folds,
            "previous": self.previous,
        }


def _fit(frame: pd.DataFrame, spec: TrainingSpec):
    labelled = frame[frame["label"].notna()]
    pipeline = make_pipeline(spec.kind, spec.params, random_state=spec.random_state)
    with threadpool_limits(limits=spec.threads, user_api="openmp"):
        pipeline.fit(labelled[list(FEATURES)].to_numpy(), labelled["label"].to_numpy())
    return pipeline, labelled


def _stamp(moment: pd.Timestamp) -> str:
    return moment.isoformat()


def walk_forward(
    dataset: Dataset,
    spec: TrainingSpec,
    *,
    previous: PreviousModel | None = None,
    on_fold: Callable[[int, int], None] | None = None,
) -> WalkForwardResult:
    frame = dataset.frame
    plan = folds(dataset, spec)
    fold_reports, oos_parts, oos_probability, prev_parts = [], [], [], []
    cutoff, incompatible = None, None
    if previous is not None:
        cutoff = comparison_cutoff(previous, spec)
        missing = [name for name in previous.model.features if name not in frame.columns]
        if missing:
            incompatible = f"model incompatible: its feature(s) {', '.join(missing[:4])} no longer exist"
    for fold in plan:
        # train_end is horizon + embargo + 1 bars before the test: no training label reads a test price.
        train = frame[(frame.index >= fold.train_start) & (frame.index <= fold.train_end)]
        test = frame[(frame.index >= fold.test_start) & (frame.index <= fold.test_end)]
        pipeline, labelled = _fit(train, spec)
        with threadpool_limits(limits=spec.threads, user_api="openmp"):
            probability = positive_probability(pipeline, test[list(FEATURES)].to_numpy())
        report = {
            "fold": fold.number,
            "train": [_stamp(labelled.index.min()), _stamp(labelled.index.max()), len(labelled)],
            "test": [_stamp(fold.test_start), _stamp(fold.test_end), len(test)],
            **classification(test["label"].to_numpy(), probability),
            **backtest(test, probability, spec),
            "previous": None,
        }
        unseen = None if cutoff is None or incompatible else (test.index > cutoff)
        if unseen is not None and unseen.any():
            # Bar by bar: the champion on this fold's bars that come after what it was trained on.
            rows, mine = test[unseen], probability[unseen]
            with threadpool_limits(limits=spec.threads, user_api="openmp"):
                theirs = previous.model.predict(rows[previous.model.features].to_numpy())
            report["previous"] = {
                "bars": int(rows.index.nunique()),
                **classification(rows["label"].to_numpy(), theirs),
                **backtest(rows, theirs, spec),
            }
            prev_parts.append((rows, mine, theirs))
        fold_reports.append(report)
        oos_parts.append(test)
        oos_probability.append(probability)
        if on_fold is not None:
            on_fold(fold.number, len(plan))
    oos_frame = pd.concat(oos_parts)
    probability = np.concatenate(oos_probability)
    oos = {
        **classification(oos_frame["label"].to_numpy(), probability),
        **backtest(oos_frame, probability, spec),
    }
    summary = None
    if previous is not None:
        summary = (
            unavailable_previous(
                version_id=previous.version_id, trained_until=previous.trained_until, why=incompatible
            )
            if incompatible
            else _previous_summary(previous, prev_parts, spec, cutoff)
        )
    return WalkForwardResult(
        spec=spec,
        pairs=dataset.pairs,
        folds=fold_reports,
        oos=oos,
        previous=summary,
        data_sha256=dataset.data_sha256,
    )


def _previous_summary(previous: PreviousModel, parts: list, spec: TrainingSpec, cutoff) -> dict:
    """Candidate and champion on the same bars: the out-of-sample bars after ``cutoff`` (the champion's
    training data plus the purge). ``comparable_bars`` counts bar times (a pooled model has several rows
    per bar)."""
    summary: dict[str, Any] = {
        "version_id": previous.version_id,
        "trained_until": _stamp(previous.trained_until),
        "after": _stamp(cutoff),
    }
    if not parts:
        summary["comparable_bars"] = 0
        return summary
    frame = pd.concat([part[0] for part in parts])
    mine = np.concatenate([part[1] for part in parts])
    theirs = np.concatenate([part[2] for part in parts])
    y = frame["label"].to_numpy()
    summary["comparable_bars"] = int(frame.index.nunique())
    summary["candidate"] = {**classification(y, mine), **backtest(frame, mine, spec)}
    summary["champion"] = {**classification(y, theirs), **backtest(frame, theirs, spec)}
    return summary


def fit_final(dataset: Dataset, spec: TrainingSpec) -> tuple[TrainedModel, pd.Timestamp, pd.Timestamp]:
    """The model to register: fitted on every labelled bar. Returns it with the first and last bar used."""
    pipeline, labelled = _fit(dataset.frame, spec)
    model = TrainedModel(
        pipeline=pipeline,
        features=list(FEATURES),
        kind=spec.kind,
        horizon=spec.horizon,
        timeframe=spec.timeframe,
        meta={"pairs": list(dataset.pairs), "spec": spec.to_dict()},
    )
    return model, labelled.index.min(), labelled.index.max()
