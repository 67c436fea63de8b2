"""Import one of Kraken's OHLCVT bulk files (e.g. XBTUSD_60.csv) into the candle store."""

from __future__ import annotations

from itertools import islice
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction
from tqdm import tqdm

from governance.actors import SystemActor
from governance.services import audit_record
from trading.candles import TIMEFRAMES
from trading.marketdata.kraken_csv import CsvReport, parse_lines
from trading.models import Candle, Instrument
from trading.services import candles_upsert

BATCH = 5000


class Command(BaseCommand):
    help = (
        "Import a Kraken OHLCVT file (time,open,high,low,close,volume,trades; no header). Idempotent: "
        "re-importing updates bars in place. Bad lines are skipped and reported, never stored."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("path", help="the CSV file, e.g. XBTUSD_60.csv")
        parser.add_argument(
            "--pair", required=True, help="Kraken's pair name as in the file name, e.g. XBTUSD"
        )
        parser.add_argument("--timeframe", type=int, required=True, choices=TIMEFRAMES, help="minutes")

    def handle(self, *args, **options) -> None:
        path = Path(options["path"])
        minutes = options["timeframe"]
        instrument = self._instrument(options["pair"])
        if not path.is_file():
            raise CommandError(f"{path}: file not found")
        report = CsvReport()
        inserted = updated = 0
        with (
            path.open(encoding="utf-8") as handle,
            tqdm(
                total=path.stat().st_size,
                unit="B",
                unit_scale=True,
                desc=path.name,
                disable=None,
                file=self.stderr._out,
            ) as progress,
        ):
            rows = parse_lines(self._tracked(handle, progress), minutes=minutes, report=report)
            while batch := list(islice(rows, BATCH)):
                result = candles_upsert(
                    instrument=instrument, timeframe=minutes, rows=batch, source=Candle.Source.KRAKEN_CSV
                )
                inserted += result.inserted
                updated += result.updated
        skipped = sum(report.skipped.values())
        with transaction.atomic():
            audit_record(
                actor=SystemActor("import_kraken_csv"),
                action="history.imported",
                details={
                    "file": path.name,
                    "symbol": instrument.symbol,
                    "timeframe": minutes,
                    "rows": report.rows,
                    "inserted": inserted,
                    "updated": updated,
                    "skipped": dict(report.skipped),
                },
            )
        for example in report.examples:
            self.stdout.write(self.style.WARNING(f"skipped {example}"))
        self.stdout.write(
            self.style.SUCCESS(
                f"import_kraken_csv: {path.name} → {instrument.symbol} {minutes}m: {report.rows} rows, "
                f"{inserted} inserted, {updated} updated, {skipped} skipped"
            )
        )

    def _instrument(self, pair: str) -> Instrument:
        instrument = Instrument.objects.filter(altname=pair.upper()).first()
        if instrument is None:
            known = (
                ", ".join(Instrument.objects.values_list("altname", flat=True)) or "none (run sync_universe)"
            )
            raise CommandError(f"--pair {pair}: not in the spot USD universe; known: {known}")
        return instrument

    @staticmethod
    def _tracked(handle, progress):
        for line in handle:
            progress.update(len(line))
            yield line
