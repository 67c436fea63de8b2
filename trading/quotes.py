"""Where the simulator's prices come from: a :class:`QuoteSource` gives the current :class:`Quote` of a pair.

* :class:`DatabaseQuoteSource` (the default of ``SimBroker``): the newer of the live feed's last price
  (``FeedStatus.last_price`` at ``last_message_at``) and the close of the last closed candle of
  ``AETHER_TIMEFRAME``, with the volatility and bar notional of the recent closed candles. A tick is fresh
  for ``MARKET_STALE_SECONDS`` (and never when the feed has marked the pair stale); a candle close until two
  bars after the candle closed. The candle-derived figures are computed again only when the window of
  recent closed candles read changes (:func:`candle_stats`); the tick is read on every call.
* :class:`MemoryQuoteSource`: quotes set by hand, for backtests, the bench and tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Protocol, runtime_checkable

from django.conf import settings

from aether_site.rows import select_values
from trading.matching import Bar, Quote, log_return_volatility
from trading.models import Candle, FeedStatus

#: How many recent closed candles the volatility and the bar notional are measured over (by default).
STATS_BARS = 24


@runtime_checkable
class QuoteSource(Protocol):
    def quote(self, instrument) -> Quote | None:
        """The current quote of ``instrument`` (anything with a ``symbol``), or ``None`` with no price."""
        ...


class MemoryQuoteSource:
    """Quotes kept by symbol (``source.set("BTC/USD", quote)``): plain, for backtests and the bench."""

    def __init__(self, quotes: dict[str, Quote] | None = None) -> None:
        self.quotes: dict[str, Quote] = dict(quotes or {})

    def set(self, symbol: str, quote: Quote) -> None:
        self.quotes[symbol] = quote

    def quote(self, instrument) -> Quote | None:
        return self.quotes.get(instrument.symbol)


@dataclass(frozen=True, slots=True)
class CandleStats:
    """What a quote takes from the recent closed candles: the last close and its time, the close-to-close
    volatility and the mean bar notional (``None`` without candles)."""

    last_close: Decimal | None
    last_close_time: datetime | None
    volatility: Decimal | None
    bar_notional: Decimal | None


# (instrument pk, timeframe) → (the window the stats were computed from, the stats), one entry per series.
_STATS: dict[tuple[int, int], tuple[tuple, CandleStats]] = {}


def candle_stats(instrument_id: int, timeframe: int, window: tuple) -> CandleStats:
    """The :class:`CandleStats` of ``window``: the series' recent closed candles as ``(open_time, close,
    volume)`` rows, newest first, exactly as read. A pure function of ``window`` and ``timeframe``, kept per
    series for as long as the window read is the same: a new candle, a corrected or deleted one changes the
    window (whatever its ``updated_at`` says), and the stats are computed again. Per process; nothing in it
    outlives a change of the rows, so nothing needs invalidating."""
    key = (instrument_id, timeframe)
    kept = _STATS.get(key)
    if kept is not None and kept[0] == window:
        return kept[1]
    stats = _stats_of(timeframe, window)
    _STATS[key] = (window, stats)
    return stats


def candle_stats_clear() -> None:
    """Forget every series' kept stats (the next quote computes them again)."""
    _STATS.clear()


def _stats_of(timeframe: int, window: tuple) -> CandleStats:
    if not window:
        return CandleStats(last_close=None, last_close_time=None, volatility=None, bar_notional=None)
    closes = [close for _, close, _ in reversed(window)]  # oldest first
    notionals = [volume * close for _, close, volume in reversed(window) if volume > 0]
    newest_open, newest_close, _ = window[0]
    return CandleStats(
        last_close=newest_close,
        last_close_time=newest_open + timedelta(minutes=timeframe),
        volatility=log_return_volatility(closes),
        bar_notional=sum(notionals) / len(notionals) if notionals else None,
    )


def candle_bar(candle: Candle) -> Bar:
    """A stored candle as the matching core's :class:`Bar`."""
    return Bar(
        open=candle.open,
        high=candle.high,
        low=candle.low,
        close=candle.close,
        volume=candle.volume,
        open_time=candle.open_time,
        close_time=candle.open_time + timedelta(minutes=candle.timeframe),
    )


class DatabaseQuoteSource:
    """The live feed's last price or the last closed candle, whichever is newer (see the module docstring)."""

    def __init__(self, *, timeframe: int | None = None, stats_bars: int = STATS_BARS) -> None:
        self.timeframe = settings.AETHER_TIMEFRAME if timeframe is None else timeframe
        self.stats_bars = stats_bars

    def quote(self, instrument) -> Quote | None:
        # Both reads are on the order path: written with ``aether_site.rows`` (no statement building).
        window = tuple(
            select_values(
                Candle,
                ("open_time", "close", "volume"),
                "instrument_id = %s AND timeframe = %s AND closed = %s",
                [instrument.pk, self.timeframe, True],
                order_by="open_time DESC",
                limit=self.stats_bars,
            )
        )
        stats = candle_stats(instrument.pk, self.timeframe, window)
        volatility, bar_notional = stats.volatility, stats.bar_notional

        best: Quote | None = None
        if stats.last_close is not None:
            best = Quote.from_last(
                stats.last_close,
                stats.last_close_time,
                volatility=volatility,
                bar_notional=bar_notional,
                fresh_until=stats.last_close_time + 2 * timedelta(minutes=self.timeframe),
            )
        statuses = select_values(  # one row per instrument
            FeedStatus,
            ("last_price", "last_message_at", "stale"),
            "instrument_id = %s",
            [instrument.pk],
            limit=1,
        )
        status = statuses[0] if statuses else None
        last_price, at, stale = status if status is not None else (None, None, False)
        if last_price is not None and at is not None:
            # A pair the feed has marked stale is stale from its last message on.
            fresh_until = at if stale else at + timedelta(seconds=settings.MARKET_STALE_SECONDS)
            tick = Quote.from_last(
                last_price,
                at,
                volatility=volatility,
                bar_notional=bar_notional,
                fresh_until=fresh_until,
            )
            if best is None or (tick.at >= best.at and not stale):
                best = tick
        return best
