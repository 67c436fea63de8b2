"""Fixtures of the learning tests: a private artifact directory, stored candles, quick training."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
from django.utils import timezone

from learning import selectors
from learning.walkforward import TrainingSpec
from tests.learning.synthetic import candles, predictable
from trading.candles import CandleRow
from trading.models import Candle
from trading.services import candles_upsert

BARS = 1600
QUANTUM = Decimal("0.000000000001")


@pytest.fixture(autouse=True)
def artifact_root(settings, tmp_path):
    settings.LEARNING_ARTIFACT_ROOT = str(tmp_path / "artifacts")
    selectors.model_cache_clear()
    yield tmp_path / "artifacts"
    selectors.model_cache_clear()


def fast_spec(**overrides) -> TrainingSpec:
    """Logistic (fits in milliseconds) where a test needs a real model but not a good one."""
    values = {"kind": "logistic", "min_train_bars": 800, "n_folds": 3, "taker_fee": 0.004}
    return TrainingSpec(**(values | overrides))


def store(instrument, frame: pd.DataFrame, *, forming_after: bool = True) -> None:
    def dec(value: float) -> Decimal:
        return Decimal(repr(float(value))).quantize(QUANTUM)

    rows = [
        CandleRow(moment.to_pydatetime(), dec(o), dec(h), dec(lo), dec(c), dec(v))
        for moment, o, h, lo, c, v in frame[["open", "high", "low", "close", "volume"]].itertuples()
    ]
    if forming_after:  # the bar still forming: never used
        last = frame.iloc[-1]
        rows.append(
            CandleRow(
                (frame.index[-1] + pd.Timedelta(hours=1)).to_pydatetime(),
                dec(last["close"]),
                dec(last["close"] * 3),
                dec(last["close"]),
                dec(last["close"] * 3),
                dec(1),
                None,
                False,
            )
        )
    candles_upsert(instrument=instrument, timeframe=60, rows=rows, source=Candle.Source.KRAKEN_CSV)


@pytest.fixture
def market(universe):
    """BTC/USD and ETH/USD with 1,600 closed hourly bars ending at the last full hour, as the bars were
    stored (Decimal), re-read as frames."""
    end = pd.Timestamp(timezone.now()).floor("h") - pd.Timedelta(hours=1)
    start = end - pd.Timedelta(hours=BARS - 1)
    btc = predictable(BARS, seed=21).set_axis(pd.date_range(start, periods=BARS, freq="h", name="open_time"))
    eth = candles(BARS, seed=22, price=2000.0).set_axis(btc.index)
    store(universe["BTC/USD"], btc * 300)
    store(universe["ETH/USD"], eth)
    return {"btc": universe["BTC/USD"], "eth": universe["ETH/USD"], "end": end, "start": start}
