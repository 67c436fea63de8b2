"""Where the simulator's prices come from: a :class:`QuoteSource` gives the current :class:`Quote` of a pair.

* :class:`DatabaseQuoteSource` (the default of ``SimBroker``): the newer of the live feed's last price
  (``FeedStatus.last_price`` at ``last_message_at``) and the close of the last closed candle of
  ``AETHER_TIMEFRAME``, with the volatility and bar notional of the recent closed candles. A tick is fresh
  for ``MARKET_STALE_SECONDS`` (and never when the feed has marked the pair stale); a candle close until two
  bars after the candle closed.
* :class:`MemoryQuoteSource`: quotes set by hand, for backtests, the bench and tests.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol, runtime_checkable

from django.conf import settings

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
        candles = list(
            Candle.objects.filter(instrument=instrument, timeframe=self.timeframe, closed=True)
            .order_by("-open_time")
            .only("open", "high", "low", "close", "volume", "open_time", "timeframe")[: self.stats_bars]
        )
        candles.reverse()
        bars = [candle_bar(candle) for candle in candles]
        volatility = log_return_volatility([bar.close for bar in bars])
        notionals = [bar.notional for bar in bars if bar.volume > 0]
        bar_notional = sum(notionals) / len(notionals) if notionals else None

        best: Quote | None = None
        if bars:
            last_bar = bars[-1]
            best = Quote.from_last(
                last_bar.close,
                last_bar.close_time,
                volatility=volatility,
                bar_notional=bar_notional,
                fresh_until=last_bar.close_time + 2 * timedelta(minutes=self.timeframe),
            )
        status = (
            FeedStatus.objects.filter(instrument=instrument)
            .order_by()  # one row per instrument: no join for the model's ordering
            .only("last_price", "last_message_at", "stale")
            .first()
        )
        if status is not None and status.last_price is not None and status.last_message_at is not None:
            at = status.last_message_at
            # A pair the feed has marked stale is stale from its last message on.
            fresh_until = at if status.stale else at + timedelta(seconds=settings.MARKET_STALE_SECONDS)
            tick = Quote.from_last(
                status.last_price,
                at,
                volatility=volatility,
                bar_notional=bar_notional,
                fresh_until=fresh_until,
            )
            if best is None or (tick.at >= best.at and not status.stale):
                best = tick
        return best
