"""Walk-forward: purged splits, the fee-aware backtest's arithmetic, metrics, the comparison with the
previous model, determinism."""

import numpy as np
import pandas as pd
import pytest

from learning.errors import LearningDataError
from learning.features import prepare_candles
from learning.gate import MIN_HEAD_TO_HEAD_BARS
from learning.walkforward import (
    PreviousModel,
    TrainingSpec,
    build_dataset,
    fit_final,
    folds,
    performance,
    positions,
    strategy_returns,
    walk_forward,
)
from tests.learning.synthetic import candles, predictable

FAST = {"max_iter": 30}


def dataset(frame=None, spec=None):
    prepared = prepare_candles(
        frame if frame is not None else predictable(), pair="BTC/USD", timeframe=60, min_bars=500
    )
    return build_dataset([prepared], btc=prepared, spec=spec or TrainingSpec(params=FAST, min_train_bars=800))


@pytest.mark.parametrize("mode", ["expanding", "rolling"])
def test_no_training_label_reads_a_price_inside_its_test_block(mode):
    spec = TrainingSpec(
        horizon=24, embargo_bars=6, n_folds=4, min_train_bars=800, mode=mode, rolling_bars=600
    )
    data = dataset(spec=spec)
    plan = folds(data, spec)
    hour = pd.Timedelta(hours=1)
    assert len(plan) == 4
    for previous, fold in zip([None, *plan], plan, strict=False):
        # The last training label looks 24 bars ahead: it must end before the test block begins, with the
        # embargo on top.
        assert fold.train_end + hour * spec.horizon < fold.test_start
        assert fold.test_start - fold.train_end == hour * (spec.horizon + spec.embargo_bars + 1)
        if previous is not None:
            assert fold.test_start > previous.test_end
        if mode == "rolling":
            assert fold.train_end - fold.train_start <= hour * 600
        else:
            assert fold.train_start == data.times[0]


def test_hysteresis_and_minimum_hold():
    p = np.array([0.5, 0.6, 0.5, 0.4, 0.4, 0.6, 0.3, 0.3])
    assert positions(p, entry=0.55, exit_=0.45).tolist() == [0, 1, 1, 0, 0, 1, 0, 0]
    # Held at least 3 bars once in: the exit at bar 3 waits until bar 4.
    assert positions(p, entry=0.55, exit_=0.45, min_hold=3).tolist() == [0, 1, 1, 1, 0, 1, 1, 1]


def test_fees_are_paid_on_every_change_and_to_close_at_the_end():
    position = np.array([0.0, 1.0, 1.0, 0.0, 1.0])
    next_return = np.array([0.05, 0.02, -0.01, 0.03, 0.01])
    net = strategy_returns(position, next_return, fee=0.004)
    assert net == pytest.approx([0.0, 0.02 - 0.004, -0.01, -0.004, 0.01 - 0.004 - 0.004])


def test_performance_figures():
    net = np.array([0.1, -0.5, 0.2, 0.0])
    result = performance(net, bars_per_year=4, position=np.array([1.0, 1.0, 0.0, 1.0]))
    assert result["total_return"] == pytest.approx(1.1 * 0.5 * 1.2 - 1)
    assert result["max_drawdown"] == pytest.approx(0.5)
    assert result["sharpe"] == pytest.approx(net.mean() / net.std() * 2)
    assert (result["trades"], result["exposure"]) == (2, 0.75)
    assert result["turnover_per_year"] == pytest.approx(4.0)  # in, out, in, out over one year


def test_max_drawdown_starts_from_the_starting_equity():
    result = performance(np.array([-0.10, 0.05, 0.02]), bars_per_year=4)
    assert result["max_drawdown"] == pytest.approx(0.10)
    assert performance(np.array([]), bars_per_year=4)["max_drawdown"] == 0.0


def test_walk_forward_reports_every_fold_against_buy_and_hold_and_is_deterministic():
    spec = TrainingSpec(params=FAST, min_train_bars=800, n_folds=3)
    data = dataset(spec=spec)
    first, second = walk_forward(data, spec), walk_forward(data, spec)
    assert first.to_dict() == second.to_dict()
    assert len(first.folds) == 3
    for fold in first.folds:
        assert {"hit_rate", "log_loss", "base_rate", "strategy", "buy_hold"} <= fold.keys()
        assert {"total_return", "sharpe", "max_drawdown", "turnover_per_year"} <= fold["strategy"].keys()
    assert first.oos["scored_bars"] == sum(fold["test"][2] for fold in first.folds) - spec.horizon
    # The planted momentum is learnable: better than the majority class out of sample.
    assert first.oos["hit_rate"] > max(first.oos["base_rate"], 1 - first.oos["base_rate"])
    assert first.score == first.oos["strategy"]["sharpe"]


