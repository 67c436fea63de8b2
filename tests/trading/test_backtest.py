"""The backtest over Kraken's hourly BTC/USD and ETH/USD files (shared data): the report, its invariants,
walk-forward training, and that it fills with the simulator's matching core."""

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from django.core.management import call_command

from risk.engine import RiskPolicy
from trading.backtest import (
    BacktestConfig,
    PairSeries,
    _Account,
    kraken_file_name,
    read_kraken_file,
    run_backtest,
)
from trading.brokers.base import OrderKind, OrderRequest, PairRules
from trading.matching import fee_for, match_on_submit

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
