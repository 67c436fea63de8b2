"""Import one of Kraken's OHLCVT bulk files (e.g. XBTUSD_60.csv) into the candle store."""

from __future__ import annotations

from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from governance.actors import SystemActor
from trading.candles import TIMEFRAMES
from trading.marketdata.kraken_csv import IntervalMismatch
from trading.models import Instrument
from trading.services import candles_import_kraken_file


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
        with tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            disable=None,
            file=self.stderr._out,
        ) as progress:
            try:
                result = candles_import_kraken_file(
                    actor=SystemActor("import_kraken_csv"),
                    path=path,
                    instrument=instrument,
                    timeframe=minutes,
                    on_bytes=progress.update,
                )
            except IntervalMismatch as exc:
                raise CommandError(f"{exc}; nothing was imported") from None
        for example in result.examples:
            self.stdout.write(self.style.WARNING(f"skipped {example}"))
        self.stdout.write(
            self.style.SUCCESS(
                f"import_kraken_csv: {path.name} → {instrument.symbol} {minutes}m: {result.rows} rows, "
                f"{result.inserted} inserted, {result.updated} updated, "
                f"{sum(result.skipped.values())} skipped"
                + (f", {result.duplicates} repeated times (the last line kept)" if result.duplicates else "")
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
