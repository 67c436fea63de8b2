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


@dataclass(frozen=True, slots=True)
class TradeVolume:
    """An account's answer from Kraken's private TradeVolume endpoint."""

    volume_30d_usd: Decimal
    rates: dict[str, FeeRates]  # by Kraken pair key, e.g. "XXBTZUSD"


def _percent(entry, where: str) -> Decimal:
    try:
        value = Decimal(str(entry["fee"]))
    except (KeyError, TypeError, ArithmeticError):
        raise ValueError(f"TradeVolume {where}: no readable 'fee'") from None
    if not value.is_finite() or not Decimal(0) <= value <= Decimal(5):
        raise ValueError(f"TradeVolume {where}: fee {value} % is not a plausible rate")
    return value


def parse_trade_volume(result) -> TradeVolume:
    """Kraken's TradeVolume ``result``: ``fees`` are taker rates per pair, ``fees_maker`` maker rates, both
    in percent. A pair without a maker entry is charged its taker rate (the higher, so never optimistic)."""
    if not isinstance(result, dict):
        raise ValueError("TradeVolume answer is not an object")
    try:
        volume = Decimal(str(result.get("volume", "0")))
    except ArithmeticError:
        raise ValueError(f"TradeVolume volume {result.get('volume')!r} is not a number") from None
    taker = result.get("fees") or {}
    maker = result.get("fees_maker") or {}
    if not isinstance(taker, dict) or not isinstance(maker, dict):
        raise ValueError("TradeVolume fees are not objects")
    rates = {}
    for pair, entry in taker.items():
        taker_pct = _percent(entry, f"fees[{pair}]")
        maker_pct = _percent(maker[pair], f"fees_maker[{pair}]") if pair in maker else taker_pct
        rates[pair] = FeeRates(maker_pct=maker_pct, taker_pct=taker_pct)
    return TradeVolume(volume_30d_usd=volume, rates=rates)
