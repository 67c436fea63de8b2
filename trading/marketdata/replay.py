"""The replay source: stored closed candles played through the feed on an accelerated clock, so the same
sink, strategy cycle and websocket pushes run as they would live. Each bar is emitted, at its close time
(divided by ``speed``), as a closed :class:`Bar` followed by a :class:`Tick` at its close price.

The source itself is plain Python; :func:`load_stored_bars` reads the database (through the selectors) and
:func:`rows_from_ohlcvt_csv` reads Kraken's bulk OHLCVT files.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice
from pathlib import Path

from trading.candles import CandleRow, check_timeframe
from trading.marketdata.feed import Bar, Event, Tick
from trading.marketdata.kraken_csv import CsvReport, parse_lines

DEFAULT_SECONDS_PER_BAR = 0.1


def default_speed(timeframe: int) -> float:
    """The speed that plays one bar of ``timeframe`` minutes per 0.1 s (36,000 times for hourly bars)."""
    return timeframe * 60 / DEFAULT_SECONDS_PER_BAR


@dataclass
class ReplayStats:
    bars: int = 0
    first: datetime | None = None
    last: datetime | None = None


class ReplaySource:
    """Plays ``bars`` (symbol → closed rows) in time order: bars closing at the same moment together,
    ``speed`` times faster than real time (market seconds per wall-clock second).

    ``store`` True: the feed stores the bars as ``replay`` candles (rows from a file into a demo database),
    insert-only: a replayed bar is stored only where no bar exists, so Kraken's bars are never overwritten
    (``candles_upsert``). False: the rows are already stored (replayed from the database) and are not
    rewritten, which would relabel Kraken's bars as replayed ones."""

    name = "replay"

    def __init__(
        self,
        *,
        bars: Mapping[str, Iterable[CandleRow]],
        timeframe: int,
        speed: float | None = None,
        store: bool = True,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeframe = check_timeframe(timeframe)
        self.speed = default_speed(timeframe) if speed is None else float(speed)
        if self.speed <= 0:
            raise ValueError("replay speed must be positive")
        self.store_as = "replay" if store else None
        self.monotonic = monotonic
        self.stats = ReplayStats()
        span = timedelta(minutes=timeframe)
        schedule = []
        for symbol, rows in bars.items():
            for row in rows:
                if not row.closed:
                    raise ValueError(f"replay plays closed bars only; {symbol} {row.open_time} is forming")
                schedule.append((row.open_time + span, symbol, row))
        schedule.sort(key=lambda item: (item[0], item[1]))
        self._schedule = schedule
        self._stop = asyncio.Event()

    def __len__(self) -> int:
        return len(self._schedule)

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._events()

    async def close(self) -> None:
        self._stop.set()

    async def _events(self) -> AsyncIterator[Event]:
        if not self._schedule:
            return
        market_start = self._schedule[0][0]
        wall_start = self.monotonic()
        for close_time, symbol, row in self._schedule:
            if self._stop.is_set():
                return
            due = (close_time - market_start).total_seconds() / self.speed
            wait = due - (self.monotonic() - wall_start)
            if wait > 0:
                try:
                    await asyncio.wait_for(self._stop.wait(), wait)
                    return
                except TimeoutError:
                    pass
            self.stats.bars += 1
            self.stats.first = self.stats.first or row.open_time
            self.stats.last = row.open_time
            yield Bar(symbol, self.timeframe, row)
            yield Tick(symbol, row.close, None, None, close_time)


def load_stored_bars(*, instruments, timeframe: int, since=None, until=None) -> dict[str, list[CandleRow]]:
    """Closed candles from the database (``closed_candles``), symbol → rows oldest first."""
    from trading.selectors import closed_candles

    bars = {}
    for instrument in instruments:
        bars[instrument.symbol] = [
            CandleRow(
                open_time=candle.open_time,
                open=candle.open,
                high=candle.high,
                low=candle.low,
                close=candle.close,
                volume=candle.volume,
                trades=candle.trades,
                closed=True,
            )
            for candle in closed_candles(instrument=instrument, timeframe=timeframe, since=since, until=until)
        ]
    return bars


def rows_from_ohlcvt_csv(path: Path, *, timeframe: int, limit: int | None = None) -> list[CandleRow]:
    """Kraken's bulk OHLCVT file as closed rows (parsed by :mod:`trading.marketdata.kraken_csv`). A replay
    plays a file as it is or not at all: any invalid line is an error naming it."""
    report = CsvReport()
    with Path(path).open(encoding="utf-8") as handle:
        rows = list(islice(parse_lines(handle, minutes=timeframe, report=report), limit))
    if report.examples:
        raise ValueError(f"{path}: {sum(report.skipped.values())} invalid line(s), e.g. {report.examples[0]}")
    return rows
