"""The backtest over Kraken's hourly BTC/USD and ETH/USD files (shared data): the report, its invariants,
walk-forward training, and that it fills with the simulator's matching core."""

import hashlib
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from hedging.policy import HedgeParams
from risk.engine import RiskPolicy
from trading.backtest import (
    BacktestConfig,
    PairSeries,
    _Account,
    _HedgeTarget,
    kraken_file_name,
    read_kraken_file,
    run_backtest,
)
from trading.brokers.base import OrderKind, OrderRequest, PairRules
from trading.matching import fee_for, log_return_volatility, match_on_submit

D = Decimal
ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT.parent / "shared" / "data" / "market" / "kraken"
pytestmark = pytest.mark.skipif(
    not (DATA / "XBTUSD_60.csv").is_file(), reason=f"shared Kraken data not found at {DATA}"
)
START, END = datetime(2022, 11, 1, tzinfo=UTC), datetime(2022, 11, 15, tzinfo=UTC)
KEYS = {
    "total_return",
    "max_drawdown",
    "worst_day_return",
    "sharpe",
    "trades",
    "fees_paid",
    "kill_switch_trips",
    "daily_returns",
    "daily_drawdown_limit",
    "benchmark_return",
    "bar_steps_per_s",
}


def rules(symbol: str) -> PairRules:
    snapshot = json.loads((ROOT / "trading" / "data" / "kraken_asset_pairs_2026-09-25.json").read_text())
    from trading.kraken_pairs import parse_asset_pairs

    fact = next(pair for pair in parse_asset_pairs(snapshot).pairs if pair.symbol == symbol)
    return PairRules(
        symbol=fact.symbol,
        kraken_pair=fact.kraken_pair,
        base_asset=fact.base_asset,
        quote_asset="USD",
        ordermin=fact.ordermin,
        costmin=fact.costmin,
        tick_size=fact.tick_size,
        pair_decimals=fact.pair_decimals,
        lot_decimals=fact.lot_decimals,
        cost_decimals=fact.cost_decimals,
        status=fact.status,
    )


def series(days: int = 420) -> dict[str, PairSeries]:
    out = {}
    for symbol in ("BTC/USD", "ETH/USD"):
        frame = read_kraken_file(DATA / kraken_file_name(symbol, 60), until=END)
        out[symbol] = PairSeries(rules(symbol), frame[frame.index >= START - timedelta(days=days)])
    return out


@pytest.fixture(scope="module")
def with_model():
    config = BacktestConfig(start=START, end=END, equity=D(100_000), train_bars=24 * 180)
    return run_backtest(series(), config, keep_decisions=True)


def check_equity_identity(result) -> None:
    fees = result.config.fees
    marked = result.cash + sum(
        (
            q * result.final_prices[symbol] - fee_for(q * result.final_prices[symbol], fees.taker_pct)
            for symbol, q in result.positions.items()
            if q
        ),
        D(0),
    )
    assert marked == result.final_equity


def test_report_and_invariants(with_model):
    report = with_model.report()
    assert set(report) >= KEYS
    assert report["trades"] > 0
    assert report["fees_paid"] > 0
    assert report["fees_paid"] == pytest.approx(float(sum(fill.fee for fill in with_model.fills)))
    assert len(report["daily_returns"]) == 14
    assert report["daily_drawdown_limit"] == 0.03
    check_equity_identity(with_model)
    # cash only moves by fills: starting equity - buys - fees + sells
    flows = sum(
        (
            fill.price * fill.quantity * (1 if fill.side == "sell" else -1) - fill.fee
            for fill in with_model.fills
        ),
        D(0),
    )
    assert with_model.cash == with_model.config.equity + flows
    compounded = np.prod([1 + value for value in report["daily_returns"].values()]) - 1
    assert compounded == pytest.approx(report["total_return"], abs=1e-9)
    assert report["strategy_runs"].get("champion", 0) > 0


def test_models_never_train_on_the_future(with_model):
    assert with_model.training
    pairs = {window.pair for window in with_model.training}
    assert pairs == {"BTC/USD", "ETH/USD"}
    for window in with_model.training:
        assert window.last_train_bar < START or window.first_decision_at > START
        # the newest label read a close no later than the first decision the model served
        assert window.label_known_at <= window.first_decision_at
        assert window.last_train_bar + timedelta(hours=25) <= window.first_decision_at
    first = [w for w in with_model.training if w.first_decision_at == START + timedelta(hours=1)]
    assert len(first) == 2  # the initial fits use only the history before --from
    assert all(window.label_known_at <= START for window in first)


