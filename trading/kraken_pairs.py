"""Kraken AssetPairs answers → the spot USD universe. Plain Python, no Django.

Kraken names assets its own way (``XXBT``, ``ZUSD``, ``XXDG``) and its ``wsname`` still says ``XBT/USD``,
but the WebSocket v2 API refuses that and wants ``BTC/USD``. Our canonical symbol is the v2 one. Margin and
leverage fields in the answer are deliberately ignored: Aether trades spot only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

# Kraken's legacy asset codes → the codes its WebSocket v2 API (and everyone else) uses.
ASSET_ALIASES = {"XBT": "BTC", "XDG": "DOGE"}
STATUSES = frozenset(
    {"online", "cancel_only", "post_only", "limit_only", "reduce_only", "delisted", "maintenance"}
)
QUOTE = "USD"


class PairRejected(ValueError):
    """This AssetPairs entry is not part of a spot USD universe (or is malformed); the message says why."""


@dataclass(frozen=True, slots=True)
class PairFacts:
    symbol: str  # "BTC/USD": WebSocket v2 name and our canonical one
    kraken_pair: str  # AssetPairs key, e.g. "XXBTZUSD"
    altname: str  # "XBTUSD"
    wsname: str  # as Kraken lists it, e.g. "XBT/USD"
    base: str  # Kraken's code, e.g. "XXBT"
    quote: str  # "ZUSD"
    base_asset: str  # common code, e.g. "BTC"
    ordermin: Decimal
    costmin: Decimal
    tick_size: Decimal
    pair_decimals: int
    lot_decimals: int
    cost_decimals: int
    status: str


def common_code(code: str) -> str:
    return ASSET_ALIASES.get(code, code)


def _decimal(entry: Mapping[str, Any], name: str, *, required: bool = True) -> Decimal:
    raw = entry.get(name)
    if raw is None:
        if required:
            raise PairRejected(f"missing {name}")
        return Decimal(0)
    try:
        value = Decimal(str(raw))
    except InvalidOperation:
        raise PairRejected(f"{name}={raw!r} is not a number") from None
    if not value.is_finite() or value < 0:
        raise PairRejected(f"{name}={raw!r} must be a finite, non-negative number")
    return value


def _integer(entry: Mapping[str, Any], name: str) -> int:
    raw = entry.get(name)
    if not isinstance(raw, int) or isinstance(raw, bool) or not 0 <= raw <= 18:
        raise PairRejected(f"{name}={raw!r} is not a whole number of decimals")
    return raw


def parse_pair(kraken_pair: str, entry: Mapping[str, Any]) -> PairFacts:
    """The facts of one spot USD pair, or :class:`PairRejected` saying why it is not one."""
    if not isinstance(entry, Mapping):
        raise PairRejected("entry is not an object")
    wsname = entry.get("wsname")
    if not isinstance(wsname, str) or wsname.count("/") != 1:
        raise PairRejected(f"wsname={wsname!r} is not BASE/QUOTE")
    base_code, quote_code = wsname.split("/")
    if quote_code != QUOTE or entry.get("quote") != "ZUSD":
        raise PairRejected(f"quoted in {quote_code}, not USD")
    # Safety facts have no defaults: an entry that does not say it is a spot currency pair, or what its
    # trading status is, is not traded.
    if entry.get("aclass_base") != "currency" or entry.get("aclass_quote") != "currency":
        raise PairRejected("not a spot currency pair (aclass_base/aclass_quote missing or not 'currency')")
    status = entry.get("status")
    if status not in STATUSES:
        raise PairRejected(f"unknown or missing status {status!r}")
    tick_size = _decimal(entry, "tick_size")
    ordermin = _decimal(entry, "ordermin")
    if tick_size <= 0:
        raise PairRejected(f"tick_size={tick_size} must be positive")
    base_asset = common_code(base_code)
    return PairFacts(
        symbol=f"{base_asset}/{QUOTE}",
        kraken_pair=kraken_pair,
        altname=str(entry.get("altname") or kraken_pair),
        wsname=wsname,
        base=str(entry.get("base", "")),
        quote=str(entry.get("quote", "")),
        base_asset=base_asset,
        ordermin=ordermin,
        costmin=_decimal(entry, "costmin", required=False),
        tick_size=tick_size,
        pair_decimals=_integer(entry, "pair_decimals"),
        lot_decimals=_integer(entry, "lot_decimals"),
        cost_decimals=_integer(entry, "cost_decimals"),
        status=status,
    )


@dataclass(frozen=True, slots=True)
class Universe:
    pairs: tuple[PairFacts, ...]
    rejected: tuple[tuple[str, str], ...]  # (kraken pair, reason)


def parse_asset_pairs(answer: Mapping[str, Any]) -> Universe:
    """A whole AssetPairs answer (``{"error": [...], "result": {...}}``) → the spot USD pairs and the
    pairs left out, each with its reason. Errors in the envelope raise ``ValueError``."""
    if not isinstance(answer, Mapping):
        raise ValueError("AssetPairs answer is not a JSON object")
    errors = answer.get("error") or []
    if errors:
        raise ValueError(f"Kraken AssetPairs error: {', '.join(map(str, errors))}")
    result = answer.get("result")
    if not isinstance(result, Mapping) or not result:
        raise ValueError("AssetPairs answer has no result")
    pairs, rejected = [], []
    for name, entry in sorted(result.items()):
        try:
            pairs.append(parse_pair(name, entry))
        except PairRejected as exc:
            rejected.append((name, str(exc)))
    symbols = [pair.symbol for pair in pairs]
    duplicates = {symbol for symbol in symbols if symbols.count(symbol) > 1}
    if duplicates:
        raise ValueError(f"AssetPairs lists more than one pair for {', '.join(sorted(duplicates))}")
    return Universe(tuple(pairs), tuple(rejected))
