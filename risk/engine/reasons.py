"""Machine-readable reason codes and the finding that pairs one with a sentence a director can read.

Every refusal, resize or warning of the engine is a :class:`Finding`: ``code`` for metrics, filters and
tests; ``message`` for the audit trail and the admin. The codes are stable strings (they end up in
metric labels and audit rows), so rename one only with a migration of those.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum


class Code(StrEnum):
    # policy and inputs
    POLICY_INVALID = "policy_invalid"
    INVALID_INPUT = "invalid_input"
    INVALID_QUANTITY = "invalid_quantity"
    LOT_PRECISION = "lot_precision"
    # account gates
    TRADING_DISABLED = "trading_disabled"
    MODE_MISMATCH = "mode_mismatch"
    HALTED = "halted"
    KILL_SWITCH_LATCHED = "kill_switch_latched"
    RATE_LIMIT = "rate_limit"
    # market
    NOT_IN_UNIVERSE = "not_in_universe"
    PRICE_MISSING = "price_missing"
    PRICE_STALE = "price_stale"
    VOLATILITY_INVALID = "volatility_invalid"
    # balances and limits
    EQUITY_MISSING = "equity_missing"
    BALANCE_MISSING = "balance_missing"
    INSUFFICIENT_FUNDS = "insufficient_funds"
    SELL_EXCEEDS_HOLDING = "sell_exceeds_holding"
    PAIR_LIMIT = "pair_limit"
    GROUP_LIMIT = "group_limit"
    VOLATILITY_LIMIT = "volatility_limit"
    BUYING_POWER_LIMIT = "buying_power_limit"
    EDGE_MISSING = "edge_missing"
    EDGE_TOO_SMALL = "edge_too_small"
    # Kraken's minimums
    BELOW_ORDERMIN = "below_ordermin"
    BELOW_COSTMIN = "below_costmin"


@dataclass(frozen=True, slots=True)
class Finding:
    """One reason: a stable ``code`` and a human ``message`` naming the numbers involved."""

    code: Code
    message: str


class RiskInputError(ValueError):
    """A value the engine cannot compute with (NaN, negative price, missing mark); the message says which.

    Raised only by the arithmetic helpers (:mod:`~risk.engine.exits`, :mod:`~risk.engine.nav`); the decision
    functions (:func:`~risk.engine.checks.check_order`, :func:`~risk.engine.sizing.size_entry`) never raise
    for bad input: they fail closed with a :class:`Finding` instead."""


def is_number(value: object) -> bool:
    """A finite ``Decimal``, ``int`` or ``float``: ``NaN``, infinities, ``None`` and booleans are not."""
    if isinstance(value, Decimal):
        return value.is_finite()
    if isinstance(value, int | float) and not isinstance(value, bool):
        return math.isfinite(value)
    return False
