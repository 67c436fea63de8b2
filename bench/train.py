"""Benchmark: a full walk-forward retrain of one pair, and live inference per cycle for every traded pair.

``train_s``: three years of Kraken's hourly BTC/USD bars (``XBTUSD_60.csv``) through exactly what a
retrain runs after reading the candles: validation and gridding, features and labels, the walk-forward
(every fold fitted and scored, the signal backtested), the final fit on everything, and the artifact's
serialisation and SHA-256.

``inference_ms``: one strategy cycle's predictions for all traded pairs (BTC/USD, ETH/USD from Kraken's
hourly files; SOL/USD from Binance's hourly SOLUSDT file, as the shared data has no Kraken hourly SOL): for
each pair the trailing window of closed bars goes through ``prepare_candles`` and ``predict_latest``, the
same code ``learning.selectors.signal_for`` runs after its database read (not included here). Median over
``--cycles`` consecutive hours.

Runs without a database. Usage: ``uv run python bench/train.py [--threads N] [--cycles N]``. The last line
is the figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data" / "market"


def read_binance(path: Path):
    import pandas as pd

    rows = json.loads(path.read_text())
    frame = pd.DataFrame(rows, columns=["time", "open", "high", "low", "close", "volume"])
    frame.index = pd.DatetimeIndex(pd.to_datetime(frame.pop("time"), unit="ms", utc=True), name="open_time")
    return frame.astype(float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--btc-file", type=Path, default=SHARED / "kraken" / "XBTUSD_60.csv")
    parser.add_argument("--eth-file", type=Path, default=SHARED / "kraken" / "ETHUSD_60.csv")
    parser.add_argument(
        "--sol-file", type=Path, default=SHARED / "binance" / "SOL_USDT-1h_2022-01_2023-03.json"
    )
    parser.add_argument("--years", type=float, default=3.0)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads per fit")
    args = parser.parse_args()
    for path in (args.btc_file, args.eth_file, args.sol_file):
        if not path.is_file():
            sys.exit(f"bench/train.py: {path} not found (the shared market data sits beside the repository)")

    sys.path.insert(0, str(ROOT))
    from learning.datasets import read_kraken_ohlcvt
    from learning.features import MIN_TRAINING_BARS, WARMUP_BARS, prepare_candles
    from learning.inference import INFERENCE_BARS, predict_latest
    from learning.modeling import dump_artifact
    from learning.walkforward import TrainingSpec, build_dataset, fit_final, walk_forward

    spec = TrainingSpec(kind="hgb", horizon=24, timeframe=60, taker_fee=0.004, threads=args.threads)
    frames = {
        "BTC/USD": read_kraken_ohlcvt(args.btc_file, years=args.years),
        "ETH/USD": read_kraken_ohlcvt(args.eth_file, years=args.years),
        "SOL/USD": read_binance(args.sol_file),
    }

    started = time.perf_counter()
    btc = prepare_candles(frames["BTC/USD"], pair="BTC/USD", timeframe=60, min_bars=MIN_TRAINING_BARS)
    dataset = build_dataset([btc], btc=btc, spec=spec)
    result = walk_forward(dataset, spec)
    model, _, _ = fit_final(dataset, spec)
    data, sha = dump_artifact(model)
    train_s = time.perf_counter() - started
    print(
        f"walk-forward {len(btc.frame):,} bars BTC/USD {btc.frame.index[0]:%Y-%m-%d} → "
        f"{btc.frame.index[-1]:%Y-%m-%d}: {len(result.folds)} folds + final fit, "
        f"artifact {len(data):,} bytes ({sha[:12]}), OOS Sharpe {result.score:.3f}, {train_s:.2f} s"
    )

    # Champions for the other pairs (not timed), each fitted on its own history with BTC cross features.
    models = {"BTC/USD": model}
    for pair in ("ETH/USD", "SOL/USD"):
        prepared = prepare_candles(frames[pair], pair=pair, timeframe=60, min_bars=MIN_TRAINING_BARS)
        models[pair], _, _ = fit_final(build_dataset([prepared], btc=btc, spec=spec), spec)

    end = min(frame.index[-1] for frame in frames.values())
    cycles = []
    for step in range(args.cycles, 0, -1):
        moment = end - step * (frames["BTC/USD"].index[1] - frames["BTC/USD"].index[0])
        windows = {pair: frame.loc[:moment].iloc[-INFERENCE_BARS:] for pair, frame in frames.items()}
        started = time.perf_counter()
        btc_window = prepare_candles(windows["BTC/USD"], pair="BTC/USD", timeframe=60, min_bars=WARMUP_BARS)
        for pair, window in windows.items():
            prepared = (
                btc_window
                if pair == "BTC/USD"
                else prepare_candles(window, pair=pair, timeframe=60, min_bars=WARMUP_BARS)
            )
            predict_latest(models[pair], prepared, btc_window)
        cycles.append(time.perf_counter() - started)
    inference_ms = statistics.median(cycles) * 1000
    print(
        f"inference: {len(frames)} pairs per cycle, {INFERENCE_BARS}-bar windows, median of {len(cycles)} "
        f"cycles {inference_ms:.3f} ms (p90 {sorted(cycles)[int(len(cycles) * 0.9)] * 1000:.3f} ms)"
    )
    print(f"train_s={train_s:.2f} inference_ms={inference_ms:.3f}")


if __name__ == "__main__":
    main()
