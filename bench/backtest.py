"""Benchmark: bar-steps per second of the backtest, one pair, one bar through the whole strategy cycle.

A bar-step is one pair's closed bar through everything a live cycle does for it: the hedge target, the
strategy, ``trading.cycle_core.decide`` (hedge cap, sizing, pre-trade check, exits and the trailing ratchet),
fills through the simulator's matching core and the ledger, the equity mark, the day's high-water mark and
the kill switch. Model fitting and data preparation (features, Decimal conversion) are excluded and printed
separately; the batch prediction of each segment is part of training here (it runs once per segment).

Data: Kraken's hourly BTC/USD file (``XBTUSD_60.csv``), the last ``--days`` before 2023-01-01, with the
model (``--no-model``: the rule strategy). Runs without a database. Usage:
``uv run python bench/backtest.py [--days N] [--repeat N] [--no-model]``. The last line is the figures as
name=value pairs. The machine is shared: the load average before and after is printed with them.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "market" / "kraken"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-model", action="store_true")
    args = parser.parse_args()
    path = SHARED / "XBTUSD_60.csv"
    if not path.is_file():
        sys.exit(f"bench/backtest.py: {path} not found (the shared market data sits beside the repository)")
    sys.path.insert(0, str(ROOT))
    import json

    from trading.backtest import BacktestConfig, PairSeries, read_kraken_file, run_backtest
    from trading.brokers.base import PairRules
    from trading.kraken_pairs import parse_asset_pairs

    snapshot = json.loads((ROOT / "trading" / "data" / "kraken_asset_pairs_2026-09-25.json").read_text())
    fact = next(pair for pair in parse_asset_pairs(snapshot).pairs if pair.symbol == "BTC/USD")
    rules = PairRules(
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
    end = datetime(2023, 1, 1, tzinfo=UTC)
    start = end - timedelta(days=args.days)
    frame = read_kraken_file(path, until=end)
    frame = frame[frame.index >= start - timedelta(days=400)]
    config = BacktestConfig(
        start=start,
        end=end,
        equity=Decimal(100_000),
        training=None if args.no_model else BacktestConfig.__dataclass_fields__["training"].default_factory(),
    )
    load_before = os.getloadavg()[0]
    rates, results = [], []
    for _ in range(args.repeat):
        result = run_backtest({"BTC/USD": PairSeries(rules, frame)}, config)
        rates.append(result.bar_steps / result.loop_seconds)
        results.append(result)
    last = results[-1].report()
    load = os.getloadavg()
    print(
        f"backtest BTC/USD 60m {start:%Y-%m-%d} → {end:%Y-%m-%d}: {last['bar_steps']} bar-steps, "
        f"{last['trades']} fills, {last['models_trained']} fits ({last['training_seconds']:.1f} s), "
        f"preparation {last['prepare_seconds']:.2f} s, loop {min(r.loop_seconds for r in results):.3f} s; "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    print(
        f"bar_steps_per_s={statistics.median(rates):.0f} best_bar_steps_per_s={max(rates):.0f} "
        f"prepare_s={last['prepare_seconds']:.2f} training_s={last['training_seconds']:.1f} "
        f"load1_before={load_before:.2f} load1={load[0]:.2f}"
    )


if __name__ == "__main__":
    main()