def test_fills_are_the_simulators_matching(with_model):
    account = _Account(with_model.config, {})
    from trading.backtest import _prepare

    _, pairs, _ = _prepare(series(), with_model.config, None)
    for fill in with_model.fills[:20]:
        pair = pairs[fill.symbol]
        row = pair.index.get_loc(fill.at - timedelta(hours=1))
        quote = account.quote(pair, row, fill.at)
        request = OrderRequest(0, "x", pair.rules, fill.side, OrderKind.MARKET, fill.quantity)
        execution = match_on_submit(
            request, quote, fees=with_model.config.fees, slippage=with_model.config.slippage
        )
        assert (execution.price, execution.fee) == (fill.price, fill.fee)


def test_decisions_come_from_the_cycle_core(with_model):
    entries = [d for d in with_model.decisions if d.entry is not None]
    assert entries
    for decision in entries:
        assert decision.size is not None
        assert decision.entry.check.verdict in ("accept", "resize")


def test_kill_switch_bounds_the_worst_day():
    """A tight 1 % limit with flatten on breach: no day loses more than the limit plus the one-bar gap
    of what was held (exposure cap x the largest one-bar drop) plus fees and slippage of the exit."""
    policy = replace(
        RiskPolicy(),
        max_daily_drawdown_pct=D(1),
        flatten_on_breach=True,
        risk_per_trade_pct=D("0.9"),
        volatility_target_pct=None,
        max_position_pct=D(35),
        max_group_exposure_pct=D(70),
        min_edge_pct=D(0),
    )
    config = BacktestConfig(start=START, end=END, equity=D(100_000), policy=policy, training=None, hedge=None)
    data = series(days=30)
    result = run_backtest(data, config)
    report = result.report()
    assert report["kill_switch_trips"] >= 1
    check_equity_identity(result)
    worst_drop = 0.0
    for item in data.values():
        frame = item.frame[(item.frame.index >= START) & (item.frame.index < END)]
        closes = frame["close"].to_numpy()
        worst_drop = max(worst_drop, float(np.max(1 - closes[1:] / closes[:-1])))
    exposure = float(policy.max_group_exposure_pct) / 100
    costs = 2 * (float(config.fees.taker_pct) + float(config.slippage.bps) / 100 + 0.5) / 100 * exposure
    bound = 0.01 + exposure * worst_drop + costs
    assert report["worst_day_return"] >= -bound


@pytest.mark.django_db
def test_command_json():
    out = StringIO()
    call_command(
        "backtest",
        "--pair", "BTC/USD", "--pair", "ETH/USD", "--timeframe", "60",
        "--from", "2022-11-01", "--to", "2022-11-15",
        "--history-dir", str(DATA), "--equity", "100000", "--train-days", "120", "--json",
        stdout=out, stderr=StringIO(),
    )  # fmt: skip
    report = json.loads(out.getvalue())
    assert set(report) >= KEYS
    assert report["pairs"] == ["BTC/USD", "ETH/USD"]
    assert report["models_trained"] >= 2
    assert set(report["daily_returns"]) == {(START + timedelta(days=i)).date().isoformat() for i in range(14)}
    if report["trades"]:
        assert report["fees_paid"] > 0
    assert report["bar_steps"] == 2 * 14 * 24


