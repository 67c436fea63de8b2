"""Backfill candle history from CoinGecko or Kraken's public OHLC endpoint."""

from __future__ import annotations

import argparse

import ccxt
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from trading.candles import TIMEFRAMES
from trading.marketdata.coingecko import DEFAULT_COINS, CoinGeckoError, backfill_coingecko
from trading.marketdata.kraken_backfill import backfill_kraken
from trading.marketdata.kraken_ohlc import OhlcAnswerError
from trading.marketdata.kraken_rest import describe_error
from trading.models import Instrument


def positive_days(text: str) -> int:
    try:
        days = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of days") from None
    if days < 1:
        raise argparse.ArgumentTypeError("must be at least 1 day")
    return days


class Command(BaseCommand):
    help = (
        "Fill the candle store with history. --source coingecko: /coins/{id}/market_chart/range per --coin "
        f"(default {', '.join(DEFAULT_COINS)}; others as ID:SYMBOL), honouring 429 Retry-After. --source "
        "kraken: Kraken's public OHLC per --pair (default AETHER_PAIRS; Kraken serves only the latest 720 "
        "bars). Resumable and idempotent: a re-run starts after the newest stored bar and stores nothing "
        "twice."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", required=True, choices=("coingecko", "kraken"))
        parser.add_argument(
            "--coin", action="append", default=[], metavar="ID[:SYMBOL]", help="CoinGecko coin id"
        )
        parser.add_argument(
            "--pair", action="append", default=[], metavar="SYMBOL", help="e.g. BTC/USD (kraken)"
        )
        parser.add_argument(
            "--days",
            type=positive_days,
            default=None,
            help="how far back (default: 365 coingecko, 30 kraken)",
        )
        parser.add_argument("--timeframe", type=int, choices=TIMEFRAMES, default=None, help="minutes")

    def handle(self, *args, **options) -> None:
        timeframe = options["timeframe"] or settings.AETHER_TIMEFRAME
        if options["source"] == "coingecko" and options["pair"]:
            raise CommandError("--pair is for --source kraken; CoinGecko takes --coin ID[:SYMBOL]")
        if options["source"] == "kraken" and options["coin"]:
            raise CommandError("--coin is for --source coingecko; Kraken takes --pair SYMBOL (e.g. BTC/USD)")
        if options["source"] == "coingecko":
            self._coingecko(options["coin"] or list(DEFAULT_COINS), options["days"] or 365, timeframe)
        else:
            self._kraken(options["pair"] or list(settings.AETHER_PAIRS), options["days"] or 30, timeframe)

    def _instrument(self, symbol: str) -> Instrument:
        instrument = Instrument.objects.filter(symbol=symbol).first()
        if instrument is None:
            raise CommandError(
                f"{symbol} is not in the synced spot USD universe (run manage.py sync_universe)"
            )
        return instrument

    def _coingecko(self, coins: list[str], days: int, timeframe: int) -> None:
        targets = []
        for coin in coins:
            coin_id, _, symbol = coin.partition(":")
            symbol = symbol or DEFAULT_COINS.get(coin_id)
            if not symbol:
                raise CommandError(
                    f"--coin {coin}: unknown coin; give it as ID:SYMBOL, e.g. {coin_id}:XYZ/USD"
                )
            targets.append((coin_id, self._instrument(symbol)))
        for coin_id, instrument in targets:
            with tqdm(total=None, unit="chunk", desc=coin_id, disable=None, file=self.stderr._out) as bar:

                def progress(done: int, total: int, bar=bar) -> None:
                    bar.total = total
                    bar.n = done
                    bar.refresh()

                try:
                    report = backfill_coingecko(
                        instrument=instrument,
                        coin_id=coin_id,
                        days=days,
                        timeframe=timeframe,
                        progress=progress,
                    )
                except (CoinGeckoError, ValueError) as exc:
                    raise CommandError(
                        f"{coin_id}: {exc} (anything stored before this is kept; re-run to resume)"
                    ) from None
            self.stdout.write(self.style.SUCCESS(f"backfill_history coingecko {coin_id}: {report.summary()}"))

    def _kraken(self, symbols: list[str], days: int, timeframe: int) -> None:
        instruments = [self._instrument(symbol) for symbol in symbols]
        for instrument in instruments:
            with tqdm(unit="bar", desc=instrument.symbol, disable=None, file=self.stderr._out) as bar:
                try:
                    report = backfill_kraken(
                        instrument=instrument, timeframe=timeframe, days=days, progress=bar.update
                    )
                except (ccxt.BaseError, OhlcAnswerError) as exc:
                    raise CommandError(
                        f"{instrument.symbol}: Kraken OHLC failed ({describe_error(exc)}); anything stored "
                        "before this is kept; re-run to resume"
                    ) from None
            self.stdout.write(self.style.SUCCESS(f"backfill_history kraken {report.summary()}"))
