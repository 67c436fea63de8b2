"""Position sizing for a new long entry: risk per trade over the stop distance, capped, rounded down.

With equity ``E``, entry price ``P``, per-bar price volatility ``V`` (the ATR, or ``P x sigma`` from a
realised volatility ``sigma`` of bar log returns) and the policy's stop rule::

    stop distance    D    = stop_loss.value x V          (ATR rule)   or  P x stop_loss.value / 100
    by risk          q_r  = E x risk_per_trade_pct / 100 / D
    by pair limit    q_p  = E x max_position_pct / 100 / P
    by vol target    q_v  = E x volatility_target_pct / 100 / V      (when the policy sets a target)
    by buying power  q_b  = B / (P x (1 + taker_pct / 100))          (when a cap B is given)
    quantity         q    = floor_to_lot(min(q_r, q_p, q_v, q_b))

``B`` is passed in by the caller, e.g. ``equity x (1 - hedge target)``. The result is no trade (quantity 0,
with the reason) when ``q`` is below Kraken's ``ordermin`` or ``q x P`` below its ``costmin``, and fails
closed on a missing, zero, negative or NaN equity, price or volatility.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from risk.engine.policy import HUNDRED, RiskPolicy
from risk.engine.reasons import Code, Finding, is_number
from trading.brokers.base import PairRules
from trading.fees import FeeRates
from trading.matching import plain, round_to_step

ZERO = Decimal(0)


def lot_of(pair: PairRules) -> Decimal:
    """The pair's quantity step: 10^-lot_decimals."""
    return Decimal(1).scaleb(-pair.lot_decimals)


def floor_to_lot(quantity: Decimal, pair: PairRules) -> Decimal:
    """``quantity`` rounded down to the pair's lot precision (never below zero)."""
    return max(round_to_step(quantity, lot_of(pair), up=False), ZERO)


def minimum_findings(quantity: Decimal, price: Decimal, pair: PairRules) -> list[Finding]:
    """Why ``quantity`` at ``price`` is below Kraken's ``ordermin`` or ``costmin`` (empty: it is not)."""
    findings = []
    if quantity < pair.ordermin:
        findings.append(
            Finding(
                Code.BELOW_ORDERMIN,
                f"{plain(quantity)} {pair.base_asset} is below Kraken's minimum order of "
                f"{plain(pair.ordermin)} {pair.base_asset} for {pair.symbol}",
            )
        )
    if quantity * price < pair.costmin:
        findings.append(
            Finding(
                Code.BELOW_COSTMIN,
                f"{plain(quantity)} {pair.base_asset} at {plain(price)} costs {plain(quantity * price)} USD, "
                f"below Kraken's minimum order cost of {plain(pair.costmin)} USD for {pair.symbol}",
            )
        )
    return findings


@dataclass(frozen=True, slots=True)
class Size:
    """A sizing answer. ``quantity`` is 0 when there is no trade; ``reasons`` then say why. ``limited_by``
    names the binding cap (``"risk"``, or the code of a limit); ``stop_distance`` is ``D`` above."""

    quantity: Decimal
    stop_distance: Decimal
    limited_by: str
    reasons: tuple[Finding, ...] = ()

    @property
    def tradable(self) -> bool:
        return self.quantity > 0


def price_volatility(
    *, price: Decimal, atr: Decimal | None, realised_volatility: Decimal | None
) -> Decimal | None:
    """The per-bar price move ``V``: the ATR when given, else ``price x realised_volatility``; ``None`` when
    neither is a positive finite number."""
    if atr is not None:
        return atr if is_number(atr) and atr > 0 else None
    if is_number(realised_volatility) and realised_volatility > 0:
        return price * realised_volatility
    return None


def size_entry(
    *,
    policy: RiskPolicy,
    pair: PairRules,
    equity: Decimal,
    price: Decimal,
    fees: FeeRates,
    atr: Decimal | None = None,
    realised_volatility: Decimal | None = None,
    buying_power: Decimal | None = None,
) -> Size:
    """The quantity to buy for a new entry (formulas in the module docstring)."""

    def no_trade(*findings: Finding) -> Size:
        return Size(quantity=ZERO, stop_distance=ZERO, limited_by="", reasons=findings)

    problems = policy.validate()
    if problems:
        return no_trade(Finding(Code.POLICY_INVALID, "; ".join(problems)))
    if not is_number(equity) or equity <= 0:
        return no_trade(Finding(Code.EQUITY_MISSING, f"equity is {equity}: no entry without a known equity"))
    if not is_number(price) or price <= 0:
        return no_trade(Finding(Code.PRICE_MISSING, f"price of {pair.symbol} is {price}: no entry"))
    volatility = price_volatility(price=price, atr=atr, realised_volatility=realised_volatility)
    if volatility is None:
        return no_trade(
            Finding(
                Code.VOLATILITY_INVALID,
                f"volatility of {pair.symbol} is unusable (ATR {atr}, realised {realised_volatility}): "
                "no entry without a measured risk",
            )
        )
    if buying_power is not None and not is_number(buying_power):
        return no_trade(Finding(Code.INVALID_INPUT, f"buying power {buying_power} is not a number"))

    stop_distance = policy.stop_loss.distance(price=price, atr=volatility)
    caps = {"risk": equity * policy.risk_per_trade_pct / HUNDRED / stop_distance}
    caps[Code.PAIR_LIMIT] = equity * policy.max_position_pct / HUNDRED / price
    if policy.volatility_target_pct is not None:
        caps[Code.VOLATILITY_LIMIT] = equity * policy.volatility_target_pct / HUNDRED / volatility
    if buying_power is not None:
        caps[Code.BUYING_POWER_LIMIT] = max(buying_power, ZERO) / (price * (1 + fees.taker_pct / HUNDRED))
    limited_by = min(caps, key=caps.__getitem__)
    quantity = floor_to_lot(caps[limited_by], pair)
    too_small = minimum_findings(quantity, price, pair)
    if too_small:
        return Size(
            quantity=ZERO, stop_distance=stop_distance, limited_by=str(limited_by), reasons=tuple(too_small)
        )
    return Size(quantity=quantity, stop_distance=stop_distance, limited_by=str(limited_by))
