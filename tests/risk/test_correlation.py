from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from risk.engine import correlated_groups, group_exposures, groups_from, rolling_correlations

KRAKEN = Path(__file__).resolve().parents[3] / "shared" / "data" / "market" / "kraken"
COLUMNS = ["time", "open", "high", "low", "close", "volume", "trades"]


def hourly_closes() -> pd.DataFrame:
    files = {"BTC/USD": KRAKEN / "XBTUSD_60.csv", "ETH/USD": KRAKEN / "ETHUSD_60.csv"}
    missing = [str(path) for path in files.values() if not path.exists()]
    if missing:
        pytest.skip(f"shared Kraken hourly data not found: {', '.join(missing)}")
    series = {
        symbol: pd.read_csv(path, names=COLUMNS, index_col="time", usecols=["time", "close"])["close"]
        for symbol, path in files.items()
    }
    # Kraken omits hours without trades: align on the union of hours (a missing close stays NaN), up to the
    # last hour both files cover (the ETH file runs on after the BTC file ends on 2023-01-07)
    closes = pd.concat(series, axis=1).sort_index()
    return closes.loc[: min(closes[column].last_valid_index() for column in closes)]


def test_btc_and_eth_form_one_group_at_0_6_and_not_at_0_99():
    closes = hourly_closes()
    measured = correlated_groups(closes, window=720, threshold=0.6)
    rho = measured.correlation("BTC/USD", "ETH/USD")
    # the last 720 hourly returns of the shared data (up to 2023-01-07): rho ≈ 0.885
    assert rho == pytest.approx(0.885, abs=0.005)
    assert measured.groups == (frozenset({"BTC/USD", "ETH/USD"}),)
    assert correlated_groups(closes, window=720, threshold=0.99).groups == (
        frozenset({"BTC/USD"}),
        frozenset({"ETH/USD"}),
    )


def synthetic(n=200, seed=7):
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 0.01, n)
    returns = {
        "A": common + rng.normal(0, 0.002, n),
        "B": common + rng.normal(0, 0.002, n),
        "C": rng.normal(0, 0.01, n),
    }
    return pd.DataFrame({symbol: 100 * np.exp(np.cumsum(r)) for symbol, r in returns.items()})


def test_groups_are_connected_components():
    correlations = {("A", "B"): 0.8, ("B", "C"): 0.75, ("A", "C"): 0.3, ("A", "D"): 0.1, ("B", "D"): 0.0}
    correlations[("C", "D")] = -0.2
    assert groups_from("ABCD", correlations, threshold=0.7) == (frozenset("ABC"), frozenset("D"))


def test_synthetic_returns_group_the_common_factor_only():
    measured = correlated_groups(synthetic(), window=100, threshold=0.7)
    assert measured.groups == (frozenset("AB"), frozenset("C"))
    assert measured.correlation("A", "B") > 0.9
    assert abs(measured.correlation("A", "C")) < 0.3


def test_unmeasurable_correlation_fails_closed_into_one_group():
    closes = synthetic()
    closes["FLAT"] = 5.0
    closes["NEW"] = np.linspace(1, 2, len(closes)) ** 2
    closes.loc[: len(closes) - 20, "NEW"] = np.nan  # a pair listed 19 bars ago
    pairs = rolling_correlations(closes, window=100)
    assert pairs[("A", "FLAT")] is None
    assert pairs[("A", "NEW")] is None
    assert correlated_groups(closes, window=100, threshold=0.7).groups == (
        frozenset({"A", "B", "C", "FLAT", "NEW"}),
    )


def test_group_exposure_sums_the_members():
    groups = (frozenset({"BTC/USD", "ETH/USD"}),)
    exposures = {"BTC/USD": D(100), "ETH/USD": D(50), "SOL/USD": D(7)}
    assert group_exposures(exposures, groups) == {groups[0]: D(150), frozenset({"SOL/USD"}): D(7)}
