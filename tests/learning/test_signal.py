"""The live signal: the champion on the trailing window of closed bars, or a stated reason for none."""

from datetime import timedelta

import pandas as pd
import pytest

from governance.actors import SystemActor
from learning import selectors, services
from learning.features import feature_frame
from tests.learning.conftest import fast_spec

SYSTEM = SystemActor("learning.tests")


def champion(instrument):
    """A real model made champion by a director's hand: the platform's own promotion re-checks the gate,
    which a model fitted on random candles need not pass (and the signal does not depend on it)."""
    outcome = services.model_train(
        actor=SYSTEM, instruments=[instrument], timeframe=60, spec=fast_spec(), promote=False
    )
    return services.model_promote(actor=_director(), version=outcome.version, reason="test")


def _director():
    from accounts.models import User

    return User.objects.get(username="alice")


@pytest.fixture(autouse=True)
def _directors(firm):
    """alice, a director, for :func:`champion`."""
    return firm


def at(market, hours_after_last_close=0, minutes=5):
    return market["end"].to_pydatetime() + timedelta(hours=1 + hours_after_last_close, minutes=minutes)


def test_without_a_champion_the_signal_says_so_and_still_gives_the_regime(market):
    signal = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=at(market))
    assert signal.status == "no_champion"
    assert signal.probability is None
    assert signal.regime in {"bullish", "bearish", "sideways"}
    assert "no champion model for 60m (train one: manage.py train)" in signal.message


@pytest.mark.parametrize("pair", ["btc", "eth"])
def test_signal_is_the_champion_on_the_features_of_the_last_closed_bar(market, pair):
    instrument = market[pair]
    version = champion(instrument)
    as_of = at(market)
    signal = selectors.signal_for(instrument=instrument, timeframe=60, as_of=as_of)

    assert signal.ok, signal.message
    assert signal.model_version_id == version.pk
    # The bar still forming (stored with closed=False) is not used: the last closed bar is.
    assert pd.Timestamp(signal.bar_time) == market["end"]
    # Same number as the full stored history gives through the training feature code.
    full = selectors.prepared_candles(instrument=instrument, timeframe=60, min_bars=500)
    btc = selectors.prepared_candles(instrument=market["btc"], timeframe=60, min_bars=500)
    row = feature_frame(full, btc).loc[[market["end"]]]
    model = selectors.model_load(version)
    assert signal.probability == pytest.approx(model.predict(row[model.features].to_numpy())[0], abs=1e-12)


def test_an_earlier_moment_sees_only_the_bars_closed_by_then(market):
    champion(market["btc"])
    as_of = at(market, hours_after_last_close=-100, minutes=30)
    signal = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=as_of)
    assert pd.Timestamp(signal.bar_time) == market["end"] - pd.Timedelta(hours=100)


def test_stale_and_insufficient_data_are_reported_not_guessed(market):
    champion(market["btc"])
    stale = selectors.signal_for(
        instrument=market["btc"], timeframe=60, as_of=at(market, hours_after_last_close=5)
    )
    assert stale.status == "stale_data"
    assert "newest closed 60m bar opened at" in stale.message
    early = market["start"].to_pydatetime() + timedelta(hours=50)
    short = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=early)
    assert short.status == "insufficient_data"
    assert short.message.startswith("BTC/USD: only 50 closed 60m bars; need at least 168")


def test_an_altcoin_without_btc_bars_is_insufficient_data_naming_btc(universe):
    from tests.learning.conftest import store
    from tests.learning.synthetic import candles

    frame = candles(400, seed=5)
    store(universe["ETH/USD"], frame)
    as_of = (frame.index[-1] + pd.Timedelta(hours=1, minutes=1)).to_pydatetime()
    signal = selectors.signal_for(instrument=universe["ETH/USD"], timeframe=60, as_of=as_of)
    assert signal.status == "insufficient_data"
    assert signal.message.startswith("BTC/USD: only 0 closed 60m bars")


def test_a_model_whose_features_no_longer_exist_is_reported_incompatible_not_raised(market):
    import dataclasses

    outcome = services.model_train(
        actor=SYSTEM, instruments=[market["btc"]], timeframe=60, spec=fast_spec(), promote=False
    )
    model = selectors.model_load(outcome.version)
    stale = dataclasses.replace(model, features=[*model.features[:-1], "retired_feature"])
    version = services.model_register(
        actor=SYSTEM,
        scope="BTC/USD",
        model=stale,
        result=outcome.result,
        training_start=pd.Timestamp(outcome.version.training_start),
        training_end=pd.Timestamp(outcome.version.training_end),
    )
    services.model_promote(actor=_director(), version=version, reason="test")

    signal = selectors.signal_for(instrument=market["btc"], timeframe=60, as_of=at(market))

    assert signal.status == "model_incompatible"
    assert (signal.probability, signal.model_version_id) == (None, version.pk)
    assert "retired_feature" in signal.message
    assert signal.regime in {"bullish", "bearish", "sideways"}
