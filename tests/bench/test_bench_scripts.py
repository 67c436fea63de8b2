"""Benchmarks must keep printing their figures: the last line is name=value pairs."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ingest_benchmark_prints_its_figures(tmp_path):
    sample = tmp_path / "XBTUSD_60.csv"
    sample.write_text("".join(f"{1381093200 + 3600 * n},100,101,99,100.5,1.5,3\n" for n in range(500)))
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "bench/ingest.py", "--file", str(sample)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=") for pair in last.split())
    assert figures["rows"] == "500"
    assert figures["engine"] == "sqlite"
    assert re.fullmatch(r"\d+", figures["csv_candles_per_s"])
    assert re.fullmatch(r"\d+", figures["upsert_candles_per_s"])


def test_train_benchmark_prints_its_figures(tmp_path):
    import json

    import numpy as np

    rng = np.random.default_rng(0)
    start, bars = 1609459200, 1500
    files = {}
    for name, price in (("XBTUSD_60.csv", 30000.0), ("ETHUSD_60.csv", 2000.0)):
        close = price * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
        lines = [
            f"{start + 3600 * n},{c},{c * 1.01},{c * 0.99},{c},{1 + n % 7},3\n" for n, c in enumerate(close)
        ]
        (tmp_path / name).write_text("".join(lines))
        files[name] = tmp_path / name
    close = 30 * np.exp(np.cumsum(rng.normal(0, 0.01, bars)))
    sol = [[(start + 3600 * n) * 1000, c, c * 1.01, c * 0.99, c, 5.0] for n, c in enumerate(close)]
    (tmp_path / "sol.json").write_text(json.dumps(sol))
    result = subprocess.run(
        [sys.executable, "bench/train.py", "--btc-file", str(files["XBTUSD_60.csv"]), "--eth-file",
         str(files["ETHUSD_60.csv"]), "--sol-file", str(tmp_path / "sol.json"), "--cycles", "3"],
        cwd=ROOT, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}, capture_output=True, text=True,
        timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=") for pair in last.split())
    assert list(figures) == ["train_s", "inference_ms"]
    assert re.fullmatch(r"\d+\.\d\d", figures["train_s"])
    assert re.fullmatch(r"\d+\.\d{3}", figures["inference_ms"])


def test_order_path_benchmark_prints_its_figures(tmp_path):
    from tests.fakes.fixtures import KRAKEN_DATA_MISSING
    from tests.fakes.kraken_rest import RECORDED_PATH

    if not RECORDED_PATH.exists():
        import pytest

        pytest.skip(KRAKEN_DATA_MISSING)
    result = subprocess.run(
        [sys.executable, "bench/order_path.py", "--orders", "20"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "KRAKEN_LOCK_DIR": str(tmp_path / "locks")},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    last = result.stdout.strip().splitlines()[-1]
    figures = dict(pair.split("=") for pair in last.split())
    assert (figures["engine"], figures["orders"]) == ("sqlite", "20")
    for name in ("sim_p50_ms", "sim_p99_ms", "kraken_p50_ms", "kraken_p99_ms"):
        assert re.fullmatch(r"\d+\.\d\d", figures[name]), name
    assert "Kraken orders on the fake: 20" in result.stdout