def test_previous_model_is_compared_bar_by_bar_where_it_had_not_seen_the_answers():
    spec = TrainingSpec(params=FAST, min_train_bars=800, n_folds=4)
    data = dataset(spec=spec)
    model, _, _ = fit_final(dataset(predictable().iloc[:1500], spec), spec)
    plan = folds(data, spec)
    # Trained up to the middle of fold 2: its bars after that (plus the purge) count, not only whole
    # folds that start later.
    trained_until = plan[1].test_start + (plan[1].test_end - plan[1].test_start) / 2
    cutoff = trained_until + pd.Timedelta(hours=spec.gap_bars)
    result = walk_forward(data, spec, previous=PreviousModel(model, 7, trained_until))

    oos_times = data.times[(data.times >= plan[0].test_start)]
    unseen = oos_times[oos_times > cutoff]
    assert result.previous["version_id"] == 7
    assert result.previous["comparable_bars"] == len(unseen)
    assert result.previous["after"] == cutoff.isoformat()
    assert result.previous["candidate"]["strategy"]["bars"] == len(unseen)
    assert result.previous["champion"]["strategy"]["bars"] == len(unseen)
    compared = {fold["fold"]: fold["previous"] for fold in result.folds if fold["previous"] is not None}
    assert sorted(compared) == [2, 3, 4]
    fold_2_unseen = ((unseen >= plan[1].test_start) & (unseen <= plan[1].test_end)).sum()
    assert 0 < compared[2]["bars"] == fold_2_unseen < result.folds[1]["test"][2]
    assert [compared[n]["bars"] for n in (3, 4)] == [result.folds[2]["test"][2], result.folds[3]["test"][2]]


def test_a_champion_trained_into_the_only_fold_is_still_compared_on_the_bars_after_it():
    """One long fold (as with a retrain on a longer history): the champion was trained up to the fold's
    first bar. Whole-fold counting would compare nothing; bar by bar, every out-of-sample bar after its
    training and the purge counts: enough for a head-to-head."""
    spec = TrainingSpec(params=FAST, min_train_bars=800, n_folds=1)
    data = dataset(predictable(2600), spec=spec)
    model, _, _ = fit_final(dataset(predictable(2600).iloc[:1100], spec), spec)
    (fold,) = folds(data, spec)
    result = walk_forward(data, spec, previous=PreviousModel(model, 3, fold.test_start))
    # Unseen: after the champion's last training bar and the 24 bars its last label read.
    assert result.previous["comparable_bars"] == result.folds[0]["test"][2] - (spec.gap_bars + 1)
    assert result.previous["comparable_bars"] >= MIN_HEAD_TO_HEAD_BARS


def test_a_champion_with_features_that_no_longer_exist_is_recorded_as_unavailable():
    import dataclasses

    spec = TrainingSpec(params=FAST, min_train_bars=800, n_folds=2)
    data = dataset(spec=spec)
    model, _, _ = fit_final(data, spec)
    stale = dataclasses.replace(model, features=[*model.features[:-1], "retired_feature"])
    result = walk_forward(data, spec, previous=PreviousModel(stale, 5, folds(data, spec)[0].train_end))
    assert result.previous["comparable_bars"] == 0
    assert "retired_feature" in result.previous["unavailable"]
    assert all(fold["previous"] is None for fold in result.folds)


def test_the_data_hash_covers_the_btc_candles_behind_an_altcoins_cross_features():
    spec = TrainingSpec(params=FAST, min_train_bars=800)
    eth = prepare_candles(candles(1600, seed=8, price=2000.0), pair="ETH/USD", timeframe=60, min_bars=500)
    btc_frame = predictable(1600, seed=9)
    btc = prepare_candles(btc_frame, pair="BTC/USD", timeframe=60, min_bars=500)
    moved = btc_frame.copy()
    moved.iloc[1000, moved.columns.get_loc("close")] *= 1.01
    moved.iloc[1000, moved.columns.get_loc("high")] *= 1.01
    btc_moved = prepare_candles(moved, pair="BTC/USD", timeframe=60, min_bars=500)

    first = build_dataset([eth], btc=btc, spec=spec)
    second = build_dataset([eth], btc=btc_moved, spec=spec)

    assert not first.frame["btc_ret_1"].equals(second.frame["btc_ret_1"])  # the features did change
    assert first.data_sha256 != second.data_sha256
    assert build_dataset([eth], btc=btc, spec=spec).data_sha256 == first.data_sha256  # deterministic


def test_too_little_history_is_a_clear_error():
    with pytest.raises(
        LearningDataError, match=r"BTC/USD: \d+ bars with complete features .* need at least 800"
    ):
        dataset(candles(900), TrainingSpec(min_train_bars=800))
