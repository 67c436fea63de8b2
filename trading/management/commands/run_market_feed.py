"""Run the market feed: Kraken's WebSocket v2 live, or a replay, into candles, FeedStatus, ticks, metrics."""

from __future__ import annotations

import asyncio
import signal
from datetime import UTC, datetime
from pathlib import Path

from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import connections

from trading.candles import check_timeframe
from trading.marketdata.feed import v2_symbol
from trading.marketdata.feed_lock import FeedAlreadyRunning, feed_instance_lock
from trading.marketdata.feed_service import MarketFeed
from trading.marketdata.kraken_ws import KrakenWSSource
from trading.marketdata.replay import ReplaySource, load_stored_bars, rows_from_ohlcvt_csv
from trading.selectors import UniverseError, traded_instruments


def _date(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise CommandError(f"{value!r} is not an ISO date or time (e.g. 2022-01-01)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = (
        "Run the market feed until SIGTERM/SIGINT (or the end of a replay): subscribes Kraken's WebSocket v2 "
        "(KRAKEN_WS_URL) ticker and ohlc channels for the traded pairs, stores closed candles (at most the "
        "forming bar as closed=False), keeps FeedStatus and its stale/live audit events, publishes ticks to "
        "the 'market.ticks' channel group and exports aether_market_* metrics. --source replay plays stored "
        "closed candles (or a Kraken OHLCVT file) through the same path on an accelerated clock."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--source", choices=("live", "replay"), default="live")
        parser.add_argument(
            "--pairs", help="comma-separated WebSocket v2 names (default: AETHER_PAIRS), e.g. BTC/USD,ETH/USD"
        )
        parser.add_argument("--timeframe", type=int, help="bar minutes (default: AETHER_TIMEFRAME)")
        parser.add_argument(
            "--stale-seconds", type=float, help="a pair is stale after this long without a message"
        )
        parser.add_argument(
            "--speed",
            type=float,
            help="replay: market seconds per wall-clock second (default: one bar per 0.1 s)",
        )
        parser.add_argument("--since", type=_date, help="replay: first bar's open time (ISO date)")
        parser.add_argument("--until", type=_date, help="replay: replay bars opening before this (ISO date)")
        parser.add_argument(
            "--from-csv",
            action="append",
            default=[],
            metavar="PAIR=FILE",
            help="replay a Kraken OHLCVT file (time,open,high,low,close,volume,trades) for PAIR instead of "
            "stored candles; its bars are stored with source 'replay' where no bar is stored yet (a replay "
            "never overwrites Kraken's bars). Repeatable.",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.MARKET_FEED_METRICS_PORT or None,
            help="serve this process's Prometheus metrics on this port (the web /metrics does not see them); "
            "default: MARKET_FEED_METRICS_PORT",
        )

    def handle(self, *args, **options) -> None:
        try:
            with feed_instance_lock():
                self._handle(options)
        except FeedAlreadyRunning as exc:
            raise CommandError(f"{exc}: run one market feed per database") from None

    def _handle(self, options) -> None:
        timeframe = settings.AETHER_TIMEFRAME if options["timeframe"] is None else options["timeframe"]
        try:
            check_timeframe(timeframe)
        except ValueError as exc:
            raise CommandError(f"--timeframe: {exc}") from None
        stale_seconds = options["stale_seconds"]
        if stale_seconds is None:
            stale_seconds = settings.MARKET_STALE_SECONDS
        if stale_seconds <= 0:
            raise CommandError("--stale-seconds must be positive")
        if options["speed"] is not None and options["speed"] <= 0:
            raise CommandError("--speed must be positive")
        if options["source"] == "replay" and settings.PRODUCTION:
            raise CommandError(
                "--source replay drives the pairs' feed status from recorded bars: it is for development and "
                "demos, and refused with AETHER_ENV=production"
            )
        csv_files = self._csv_files(options["from_csv"])
        if options["source"] == "live" and (
            csv_files or options["speed"] or options["since"] or options["until"]
        ):
            raise CommandError("--speed, --since, --until and --from-csv are for --source replay")
        pairs = self._pairs(options["pairs"], csv_files)
        try:
            instruments = traded_instruments(pairs)
        except UniverseError as exc:
            raise CommandError(str(exc)) from None

        if options["source"] == "live":
            source = KrakenWSSource(
                url=settings.KRAKEN_WS_URL, symbols=[i.symbol for i in instruments], timeframe=timeframe
            )
            self.stdout.write(
                f"market feed: live from {settings.KRAKEN_WS_URL}, {', '.join(pairs)}, {timeframe}m bars, "
                f"stale after {stale_seconds:g} s"
            )
        else:
            source = self._replay(instruments, timeframe, options, csv_files)

        if options["metrics_port"]:
            from prometheus_client import start_http_server

            try:
                start_http_server(options["metrics_port"])
            except OSError as exc:
                raise CommandError(
                    f"--metrics-port {options['metrics_port']}: cannot serve metrics there ({exc.strerror})"
                ) from None
            self.stdout.write(f"market feed: metrics on :{options['metrics_port']}/metrics")
        else:
            self.stdout.write(
                "market feed: metrics are not served from this process (pass --metrics-port to scrape them)"
            )

        feed = MarketFeed(
            instruments=instruments,
            timeframe=timeframe,
            stale_seconds=stale_seconds,
            announce=lambda line: self.stderr.write(self.style.WARNING(line)),
        )
        report = asyncio.run(self._run(feed, source))
        self.stdout.write(self.style.SUCCESS(report.summary()))

    async def _run(self, feed: MarketFeed, source):
        loop = asyncio.get_running_loop()
        stopping = []

        def stop(signame: str) -> None:
            if not stopping:
                self.stderr.write(f"market feed: {signame} received, shutting down")
            stopping.append(loop.create_task(source.close()))

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop, signal.Signals(signum).name)
        try:
            return await feed.run(source)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if stopping:
                await asyncio.gather(*stopping, return_exceptions=True)
            await sync_to_async(connections.close_all)()

    def _pairs(self, option: str | None, csv_files: dict[str, Path]) -> list[str]:
        if option:
            names = [name for name in (part.strip() for part in option.split(",")) if name]
        elif csv_files:
            names = list(csv_files)
        else:
            names = list(settings.AETHER_PAIRS)
        pairs = []
        for name in names:
            try:
                pair = v2_symbol(name)
            except ValueError as exc:
                raise CommandError(f"--pairs: {exc}") from None
            if pair != name:
                self.stdout.write(f"note: {name} is {pair} on Kraken's WebSocket v2; using {pair}")
            pairs.append(pair)
        unknown = sorted(set(csv_files) - set(pairs))
        if unknown:
            raise CommandError(f"--from-csv for {', '.join(unknown)}, which is not in --pairs")
        return list(dict.fromkeys(pairs))

    def _csv_files(self, values: list[str]) -> dict[str, Path]:
        files = {}
        for value in values:
            pair, sep, path = value.partition("=")
            if not sep or not pair or not path:
                raise CommandError(f"--from-csv {value!r}: expected PAIR=FILE, e.g. BTC/USD=XBTUSD_60.csv")
            try:
                files[v2_symbol(pair)] = Path(path)
            except ValueError as exc:
                raise CommandError(f"--from-csv: {exc}") from None
        return files

    def _replay(self, instruments, timeframe: int, options: dict, csv_files: dict[str, Path]) -> ReplaySource:
        since, until = options["since"], options["until"]
        if csv_files:
            bars = {}
            for instrument in instruments:
                path = csv_files.get(instrument.symbol)
                if path is None:
                    raise CommandError(f"--from-csv: no file for {instrument.symbol}")
                try:
                    rows = rows_from_ohlcvt_csv(path, timeframe=timeframe)
                except OSError as exc:
                    raise CommandError(f"--from-csv {path}: {exc}") from None
                except ValueError as exc:
                    raise CommandError(f"--from-csv: {exc}") from None
                bars[instrument.symbol] = [
                    row
                    for row in rows
                    if (since is None or row.open_time >= since) and (until is None or row.open_time < until)
                ]
            store, origin = True, "files (stored as 'replay' candles where none exists)"
        else:
            bars = load_stored_bars(instruments=instruments, timeframe=timeframe, since=since, until=until)
            store, origin = False, "stored closed candles (not rewritten)"
        empty = [symbol for symbol, rows in bars.items() if not rows]
        if empty:
            raise CommandError(
                f"nothing to replay for {', '.join(empty)} at {timeframe}m in the chosen range "
                "(load candles first, or pass --from-csv)"
            )
        source = ReplaySource(bars=bars, timeframe=timeframe, speed=options["speed"], store=store)
        self.stdout.write(
            f"market feed: replay of {len(source)} bars from {origin}, {timeframe}m bars at {source.speed:g}x"
        )
        return source
