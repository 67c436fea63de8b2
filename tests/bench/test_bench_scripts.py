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
