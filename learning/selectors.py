"""Reads of the learning app: candles as frames, the registry, regimes, live signals, thresholds."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta

import numpy as np
import pandas as pd

from aether_site.rows import select_rows
from learning.errors import ArtifactIntegrityError, LearningDataError, ModelIncompatible
from learning.features import BTC, COLUMNS, WARMUP_BARS, PreparedCandles, features_of, prepare_candles
from learning.inference import INFERENCE_BARS, predict_latest
from learning.modeling import TrainedModel, load_artifact
from learning.models import ModelVersion, RegimeObservation, StrategyThresholds
from learning.regime import label_of, regime_codes
from trading.models import Candle, Instrument


def candle_frame(*, instrument: Instrument, timeframe: int, since=None, until=None, last: int | None = None):
    """Closed bars as a float frame indexed by open time (``until`` exclusive; ``last``: only the newest
    that many)."""
    candles = Candle.objects.filter(instrument=instrument, timeframe=timeframe, closed=True)
    if since is not None:
        candles = candles.filter(open_time__gte=since)
    if until is not None:
        candles = candles.filter(open_time__lt=until)
    fields = ("open_time", *COLUMNS)
    if last is not None:
        rows = list(candles.order_by("-open_time").values_list(*fields)[:last])[::-1]
    else:
        rows = list(candles.order_by("open_time").values_list(*fields))
    index = pd.DatetimeIndex([row[0] for row in rows], name="open_time")
    if index.tz is None and len(index):
        index = index.tz_localize("UTC")
    values = np.array([row[1:] for row in rows], dtype=float).reshape(len(rows), len(COLUMNS))
    return pd.DataFrame(values, index=index if len(rows) else pd.DatetimeIndex([], tz="UTC"), columns=COLUMNS)


def prepared_candles(
    *, instrument: Instrument, timeframe: int, min_bars: int, since=None, until=None, last: int | None = None
) -> PreparedCandles:
    frame = candle_frame(instrument=instrument, timeframe=timeframe, since=since, until=until, last=last)
    return prepare_candles(frame, pair=instrument.symbol, timeframe=timeframe, min_bars=min_bars)


def btc_instrument() -> Instrument:
    instrument = Instrument.objects.filter(symbol=BTC).first()
    if instrument is None:
        raise LearningDataError(
            BTC, "not in the synced universe; cross-asset features need it (sync_universe)"
        )
    return instrument


# --- Registry --------------------------------------------------------------------------------------------


def champion_for(*, scope: str, timeframe: int) -> ModelVersion | None:
    return ModelVersion.objects.filter(
        scope=scope, timeframe=timeframe, status=ModelVersion.Status.CHAMPION
    ).first()


def serving_champion(*, symbol: str, timeframe: int) -> ModelVersion | None:
    """The pair's own champion, else the pooled one (both read in one query; per scope, the one
    :func:`champion_for` returns)."""
    found: dict[str, ModelVersion] = {}
    versions = select_rows(  # read on every cycle: ``aether_site.rows``, in the model's ordering
        ModelVersion,
        "scope IN (%s, %s) AND timeframe = %s AND status = %s",
        [symbol, ModelVersion.POOLED, timeframe, ModelVersion.Status.CHAMPION.value],
        order_by="created_at DESC, id DESC",
    )
    for version in versions:  # as champion_for's first(), per scope
        found.setdefault(version.scope, version)
    return found.get(symbol) or found.get(ModelVersion.POOLED)


def model_versions(*, scope: str | None = None, timeframe: int | None = None):
    versions = ModelVersion.objects.all()
    if scope is not None:
        versions = versions.filter(scope=scope)
    if timeframe is not None:
        versions = versions.filter(timeframe=timeframe)
    return versions.order_by("-created_at", "-id")


_CACHE: OrderedDict[str, TrainedModel] = OrderedDict()
_CACHE_LOCK = threading.Lock()
CACHE_SIZE = 16


def model_load(version: ModelVersion) -> TrainedModel:
    """The version's fitted model, read through storage and verified against its SHA-256 before it is
    unpickled. Kept in this process keyed by that hash (a changed file is a different key)."""
    key = version.artifact_sha256
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    try:
        with version.artifact.open("rb") as handle:
            data = handle.read()
    except (FileNotFoundError, OSError) as exc:
        raise ArtifactIntegrityError(
            f"model #{version.pk}: artifact {version.artifact.name} unreadable ({exc})"
        ) from None
    model = load_artifact(data, expected_sha256=key, name=f"model #{version.pk} ({version.artifact.name})")
    with _CACHE_LOCK:
        _CACHE[key] = model
        while len(_CACHE) > CACHE_SIZE:
            _CACHE.popitem(last=False)
    return model


def model_cache_clear() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


# --- Live signal -----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Signal:
    """What the strategy reads for one pair at one moment. ``status`` is ``ok`` only with a probability;
    otherwise ``message`` says why there is none (never a silent default)."""

    pair: str
    timeframe: int
    as_of: datetime
    status: str  # ok | no_champion | artifact_invalid | model_incompatible | insufficient_data | stale_data
    probability: float | None = None
    model_version_id: int | None = None
    regime: str | None = None
    bar_time: datetime | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def _closed_by(*, instrument: Instrument, timeframe: int, as_of: datetime) -> PreparedCandles:
    """The trailing window of bars that had closed at ``as_of``."""
    until = as_of - timedelta(minutes=timeframe) + timedelta(microseconds=1)
    return prepared_candles(
        instrument=instrument, timeframe=timeframe, min_bars=WARMUP_BARS, until=until, last=INFERENCE_BARS
    )


def signal_for(*, instrument: Instrument, timeframe: int, as_of: datetime) -> Signal:
    """The serving champion's probability that a long entered now nets a gain over its horizon, with the
    model version and the regime, from the closed bars at ``as_of`` (features on the trailing window)."""
    return market_inputs_for(instrument=instrument, timeframe=timeframe, as_of=as_of)[0]


def market_inputs_for(
    *, instrument: Instrument, timeframe: int, as_of: datetime
) -> tuple[Signal, np.ndarray | None]:
    """:func:`signal_for` and the newest feature row (``FEATURES`` order) it was computed from, for the
    strategy; the row is ``None`` when there are not enough closed bars (the signal says why)."""
    base = {"pair": instrument.symbol, "timeframe": timeframe, "as_of": as_of}
    try:
        prepared = _closed_by(instrument=instrument, timeframe=timeframe, as_of=as_of)
        btc = (
            None
            if instrument.symbol == BTC
            else _closed_by(instrument=btc_instrument(), timeframe=timeframe, as_of=as_of)
        )
        row = features_of(prepared, btc)[-1]
    except LearningDataError as exc:
        return Signal(**base, status="insufficient_data", message=str(exc)), None
    return _signal_of(prepared, btc, instrument=instrument, timeframe=timeframe, base=base), row


def _signal_of(
    prepared: PreparedCandles,
    btc: PreparedCandles | None,
    *,
    instrument: Instrument,
    timeframe: int,
    base: dict,
) -> Signal:
    as_of = base["as_of"]
    regime = label_of(regime_codes(prepared.frame["close"].to_numpy())[-1])
    bar_time = prepared.frame.index[-1].to_pydatetime()
    if bar_time < as_of - timedelta(minutes=2 * timeframe):
        return Signal(
            **base,
            status="stale_data",
            regime=regime,
            bar_time=bar_time,
            message=f"{instrument.symbol}: newest closed {timeframe}m bar opened at {bar_time.isoformat()}",
        )
    version = serving_champion(symbol=instrument.symbol, timeframe=timeframe)
    if version is None:
        return Signal(
            **base,
            status="no_champion",
            regime=regime,
            bar_time=bar_time,
            message=f"{instrument.symbol}: no champion model for {timeframe}m (train one: manage.py train)",
        )
    try:
        model = model_load(version)
    except ArtifactIntegrityError as exc:
        return Signal(
            **base, status="artifact_invalid", model_version_id=version.pk, regime=regime, message=str(exc)
        )
    try:
        prediction = predict_latest(model, prepared, btc)
    except ModelIncompatible as exc:
        return Signal(
            **base,
            status="model_incompatible",
            model_version_id=version.pk,
            regime=regime,
            bar_time=bar_time,
            message=f"{instrument.symbol}: model #{version.pk}: {exc}",
        )
    except LearningDataError as exc:
        return Signal(
            **base, status="insufficient_data", model_version_id=version.pk, regime=regime, message=str(exc)
        )
    return Signal(
        **base,
        status="ok",
        probability=prediction.probability,
        model_version_id=version.pk,
        regime=prediction.regime,
        bar_time=prediction.bar_time.to_pydatetime(),
        message=f"{instrument.symbol}: model #{version.pk} at bar {prediction.bar_time.isoformat()}",
    )


# --- Regimes, thresholds ---------------------------------------------------------------------------------


def current_regime(*, instrument: Instrument, timeframe: int, as_of: datetime, method: str = "rules"):
    """The newest stored regime observation at or before ``as_of`` (None when none is stored)."""
    return (
        RegimeObservation.objects.filter(
            instrument=instrument, timeframe=timeframe, method=method, open_time__lte=as_of
        )
        .order_by("-open_time")
        .first()
    )


def regime_series(*, instrument: Instrument, timeframe: int, since=None, until=None, method: str = "rules"):
    rows = RegimeObservation.objects.filter(instrument=instrument, timeframe=timeframe, method=method)
    if since is not None:
        rows = rows.filter(open_time__gte=since)
    if until is not None:
        rows = rows.filter(open_time__lt=until)
    return rows.order_by("open_time")


def thresholds_list(*, user):
    return StrategyThresholds.objects.for_user(user).select_related("account")
