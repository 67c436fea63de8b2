"""A funded simulated book with candles for the hedge services."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.conf import settings
from django.utils import timezone

from governance.actors import SystemActor
from hedging.services import hedge_policy_update
from tests.hedging.builders import calm_then_stormy, hourly, wave
from trading.matching import Quote
from trading.models import Candle
from trading.quotes import MemoryQuoteSource
from trading.services.orders import order_submit, sim_balance_set

ENGINE = SystemActor("strategy_cycle")


def store_closes(instrument, closes: list[float], *, end) -> None:
    Candle.objects.bulk_create(
        Candle(
            instrument=instrument,
            timeframe=settings.AETHER_TIMEFRAME,
            open_time=open_time,
            open=D(str(round(close, 6))),
            high=D(str(round(close * 1.001, 6))),
            low=D(str(round(close * 0.999, 6))),
            close=D(str(round(close, 6))),
            volume=D("10"),
            source=Candle.Source.REPLAY,
        )
        for open_time, close in zip(hourly(end, len(closes)), closes, strict=True)
    )


@dataclass
class Book:
    account: object
    btc: object
    eth: object
    quotes: MemoryQuoteSource
    now: object


@pytest.fixture
def book(firm, universe) -> Book:
    """Alice's simulated account: 100,000 USD funded, then 1 BTC at 50,000 and 10 ETH at 3,000 bought by the
    strategy (about 20 % left in USD); a week of calm hourly candles for every traded pair; a hedge policy
    with a one-week volatility look-back."""
    account = firm.alice_account
    now = timezone.now().replace(minute=0, second=0, microsecond=0) + timedelta(minutes=1)
    sim_balance_set(account=account, asset="USD", amount=D("100000"), actor=firm.owner, reason="test funds")
    quotes = MemoryQuoteSource(
        {
            "BTC/USD": Quote.from_last(D("50000"), now - timedelta(seconds=30)),
            "ETH/USD": Quote.from_last(D("3000"), now - timedelta(seconds=30)),
            "SOL/USD": Quote.from_last(D("20"), now - timedelta(seconds=30)),
        }
    )
    for symbol, quantity in (("BTC/USD", "1"), ("ETH/USD", "10")):
        order_submit(
            account=account,
            actor=ENGINE,
            instrument=universe[symbol],
            side="buy",
            order_type="market",
            quantity=D(quantity),
            reason="strategy",
            quotes=quotes,
        )
    for symbol, price in (("BTC/USD", 50000.0), ("ETH/USD", 3000.0), ("SOL/USD", 20.0)):
        store_closes(universe[symbol], wave(price, bars=192, amplitude=0.002), end=now)
    hedge_policy_update(account=account, actor=firm.owner, vol_lookback=168, band_pct=D(5))
    return Book(account, universe["BTC/USD"], universe["ETH/USD"], quotes, now)


def make_stormy(book: Book, symbol: str = "ETH/USD") -> None:
    """Replace the pair's candles by a calm week and a stormy last day (volatility ratio about 10)."""
    from trading.models import Instrument

    instrument = Instrument.objects.get(symbol=symbol)
    Candle.objects.filter(instrument=instrument).delete()
    store_closes(instrument, calm_then_stormy(3000.0), end=book.now)
