"""Builders for the hedge tests: pairs and holdings for the pure core, candles and a funded book for the
services."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hedging.policy import Holding
from trading.brokers.base import PairRules
from trading.fees import FeeRates

D = Decimal
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FEES = FeeRates(maker_pct=D("0.25"), taker_pct=D("0.40"))


def pair(symbol: str, *, ordermin: str, costmin: str = "0.5", tick: str = "0.1") -> PairRules:
    base = symbol.split("/")[0]
    return PairRules(
        symbol=symbol,
        kraken_pair=f"X{base}ZUSD",
        base_asset=base,
        quote_asset="USD",
        ordermin=D(ordermin),
        costmin=D(costmin),
        tick_size=D(tick),
        pair_decimals=-D(tick).as_tuple().exponent,
        lot_decimals=8,
        cost_decimals=5,
        status="online",
    )


BTC = pair("BTC/USD", ordermin="0.0001")
ETH = pair("ETH/USD", ordermin="0.002", tick="0.01")
SOL = pair("SOL/USD", ordermin="0.02", tick="0.01")


def holding(
    rules: PairRules, quantity: str, price: str, *, free: str | None = None, vol: float | None = None
):
    return Holding(
        symbol=rules.symbol,
        pair=rules,
        quantity=D(quantity),
        free=D(free if free is not None else quantity),
        price=D(price),
        volatility=vol,
    )


def wave(start: float, *, bars: int, amplitude: float) -> list[float]:
    """Closes that alternate up and down by ``amplitude`` (a fraction): a steady realised volatility."""
    closes, price = [], start
    for i in range(bars):
        price *= math.exp(amplitude if i % 2 == 0 else -amplitude)
        closes.append(price)
    return closes


def calm_then_stormy(start: float, *, calm: int = 168, stormy: int = 24, storm: float = 0.02) -> list[float]:
    """A week of hourly closes moving 0.2 % a bar, then a day moving ``storm`` a bar."""
    closes = wave(start, bars=calm, amplitude=0.002)
    return closes + wave(closes[-1], bars=stormy, amplitude=storm)


def hourly(end: datetime, count: int) -> list[datetime]:
    """``count`` bar open times, the last bar closing at ``end`` (on the hour)."""
    last = end.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    return [last - timedelta(hours=count - 1 - i) for i in range(count)]
