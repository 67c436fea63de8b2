"""Live inference on a trailing window: the same feature function as training. Plain Python, no Django."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from learning.errors import LearningDataError, ModelIncompatible
from learning.features import FEATURES, WARMUP_BARS, PreparedCandles, features_of
from learning.modeling import TrainedModel
from learning.regime import label_of

# Bars read for one live prediction: the longest feature window plus room for a few filled gaps.
INFERENCE_BARS = WARMUP_BARS + 87


@dataclass(frozen=True, slots=True)
class Prediction:
    probability: float
    regime: str | None
    bar_time: pd.Timestamp  # open time of the closed bar the prediction is made at


def predict_latest(model: TrainedModel, prepared: PreparedCandles, btc: PreparedCandles | None) -> Prediction:
    """The model's probability at the newest bar of ``prepared``. Refuses, naming the pair, when that
    bar's features are incomplete (a gap inside the trailing window); raises :class:`ModelIncompatible`
    when the model was trained on a feature the feature function no longer computes."""
    missing = [name for name in model.features if name not in FEATURES]
    if missing:
        raise ModelIncompatible(
            f"model incompatible: trained on feature(s) {', '.join(missing[:4])}"
            f"{'…' if len(missing) > 4 else ''} that the current feature function no longer computes "
            "(retrain it)"
        )
    last = features_of(prepared, btc)[-1]
    positions = [FEATURES.index(name) for name in model.features]
    row = last[positions]
    if np.isnan(row).any():
        incomplete = [name for name, value in zip(model.features, row, strict=True) if np.isnan(value)]
        gaps = ", ".join(f"{gap.bars} bars from {gap.start.isoformat()}" for gap in prepared.unfilled_gaps)
        raise LearningDataError(
            prepared.pair,
            f"features at {prepared.index[-1].isoformat()} are incomplete ({', '.join(incomplete[:4])}"
            f"{'…' if len(incomplete) > 4 else ''}): the trailing {len(prepared.index)} bars "
            + (f"have gaps ({gaps})" if gaps else "are too short"),
        )
    probability = float(model.predict(row.reshape(1, -1))[0])
    regime = label_of(last[FEATURES.index("regime")])
    return Prediction(probability=probability, regime=regime, bar_time=prepared.index[-1])
