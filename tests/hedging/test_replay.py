"""The hedge over a real turmoil: BTC/USD and ETH/USD hourly Kraken bars, 2020-02-01 → 2020-04-15 (the COVID
crash of 2020-03-12/13), 100,000 USD, the default hedge policy, Kraken's entry fee tier (0.40 % taker).

The claim of the issue: the USD share rises into the turmoil (and comes back down after it), and the hedge
report's numbers: the hedged account against the same account with its hedge held at the floor, fees
included. The figures are in docs/hedging.md.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from statistics import mean

import pytest

from hedging.policy import Action, HedgeParams
from hedging.replay import ReplayConfig, bars_with_warmup, replay_report
from tests.hedging.builders import pair
from trading.brokers.base import Side
from trading.fees import published_rates

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "market" / "kraken"
FILES = {"BTC/USD": DATA / "XBTUSD_60.csv", "ETH/USD": DATA / "ETHUSD_60.csv"}
# Kraken AssetPairs (trading/data/kraken_asset_pairs_2026-09-25.json): XXBTZUSD and XETHZUSD.
PAIRS = {
    "BTC/USD": pair("BTC/USD", ordermin="0.00005", tick="0.1"),
    "ETH/USD": pair("ETH/USD", ordermin="0.002", tick="0.01"),
}
PARAMS = HedgeParams()
START, END = datetime(2020, 2, 1, tzinfo=UTC), datetime(2020, 4, 15, tzinfo=UTC)


def utc(*parts) -> datetime:
    return datetime(*parts, tzinfo=UTC)


@pytest.fixture(scope="module")
def report():
    if not all(path.exists() for path in FILES.values()):
        pytest.skip(f"shared Kraken hourly data not found under {DATA}")
    bars, warmup = bars_with_warmup(FILES, start=START, end=END, params=PARAMS)
    config = ReplayConfig(params=PARAMS, pairs=PAIRS, fees=published_rates())
    return replay_report(bars, config=config, equity=D(100000), warmup=warmup), bars, warmup


def share(result, start, end, what="actual_pct"):
    return mean(getattr(mark, what) for mark in result.marks if start <= mark.at < end)


def test_the_period_is_real_and_a_crash(report):
    _, bars, warmup = report
    btc = bars["BTC/USD"]
    assert warmup >= PARAMS.vol_lookback + PARAMS.vol_window
    assert btc[warmup].open_time == START
    crash = [bar for bar in btc if utc(2020, 3, 12) <= bar.open_time < utc(2020, 3, 14)]
    assert min(bar.low for bar in crash) < D(4000) < D(7900) < crash[0].open  # BTC lost half in two days


def test_the_usd_share_rises_into_the_turmoil_and_falls_after_it(report):
    hedged = report[0].hedged
    calm = share(hedged, utc(2020, 2, 2), utc(2020, 2, 9))
    turmoil = share(hedged, utc(2020, 3, 12), utc(2020, 3, 13))
    after = share(hedged, utc(2020, 4, 1), utc(2020, 4, 15))
    assert calm < 20
    assert turmoil > 65
    assert turmoil > calm + 45
    assert after < turmoil - 25
    # The target reaches the ceiling in the crash, driven by volatility far above its usual level.
    crash = [m for m in hedged.marks if utc(2020, 3, 12, 12) <= m.at < utc(2020, 3, 14)]
    assert max(m.target_pct for m in crash) == PARAMS.ceiling_pct
    assert max(m.vol_ratio for m in crash) > 10
    # The target and the actual share stay within the policy's bounds.
    assert all(PARAMS.floor_pct <= m.target_pct <= PARAMS.ceiling_pct for m in hedged.marks)


def test_the_hedge_sells_before_and_during_the_crash_and_releases_after(report):
    hedged = report[0].hedged
    sells = [f for f in hedged.fills if f.reason == "hedge"]
    assert sells
    assert all(f.side == Side.SELL for f in sells)
    assert any(utc(2020, 3, 8) <= f.at < utc(2020, 3, 13) for f in sells)
    releases = [m for m in hedged.marks if m.action == Action.RELEASE and m.at >= utc(2020, 3, 20)]
    assert releases


def test_the_hedge_report_against_the_hedge_held_at_the_floor(report):
    result = report[0]
    hedged, at_floor = result.hedged, result.at_floor
    # Both pay Kraken's taker fee on every fill; the hedge trades more and pays more.
    assert hedged.fees > at_floor.fees > 0
    # Fees included, the hedged account ends ahead and its worst drawdown is about half.
    assert result.hedge_value_pct > 10
    assert hedged.max_drawdown_pct() < at_floor.max_drawdown_pct() * D("0.6")
    # The service's overlay method, fed the same path, agrees on the sign and is the more conservative.
    assert D(0) < result.overlay.hedge_value_pct < result.hedge_value_pct
    assert result.overlay.account_return_pct == hedged.return_pct
