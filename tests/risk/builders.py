"""Plain builders for the risk engine's values: three pairs, a fresh snapshot, a fixed clock."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from risk.engine import Mode, PriceQuote, Snapshot, SwitchState
from trading.brokers.base import PairRules
from trading.fees import FeeRates

D = Decimal
NOW = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
FEES = FeeRates(maker_pct=D("0.25"), taker_pct=D("0.40"))


def pair(
    symbol: str, *, ordermin: str, costmin: str = "0.5", tick: str = "0.1", quote: str = "USD"
) -> PairRules:
    base = symbol.split("/")[0]
    return PairRules(
        symbol=symbol,
        kraken_pair=f"X{base}Z{quote}",
        base_asset=base,
        quote_asset=quote,
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
PAIRS = {p.symbol: p for p in (BTC, ETH, SOL)}
PRICES = {"BTC/USD": D(20000), "ETH/USD": D(1500), "SOL/USD": D(20)}
GROUPS = (frozenset({"BTC/USD", "ETH/USD"}), frozenset({"SOL/USD"}))


def snapshot(**changes) -> Snapshot:
    """A simulated account with 10,000 USD equity, all in cash, fresh prices, nothing held."""
    base = Snapshot(
        now=NOW,
        mode=Mode.SIMULATION,
        broker="sim",
        trading_enabled=True,
        switch=SwitchState(),
        pairs=PAIRS,
        prices={symbol: PriceQuote(price, NOW - timedelta(seconds=30)) for symbol, price in PRICES.items()},
        max_price_age=timedelta(minutes=5),
        equity=D(10000),
        available_usd=D(10000),
        held={},
        fees=FEES,
        slippage_pct=D("0.05"),
        exposures={},
        groups=GROUPS,
    )
    return replace(base, **changes)
