"""Market regime per bar: bullish, bearish or sideways. Plain Python, no Django.

**The rule set is what strategy and risk use.** At each closed bar it takes the least-squares slope of log
close over the last ``trend_window`` bars and the standard deviation of one-bar log returns over the same
window, and forms the trend's strength: the move the slope implies over the window divided by the noise
expected over it, ``z = slope * sqrt(window) / volatility``. ``z > threshold`` is bullish, ``z < -threshold``
bearish, anything between sideways. (On a driftless random walk ``z`` has a standard deviation of about
1.1, so 2.0 calls a trend on noise only a few percent of the time.) It is causal (only bars up to the one
labelled), deterministic, and every label can be explained from two numbers stored beside it.

The Gaussian mixture (:func:`gmm_regimes`) is a comparison only: three components fitted over
(trailing mean return, trailing volatility), named by their mean return. It is fitted on the whole series it
labels, so it sees the future of early bars, and its components can change meaning when refitted; that is
why it does not drive decisions. The walk-forward report prints how often the two agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from learning.rolling import lag, rolling_mean, rolling_slope, rolling_std, safe_divide

BULLISH, BEARISH, SIDEWAYS = "bullish", "bearish", "sideways"
LABELS = (BULLISH, BEARISH, SIDEWAYS)
# As a model feature: +1 bullish, -1 bearish, 0 sideways.
CODES = {BULLISH: 1.0, BEARISH: -1.0, SIDEWAYS: 0.0}


@dataclass(frozen=True, slots=True)
class RegimeRules:
    trend_window: int = 72
    threshold: float = 2.0


DEFAULT_RULES = RegimeRules()


@dataclass(frozen=True, slots=True)
class RegimeInputs:
    slope: np.ndarray  # log-price slope per bar
    volatility: np.ndarray  # std of one-bar log returns
    strength: np.ndarray  # z


def regime_inputs(close: np.ndarray, rules: RegimeRules = DEFAULT_RULES) -> RegimeInputs:
    log_close = np.log(close)
    return regime_inputs_of_log(log_close, log_close - lag(log_close, 1), rules)


def regime_inputs_of_log(
    log_close: np.ndarray,
    returns: np.ndarray,
    rules: RegimeRules = DEFAULT_RULES,
    *,
    volatility: np.ndarray | None = None,
) -> RegimeInputs:
    """:func:`regime_inputs` from the log closes and their one-bar log returns (the feature function has
    them already, and ``volatility``, ``rolling_std(returns, rules.trend_window)``, when it has that too):
    the same arithmetic, so the same labels."""
    slope = rolling_slope(log_close, rules.trend_window)
    if volatility is None:
        volatility = rolling_std(returns, rules.trend_window)
    strength = safe_divide(slope * np.sqrt(rules.trend_window), volatility, default=0.0)
    return RegimeInputs(slope=slope, volatility=volatility, strength=strength)


def regime_codes(close: np.ndarray, rules: RegimeRules = DEFAULT_RULES) -> np.ndarray:
    """+1 / -1 / 0 per bar (NaN during warm-up and next to gaps)."""
    return codes_of(regime_inputs(close, rules).strength, rules)


def codes_of(strength: np.ndarray, rules: RegimeRules = DEFAULT_RULES) -> np.ndarray:
    codes = np.where(strength > rules.threshold, 1.0, np.where(strength < -rules.threshold, -1.0, 0.0))
    return np.where(np.isnan(strength), np.nan, codes)


def label_of(code: float) -> str | None:
    if np.isnan(code):
        return None
    return BULLISH if code > 0 else BEARISH if code < 0 else SIDEWAYS


def regime_labels(close: np.ndarray, rules: RegimeRules = DEFAULT_RULES) -> list[str | None]:
    return [label_of(code) for code in regime_codes(close, rules)]


def gmm_regimes(close: np.ndarray, *, window: int = 72, random_state: int = 0) -> list[str | None]:
    """The comparison model: a 3-component Gaussian mixture over (trailing mean log return, trailing
    volatility), components named by mean return (highest bullish, lowest bearish)."""
    from sklearn.mixture import GaussianMixture

    log_close = np.log(close)
    returns = log_close - lag(log_close, 1)
    points = np.column_stack([rolling_mean(returns, window), rolling_std(returns, window)])
    usable = ~np.isnan(points).any(axis=1)
    if usable.sum() < 30:
        raise ValueError(f"a Gaussian mixture needs at least 30 bars past the {window}-bar warm-up")
    scale = points[usable].std(axis=0)
    scale[scale == 0] = 1.0
    mixture = GaussianMixture(n_components=3, random_state=random_state).fit(points[usable] / scale)
    order = np.argsort(mixture.means_[:, 0])  # by mean return
    names = {order[0]: BEARISH, order[1]: SIDEWAYS, order[2]: BULLISH}
    components = mixture.predict(points[usable] / scale)
    labels: list[str | None] = [None] * len(close)
    for position, component in zip(np.flatnonzero(usable), components, strict=True):
        labels[position] = names[component]
    return labels
