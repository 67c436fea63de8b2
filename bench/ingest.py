"""Benchmark: candle ingestion.

Measures (1) importing Kraken's hourly XBTUSD OHLCVT file (parse + validate + upsert, as
``import_kraken_csv`` does) into an empty candle table, (2) the upsert path on its own: re-upserting the
same bars, which exercises conflict handling and updates, from pre-parsed rows.

Runs on PostgreSQL when DATABASE_URL names one (in a throwaway database ``<name>_bench`` beside it,
created and dropped here), else on a fresh SQLite file under var/. Usage:
    uv run python bench/ingest.py [--file PATH]
The last line is the figures as name=value pairs.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_FILE = ROOT.parent / "shared" / "data" / "market" / "kraken" / "XBTUSD_60.csv"
BATCH = 5000  # as the import service's batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", type=Path, default=DEFAULT_FILE)
    args = parser.parse_args()
    if not args.file.is_file():
        sys.exit(
            f"bench/ingest.py: {args.file} not found (the shared market data sits beside the repository)"
        )

    sys.path.insert(0, str(ROOT))
    scratch = bench_db = None
    url = os.environ.get("DATABASE_URL", "")
    if url.startswith(("postgres://", "postgresql://")):
        bench_db, admin_url = recreate_postgres_database(url)
        os.environ["DATABASE_URL"] = url.rsplit("/", 1)[0] + "/" + bench_db
    else:
        scratch = tempfile.mkdtemp(prefix="aether-bench-", dir=ROOT / "var")
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/bench.sqlite3"
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aether_site.settings")
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import connection

    from governance.actors import SystemActor
    from trading.marketdata.kraken_csv import CsvReport, parse_lines
    from trading.models import Candle, Instrument
    from trading.services import candles_import_kraken_file, candles_upsert

    call_command("migrate", verbosity=0)

    call_command("sync_universe", "--from-file", stdout=io.StringIO())
    instrument = Instrument.objects.get(symbol="BTC/USD")
    Candle.objects.filter(instrument=instrument).delete()

    started = time.perf_counter()
    result = candles_import_kraken_file(
        actor=SystemActor("bench"), path=args.file, instrument=instrument, timeframe=60
    )
    csv_seconds = time.perf_counter() - started

    with args.file.open() as handle:
        parsed = list(parse_lines(handle, minutes=60, report=CsvReport()))
    started = time.perf_counter()
    for index in range(0, len(parsed), BATCH):
        candles_upsert(
            instrument=instrument,
            timeframe=60,
            rows=parsed[index : index + BATCH],
            source=Candle.Source.KRAKEN_CSV,
        )
    upsert_seconds = time.perf_counter() - started

    stored = Candle.objects.filter(instrument=instrument, timeframe=60).count()
    vendor = connection.vendor
    connection.close()
    if bench_db:
        drop_postgres_database(admin_url, bench_db)
    if scratch:
        shutil.rmtree(scratch, ignore_errors=True)
    if stored != result.rows:
        sys.exit(f"bench/ingest.py: stored {stored} bars of {result.rows}: the import lost data")
    print(f"engine: {vendor}; file: {args.file.name}; rows: {result.rows}; stored: {stored}")
    print(f"csv import: {csv_seconds:.2f} s; upsert of existing bars: {upsert_seconds:.2f} s")
    print(
        f"engine={vendor} rows={result.rows} csv_candles_per_s={result.rows / csv_seconds:.0f} "
        f"upsert_candles_per_s={len(parsed) / upsert_seconds:.0f}"
    )


def recreate_postgres_database(url: str) -> tuple[str, str]:
    import psycopg

    base, name = url.rsplit("/", 1)
    bench_db = f"{name.split('?')[0]}_bench"
    admin_url = f"{base}/postgres"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{bench_db}"')
    return bench_db, admin_url


def drop_postgres_database(admin_url: str, bench_db: str) -> None:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{bench_db}" WITH (FORCE)')


if __name__ == "__main__":
    main()