@pytest.mark.django_db
def test_command_human_report_and_policy_file(tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(
        json.dumps({"max_daily_drawdown_pct": "2", "stop_loss": {"kind": "percent", "value": "2"}})
    )
    out = StringIO()
    call_command(
        "backtest", "--pair", "ETH/USD", "--from", "2022-11-01", "--to", "2022-11-03",
        "--history-dir", str(DATA), "--policy-file", str(policy), "--no-model",
        stdout=out, stderr=StringIO(),
    )  # fmt: skip
    text = out.getvalue()
    assert "Backtest ETH/USD 60m" in text
    assert "daily limit of 2.00%" in text
    assert "rule_trend" in text


# --- The loop's speed-ups change no decision -------------------------------------------------------------

#: Recorded with the backtest as it was before its loop was made faster (the straightforward per-bar
#: snapshot, hedge target through ``hedging.policy.target_pct``, quote statistics recomputed per fill): the
#: run below must reproduce every fill, every marked equity, every kill-switch trip, every hedge target and
#: every decision's notes exactly. (fills, final equity, trips, hedge sells, rejected entries, sha256)
GOLDEN = {
    False: (
        45,
        "90468.4268689960",
        4,
        3,
        61,
        "0a8ff02f511d85158bed651e632fe3126ba9a02867e3ca42f8cc757ac50df9fc",
    ),
    True: (
        45,
        "88852.6354704375",
        4,
        3,
        62,
        "b4d84cab3b3c0420ac1f2ff42dff8e48f672ccabf35e9013ab4a3cbe72350f77",
    ),
}


def digest(result) -> str:
    lines = [
        repr(
            (
                f.at.isoformat(),
                f.symbol,
                str(f.side),
                f.purpose,
                str(f.quantity),
                str(f.price),
                str(f.fee),
                f.reason,
            )
        )
        for f in result.fills
    ]
    lines += [f"{at.isoformat()} {equity}" for at, equity in result.equity_curve]
    lines += [repr((trip.at.isoformat(), trip.reason, trip.actions)) for trip in result.trips]
    lines += [repr((d.symbol, d.bar_open_time.isoformat(), d.notes)) for d in result.decisions]
    lines += [repr(result.hedge_targets)]
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


@pytest.mark.parametrize("flatten", [False, True])
def test_outputs_are_those_recorded_before_the_speed_ups(flatten):
    """Rule strategy, BTC/USD and ETH/USD, May-June 2022 (the crash): kill-switch trips (with and without
    flatten), hedge rebalancing sells (a high floor, a narrow band), rejected entries."""
    start, end = datetime(2022, 5, 1, tzinfo=UTC), datetime(2022, 7, 1, tzinfo=UTC)
    policy = replace(
        RiskPolicy(),
        max_daily_drawdown_pct=D(2),
        flatten_on_breach=flatten,
        risk_per_trade_pct=D("0.9"),
        volatility_target_pct=None,
        max_position_pct=D(35),
        max_group_exposure_pct=D(70),
        min_edge_pct=D(0),
    )
    hedge = replace(
        HedgeParams(),
        floor_pct=D(20),
        band_pct=D(1),
        vol_calm_ratio=D("0.5"),
        drawdown_start_pct=D("0.5"),
        min_interval=timedelta(0),
    )
    config = BacktestConfig(
        start=start, end=end, equity=D(100_000), training=None, hedge=hedge, policy=policy
    )
    data = {}
    for symbol in ("BTC/USD", "ETH/USD"):
        frame = read_kraken_file(DATA / kraken_file_name(symbol, 60), until=end)
        data[symbol] = PairSeries(rules(symbol), frame[frame.index >= start - timedelta(days=120)])
    result = run_backtest(data, config, keep_decisions=True)
    observed = (
        len(result.fills),
        str(result.final_equity),
        len(result.trips),
        result.hedge_sells,
        result.rejected_entries,
        digest(result),
    )
    assert observed == GOLDEN[flatten]


def test_fast_hedge_target_is_target_pct():
    """The loop's hedge target equals ``hedging.policy.target_pct`` (as a fraction, the same Decimal) on
    random inputs and at the clips and rounding steps."""
    params = HedgeParams()
    rng = np.random.default_rng(7)
    vol_ref = rng.uniform(0.002, 0.02, 4000)
    ratios = np.r_[
        rng.uniform(0.0, 4.0, 3000),
        [1.2, 3.0, 1.2 * (1 + 1e-13), 3.0 * (1 - 1e-13), 0.0, 1.5, 2.1, 2.4],
        rng.choice([1.2, 3.0, 1.5, 2.25], 992) * (1 + rng.uniform(-1e-9, 1e-9, 992)),
    ]
    vol_now = ratios * vol_ref
    vol_now[:10] = np.nan  # no volatility history
    target = _HedgeTarget(params, vol_now, vol_ref)
    high = D("100000.00")
    drawdowns = [D(0), D(2), D("2.0000000001"), D(15), D("14.9999999999"), D("8.5"), D("1.9999"), D(40)]
    for step in range(len(vol_now)):
        drawdown = drawdowns[step % len(drawdowns)] if step % 3 else D(str(round(rng.uniform(0, 20), 6)))
        equity = high * (1 - drawdown / 100)
        fast = target(step, equity, high)
        exact = target.exact(step, equity, high)
        assert str(fast) == str(exact), (step, vol_now[step], vol_ref[step], drawdown)


def test_quote_volatility_is_the_matching_cores():
    """The quote's volatility, with each log return computed once per run, is
    ``trading.matching.log_return_volatility`` of the same closes."""
    config = BacktestConfig(start=START, end=END, equity=D(100_000), training=None)
    from trading.backtest import _prepare

    _, pairs, _ = _prepare(series(days=60), config, None)
    account = _Account(config, pairs)
    at = START
    for pair in pairs.values():
        rows = sorted(pair.views)
        for row in rows[::7] + rows[:30]:
            closes = [pair.closes[r] for r in range(row - 23, row + 1) if r in pair.closes]
            assert account.quote(pair, row, at).volatility == log_return_volatility(closes)
