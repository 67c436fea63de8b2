"""Kraken spot fees: the published schedule (the default of record) and the arithmetic. Plain Python.

Recent AssetPairs answers carry empty fee tables, so an account's real rates come from the private
``TradeVolume`` endpoint once it has a key; until then the published schedule applies.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class FeeRates:
    maker_pct: Decimal  # percent of notional, e.g. Decimal("0.25")
    taker_pct: Decimal


# 30-day USD volume → (maker %, taker %): Kraken's published spot schedule.
PUBLISHED_SCHEDULE: tuple[tuple[Decimal, FeeRates], ...] = tuple(
    (Decimal(volume), FeeRates(Decimal(maker), Decimal(taker)))
    for volume, maker, taker in (
        ("0", "0.25", "0.40"),
        ("10000", "0.20", "0.35"),
        ("50000", "0.14", "0.24"),
        ("100000", "0.12", "0.22"),
        ("250000", "0.10", "0.20"),
        ("500000", "0.08", "0.18"),
        ("1000000", "0.06", "0.16"),
        ("2500000", "0.04", "0.14"),
        ("5000000", "0.02", "0.12"),
        ("10000000", "0.00", "0.10"),
    )
)


def published_rates(volume_30d_usd: Decimal = Decimal(0)) -> FeeRates:
    """The published tier for a 30-day USD volume."""
    if volume_30d_usd < 0:
        raise ValueError("30-day volume cannot be negative")
    rates = PUBLISHED_SCHEDULE[0][1]
    for threshold, tier in PUBLISHED_SCHEDULE:
        if volume_30d_usd >= threshold:
            rates = tier
    return rates
