"""Features: no look-ahead, train/live parity, cross-asset alignment, gaps, labels, and bad input."""

import numpy as np
import pandas as pd
import pytest
from pandas.testing import assert_frame_equal

from learning.errors import LearningDataError
from learning.features import (
    FEATURES,
    WARMUP_BARS,
    feature_frame,
    labels,
    prepare_candles,
    round_trip_cost,
)
from learning.inference import INFERENCE_BARS, predict_latest
from learning.modeling import TrainedModel, make_pipeline
from tests.learning.synthetic import candles


def prepared(frame, pair="BTC/USD", min_bars=200):
    return prepare_candles(frame, pair=pair, timeframe=60, min_bars=min_bars)


@pytest.mark.parametrize("cut", [400, 777, 1234])
def test_changing_or_removing_the_future_leaves_features_up_to_t_unchanged(cut):
    history = candles(1500, seed=3)
    t = history.index[cut]
    before = feature_frame(prepared(history))

    scrambled = history.copy()
    future = scrambled.index > t
    rng = np.random.default_rng(99)
    scrambled.loc[future, ["open", "high", "low", "close"]] *= rng.uniform(0.5, 2.0, (future.sum(), 1))
    scrambled.loc[future, "high"] = scrambled.loc[future, ["open", "high", "low", "close"]].max(axis=1)
    scrambled.loc[future, "low"] = scrambled.loc[future, ["open", "high", "low", "close"]].min(axis=1)
    scrambled.loc[future, "volume"] *= 10
    after_scramble = feature_frame(prepared(scrambled))
    truncated = feature_frame(prepared(history[history.index <= t]))

    assert_frame_equal(after_scramble.loc[:t], before.loc[:t], check_exact=True)
    assert_frame_equal(truncated, before.loc[:t], check_exact=True)
    # …and the scramble did change what came after t, so the comparison could have failed.
    assert not after_scramble.loc[t:].iloc[1:].equals(before.loc[t:].iloc[1:])


def test_features_on_a_trailing_window_equal_the_full_history_after_warm_up():
    history = candles(3000, seed=4)
    full = feature_frame(prepared(history))
    window = history.iloc[-INFERENCE_BARS:]
    live = feature_frame(prepared(window))
    overlap = live.iloc[WARMUP_BARS - 1 :]
    assert overlap.notna().all().all()
    assert_frame_equal(overlap, full.loc[overlap.index], check_exact=True)
    # During the warm-up the trailing window cannot know the long windows: NaN, never a guess.
    assert live.iloc[: WARMUP_BARS - 1]["trend_168"].isna().all()


def test_live_prediction_equals_the_training_frame_prediction_at_the_same_bar():
    btc, eth = candles(2000, seed=5, price=30000), candles(2000, seed=6, price=2000)
    btc_full, eth_full = prepared(btc), prepared(eth, "ETH/USD")
    training = feature_frame(eth_full, btc_full)
    usable = training.dropna()
    y = (usable["ret_1"].shift(-1) > 0).astype(float).iloc[:-1]
    pipeline = make_pipeline("hgb", {"max_iter": 20}).fit(usable.iloc[:-1].to_numpy(), y.to_numpy())
    model = TrainedModel(pipeline=pipeline, features=list(FEATURES), kind="hgb", horizon=1, timeframe=60)
    for end in (1500, 1999):
        live = predict_latest(
            model,
            prepared(eth.iloc[end - INFERENCE_BARS + 1 : end + 1], "ETH/USD"),
            prepared(btc.iloc[end - INFERENCE_BARS + 1 : end + 1]),
        )
        row = training.iloc[[end]].to_numpy()
        assert live.bar_time == eth.index[end]
        assert live.probability == model.predict(row)[0]


def test_altcoins_get_btc_returns_aligned_by_time():
    btc, eth = candles(600, seed=7, price=30000), candles(600, seed=8, price=2000)
    eth = eth.iloc[50:]  # starts later than BTC
    features = feature_frame(prepared(eth, "ETH/USD"), prepared(btc))
    own_btc = feature_frame(prepared(btc))
    common = features.index
    assert_frame_equal(
        features[["btc_ret_1", "btc_ret_24"]],
        own_btc.loc[common, ["ret_1", "ret_24"]].set_axis(["btc_ret_1", "btc_ret_24"], axis=1),
    )
    with pytest.raises(LearningDataError, match=r"ETH/USD: cross-asset features need BTC/USD"):
        feature_frame(prepared(eth, "ETH/USD"))


def test_short_gaps_are_flat_bars_and_outages_blank_the_features_around_them():
    history = candles(1200, seed=9)
    holed = history.drop(history.index[300:302]).drop(history.index[700:710])
    result = prepared(holed)
    assert [(gap.bars, gap.filled) for gap in result.gaps] == [(2, True), (10, False)]
    filled = result.frame.loc[history.index[300]]
    previous_close = history["close"].iloc[299]
    assert (filled["open"], filled["close"], filled["volume"]) == (previous_close, previous_close, 0.0)

    features = feature_frame(result)
    assert features.loc[history.index[700:710]].isna().all().all()
    assert np.isnan(features.loc[history.index[715], "vol_24"])  # its window reaches into the outage
    assert features.loc[history.index[710 + WARMUP_BARS]].notna().all()  # back after the warm-up

    model = TrainedModel(make_pipeline("logistic"), list(FEATURES), "logistic", 1, 60)
    with pytest.raises(
        LearningDataError, match=r"BTC/USD: features at .* have gaps \(10 bars from 2024-01-30"
    ):
        predict_latest(model, prepared(holed.iloc[:720], min_bars=WARMUP_BARS), None)


def test_label_is_one_only_when_the_forward_return_beats_the_round_trip_fee():
    close = pd.Series([100.0, 100.5, 101.0, 100.0, 99.0, 101.0])
    result = labels(close, horizon=2, taker_fee=0.004)  # round trip 0.8 %
    # forward returns: +1.0 %, -0.5 %, -2.0 %, +1.0 %, unknown, unknown
    assert result.tolist()[:4] == [1.0, 0.0, 0.0, 1.0]
    assert result.iloc[4:].isna().all()
    assert round_trip_cost(0.004) == 0.008


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.iloc[:100], r"BTC/USD: only 100 closed 60m bars; need at least 200"),
        (
            lambda f: f.assign(open=100.0, high=100.0, low=100.0, close=100.0),
            r"BTC/USD: the close is constant \(100\)",
        ),
        (
            lambda f: f.assign(close=f["close"].where(f.index != f.index[50])),
            r"BTC/USD: 1 NaN value\(s\) in close, first at 2024-01-03T02:00",
        ),
        (
            lambda f: pd.concat([f, f.iloc[[10]]]),
            r"BTC/USD: bar 2024-01-01T10:00:00\+00:00 appears more than once",
        ),
        (lambda f: f.assign(low=f["low"].where(f.index != f.index[5], -1.0)), r"BTC/USD: non-positive price"),
        (
            lambda f: f.set_axis(f.index + pd.Timedelta(minutes=7) * (f.index > f.index[20]).astype(int)),
            r"not on the 60m grid",
        ),
        (lambda f: f.reset_index(drop=True), r"indexed by their UTC open time"),
    ],
    ids=["too-little", "constant", "nan", "duplicate", "negative", "off-grid", "no-time-index"],
)
def test_bad_candles_are_refused_with_the_pair_and_the_problem(mutate, message):
    with pytest.raises(LearningDataError, match=message):
        prepared(mutate(candles(400, seed=10)))
