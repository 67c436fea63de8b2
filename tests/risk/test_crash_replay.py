"""The kill switch over a real crash: ETH/USD on 2020-03-12 (the COVID crash), Kraken hourly bars.

The account (100,000 USD, default policy but ``flatten_on_breach=True``) runs the naive "buy whenever flat"
rule of ``risk/replay.py`` through the whole decision core. The claim of the issue: the day's loss from its
equity high-water mark stays within the policy's limit plus the cost of getting out. Precisely (derivation in
``risk/replay.py``), with ``H`` the day's high-water mark, ``L`` the limit, the last mark before the trip
(``q`` held at price ``p_safe``) and the exit of those ``q`` (base price ``b``, fill ``x``, fee ``fee_x``)::

    H - E_end  <=  L x H  +  q (p_safe - b)  +  q (b - x)  +  fee_x
                   limit     the one-bar gap    slippage      exit fee
"""

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from pathlib import Path

import pytest

from risk.engine import Action, Code, RiskPolicy
from risk.replay import ReplayConfig, read_kraken_ohlcvt, replay
from trading.brokers.base import PairRules, Side
from trading.fees import published_rates
from trading.matching import fee_for

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "market" / "kraken" / "ETHUSD_60.csv"
CRASH_DAY = date(2020, 3, 12)
WARMUP = 15  # hourly bars before the day: the 14-bar ATR of the first entry
EQUITY = D(100_000)
FEES = published_rates()  # the published entry tier: 0.25 % maker, 0.40 % taker
# Kraken AssetPairs XETHZUSD (trading/data/kraken_asset_pairs_2026-09-25.json).
ETH = PairRules(
    symbol="ETH/USD",
    kraken_pair="XETHZUSD",
    base_asset="ETH",
    quote_asset="USD",
    ordermin=D("0.002"),
    costmin=D("0.5"),
    tick_size=D("0.01"),
    pair_decimals=2,
    lot_decimals=8,
    cost_decimals=5,
    status="online",
)
WITH_SWITCH = RiskPolicy(flatten_on_breach=True)
WITHOUT_SWITCH = RiskPolicy(max_daily_drawdown_pct=D(100))  # never trips before equity reaches zero


@pytest.fixture(scope="module")
def bars():
    if not DATA.exists():
        pytest.skip(f"shared Kraken hourly data not found: {DATA}")
    start = datetime(CRASH_DAY.year, CRASH_DAY.month, CRASH_DAY.day, tzinfo=UTC)
    return read_kraken_ohlcvt(DATA, start=start - timedelta(hours=WARMUP), end=start + timedelta(days=1))


def run(bars, policy):
    config = ReplayConfig(policy=policy, pair=ETH, fees=FEES)
    return replay(bars, config=config, equity=EQUITY, warmup=WARMUP)


@pytest.fixture(scope="module")
def guarded(bars):
    return run(bars, WITH_SWITCH)


@pytest.fixture(scope="module")
def unguarded(bars):
    return run(bars, WITHOUT_SWITCH)


def the_trip(result):
    (trip,) = [trip for trip in result.trips if trip.day == CRASH_DAY]
    return trip


def test_the_day_is_complete_and_a_real_crash(bars):
    day = bars[WARMUP:]
    assert len(bars) == WARMUP + 24
    assert [bar.open_time.hour for bar in day] == list(range(24))
    assert all(later.open_time - earlier.open_time == timedelta(hours=1) for earlier, later in pairwise(bars))
    assert day[0].open == D("195.3")
    assert day[-1].close == D("108.78")
    assert day[-1].close / day[0].open < D("0.6")  # ETH lost over 44 % that UTC day
    assert min(bar.low for bar in day) == D("101.52")


def test_the_policy_is_the_default_with_flatten_on_breach():
    assert WITH_SWITCH.max_daily_drawdown_pct == D(3)
    assert RiskPolicy(flatten_on_breach=True) == WITH_SWITCH
    assert WITH_SWITCH.validate() == ()
    assert WITHOUT_SWITCH.validate() == ()


def test_the_switch_trips_once_and_flattens_at_the_next_open(guarded, bars):
    trip = the_trip(guarded)
    assert Action.FLATTEN in trip.actions
    assert Action.BLOCK_ENTRIES in trip.actions
    assert trip.safe.drawdown_pct < 3 <= trip.mark.drawdown_pct  # the last mark before it had not breached
    assert trip.safe.quantity > 0  # it tripped while holding: there was something to flatten
    (exit_fill,) = guarded.fills[trip.safe.fills :]
    assert exit_fill.reason == "flatten"
    assert exit_fill.side == Side.SELL
    assert exit_fill.quantity == trip.safe.quantity
    next_bar = next(bar for bar in bars if bar.open_time > trip.at)
    assert exit_fill.at == next_bar.open_time
    assert exit_fill.base_price == next_bar.open
    assert exit_fill.price < exit_fill.base_price  # slippage is adverse
    assert exit_fill.fee == fee_for(exit_fill.price * exit_fill.quantity, FEES.taker_pct)
    assert guarded.quantity == 0
    assert not guarded.flatten_pending


def test_the_day_loss_is_bounded_by_the_limit_plus_the_gap_slippage_and_fee(guarded):
    report = guarded.day(CRASH_DAY)
    trip = the_trip(guarded)
    (exit_fill,) = guarded.fills[trip.safe.fills :]
    high = report.high_water
    limit = WITH_SWITCH.max_daily_drawdown_pct / 100 * high
    gap = trip.safe.quantity * (trip.safe.price - exit_fill.base_price)  # the move from the last safe mark
    bound = limit + gap + exit_fill.slippage_cost + exit_fill.fee

    assert report.tripped_at == trip.at
    assert report.start_equity == EQUITY
    assert report.loss_from_high == high - report.end_equity
    assert report.loss_from_high <= bound
    # The looser, gap-free reading: the limit plus the cost of getting out, plus any adverse gap.
    assert report.loss_from_high <= limit + max(gap, D(0)) + exit_fill.slippage_cost + exit_fill.fee
    # Flat after the exit: the day ends exactly at the cash the exit left.
    assert report.end_equity == guarded.cash


def test_without_the_switch_the_same_day_loses_more(guarded, unguarded):
    with_switch, without = guarded.day(CRASH_DAY), unguarded.day(CRASH_DAY)
    assert unguarded.trips == ()
    # Both runs are the same until the trip: the switch is the only difference.
    trip = the_trip(guarded)
    assert unguarded.fills[: trip.safe.fills] == guarded.fills[: trip.safe.fills]
    assert without.high_water == with_switch.high_water
    assert without.loss_from_high > with_switch.loss_from_high
    # Per-trade stops alone let the day lose more than the daily limit.
    assert without.loss_from_high_pct > WITH_SWITCH.max_daily_drawdown_pct


def test_no_entry_after_the_trip(guarded):
    trip = the_trip(guarded)
    late = [fill for fill in guarded.fills if fill.side == Side.BUY and fill.at > trip.at]
    assert late == []
    blocked = [entry for entry in guarded.blocked if entry.at > trip.at]
    assert len(blocked) == guarded.day(CRASH_DAY).blocked_entries > 0  # the rule kept asking, every hour
    assert all(Code.KILL_SWITCH_LATCHED in entry.codes for entry in blocked)


def test_the_replay_driver_imports_no_django():
    script = (
        "import sys, risk.replay;"
        "print(','.join(sorted(m for m in sys.modules if m == 'django' or m.startswith('django.'))))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""
