"""The pre-trade check: every order the engine wants passes here, and gets accept, resize or reject.

Input: the account's :class:`Snapshot` (loaded by the shell under its locks) and an :class:`OrderIntent`;
output: a :class:`Decision` with machine-readable :class:`~risk.engine.reasons.Finding` codes and one human
sentence. The check never raises for bad input: it fails closed (reject, no new exposure) with a reason.

Spot only, long only: a **buy is an entry** (adds exposure), a **sell is an exit** (reduces it). Gates:

* every order: a positive finite quantity; trading enabled; the broker matches the account's mode
  (simulation → ``sim``, live → ``kraken``); the pair is in the spot-USD universe. A quantity finer than the
  pair's lot is rounded down (``LOT_PRECISION``, a resize).
* a sell (exit): the free held quantity is known, and the sell is cut to it (``SELL_EXCEEDS_HOLDING``).
  Halts, the kill switch, the order rate, the edge and stale prices do **not** block exits: they reduce risk.
* a buy (entry), all problems reported together: a valid policy; not halted; kill switch armed; a fresh,
  positive price; known equity and USD balance; a known expected edge with
  ``edge - 2 x taker_pct - 2 x slippage_pct >= min_edge_pct`` (round trip); fewer than the policy's orders in
  the last minute and hour. Then the quantity is cut to the tightest of, with ``p`` the buy's price
  (the limit, or the price plus slippage for a market order) and ``f = taker_pct / 100``::

      cash   (available_usd - 0.0001) / (p x (1 + f))     USD free after open orders, the fee rounded up
      pair   (equity x max_position_pct / 100 - exposure[pair]) / p
      group  (equity x max_group_exposure_pct / 100 - sum of exposure over the pair's group) / p

  rounded down to the lot; below Kraken's ``ordermin``/``costmin`` it is a reject.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from risk.engine.correlation import group_of
from risk.engine.killswitch import SwitchState
from risk.engine.policy import HUNDRED, RiskPolicy
from risk.engine.reasons import Code, Finding, is_number
from risk.engine.sizing import floor_to_lot, minimum_findings
from trading.brokers.base import PairRules, Side
from trading.fees import FeeRates
from trading.matching import USD_DECIMALS, plain

ZERO = Decimal(0)
#: The most a fee rounded up to USD's precision adds to the exact fee.
FEE_ROUNDING = Decimal(1).scaleb(-USD_DECIMALS)


class Mode(StrEnum):
    SIMULATION = "simulation"
    LIVE = "live"


#: The only broker each account mode may use.
BROKER_FOR_MODE = {Mode.SIMULATION: "sim", Mode.LIVE: "kraken"}


class Verdict(StrEnum):
    ACCEPT = "accept"
    RESIZE = "resize"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class PriceQuote:
    """The latest price of a pair and when it was observed (``None``: unknown)."""

    price: Decimal | None
    at: datetime | None


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the check knows about one account at ``now``; built by the shell, never mutated.

    ``available_usd``: the USD balance minus what open orders reserve (``None``: the balance could not be
    refreshed). ``held``: the base quantity free to sell per symbol, i.e. minus open sells (``None``:
    unknown; a symbol absent from a known mapping holds nothing). ``exposures``: USD exposure per symbol
    (position at its mark plus open buy orders). ``groups``: the correlated groups
    (:func:`~risk.engine.correlation.correlated_groups`). ``recent_orders``: submission times of the
    account's recent orders. ``pairs``: the spot-USD universe by symbol."""

    now: datetime
    mode: Mode
    broker: str
    trading_enabled: bool
    switch: SwitchState
    pairs: Mapping[str, PairRules]
    prices: Mapping[str, PriceQuote]
    max_price_age: timedelta
    equity: Decimal | None
    available_usd: Decimal | None
    held: Mapping[str, Decimal] | None
    fees: FeeRates
    slippage_pct: Decimal
    exposures: Mapping[str, Decimal] = field(default_factory=dict)
    groups: tuple[frozenset[str], ...] = ()
    recent_orders: tuple[datetime, ...] = ()


@dataclass(frozen=True, slots=True)
class OrderIntent:
    """An order the strategy (or an exit) wants. ``limit_price``: ``None`` for a market order.
    ``expected_edge_pct``: the model's expected return of the trade in %, before costs (entries only)."""

    symbol: str
    side: Side
    quantity: Decimal
    limit_price: Decimal | None = None
    expected_edge_pct: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    quantity: Decimal  # what may be sent: the intent's, the resized one, or 0 on reject
    reasons: tuple[Finding, ...]
    message: str

    @property
    def codes(self) -> tuple[Code, ...]:
        return tuple(finding.code for finding in self.reasons)


def _decide(intent: OrderIntent, quantity: Decimal, findings: list[Finding], *, reject: bool) -> Decision:
    shown = plain(intent.quantity) if is_number(intent.quantity) else intent.quantity
    what = f"{intent.side} {shown} {intent.symbol}"
    details = "; ".join(finding.message for finding in findings)
    if reject:
        return Decision(Verdict.REJECT, ZERO, tuple(findings), f"Rejected {what}: {details}.")
    if findings:
        return Decision(
            Verdict.RESIZE, quantity, tuple(findings), f"Resized {what} to {plain(quantity)}: {details}."
        )
    return Decision(Verdict.ACCEPT, quantity, (), f"Accepted {what}.")


def check_order(*, policy: RiskPolicy, snapshot: Snapshot, intent: OrderIntent) -> Decision:
    """Accept, resize or reject ``intent`` (the rules are in the module docstring)."""
    findings = _common_findings(snapshot, intent)
    if findings:
        return _decide(intent, ZERO, findings, reject=True)
    pair = snapshot.pairs[intent.symbol]
    quantity = floor_to_lot(intent.quantity, pair)
    resized = []
    if quantity != intent.quantity:
        resized.append(
            Finding(
                Code.LOT_PRECISION,
                f"{plain(intent.quantity)} is finer than {pair.symbol}'s lot of {pair.lot_decimals} decimals",
            )
        )
    if intent.side == Side.SELL:
        return _check_exit(snapshot, intent, pair, quantity, resized)
    return _check_entry(policy, snapshot, intent, pair, quantity, resized)


def _common_findings(snapshot: Snapshot, intent: OrderIntent) -> list[Finding]:
    findings = []
    if not is_number(intent.quantity) or intent.quantity <= 0:
        findings.append(
            Finding(Code.INVALID_QUANTITY, f"the quantity {intent.quantity} is not a positive number")
        )
    expected = BROKER_FOR_MODE.get(snapshot.mode)
    if snapshot.broker != expected:
        findings.append(
            Finding(
                Code.MODE_MISMATCH,
                f"the account is in {snapshot.mode} mode but the order would go to the {snapshot.broker!r} "
                f"broker (only {expected!r} is allowed)",
            )
        )
    pair = snapshot.pairs.get(intent.symbol)
    if pair is None or pair.quote_asset != "USD":
        findings.append(
            Finding(Code.NOT_IN_UNIVERSE, f"{intent.symbol} is not in the account's spot USD universe")
        )
    return findings


def _check_exit(
    snapshot: Snapshot, intent: OrderIntent, pair: PairRules, quantity: Decimal, resized: list[Finding]
) -> Decision:
    if snapshot.held is None:
        finding = Finding(Code.BALANCE_MISSING, f"the held {pair.base_asset} balance is unknown")
        return _decide(intent, ZERO, [finding], reject=True)
    held = snapshot.held.get(intent.symbol, ZERO)
    if not is_number(held):
        finding = Finding(Code.BALANCE_MISSING, f"the held {pair.base_asset} balance is {held}")
        return _decide(intent, ZERO, [finding], reject=True)
    if quantity > held:
        quantity = floor_to_lot(max(held, ZERO), pair)
        resized.append(
            Finding(
                Code.SELL_EXCEEDS_HOLDING,
                f"selling {plain(intent.quantity)} {pair.base_asset} exceeds the {plain(held)} held and free",
            )
        )
    quote = snapshot.prices.get(intent.symbol)
    # Kraken's minimum cost is checked only with a known price; without one the exchange judges it.
    known_price = quote.price if quote is not None and is_number(quote.price) and quote.price > 0 else None
    too_small = minimum_findings(quantity, known_price or ZERO, pair)
    if known_price is None:
        too_small = [finding for finding in too_small if finding.code != Code.BELOW_COSTMIN]
    if too_small:
        return _decide(intent, ZERO, resized + too_small, reject=True)
    return _decide(intent, quantity, resized, reject=False)


def _entry_gates(policy: RiskPolicy, snapshot: Snapshot, intent: OrderIntent) -> list[Finding]:
    findings = [Finding(Code.POLICY_INVALID, problem) for problem in policy.validate()]
    if not snapshot.trading_enabled:
        # The account's switch means "open no new positions": exits still go through.
        findings.append(
            Finding(Code.TRADING_DISABLED, "trading is disabled for this account: no new entries")
        )
    if snapshot.switch.halted:
        findings.append(Finding(Code.HALTED, f"a director halted entries ({snapshot.switch.halt_reason})"))
    if snapshot.switch.latched:
        findings.append(
            Finding(Code.KILL_SWITCH_LATCHED, f"the kill switch is latched: {snapshot.switch.reason}")
        )
    quote = snapshot.prices.get(intent.symbol)
    if quote is None or not is_number(quote.price) or quote.price <= 0:
        findings.append(Finding(Code.PRICE_MISSING, f"no usable price for {intent.symbol}"))
    elif quote.at is None or snapshot.now - quote.at > snapshot.max_price_age:
        findings.append(
            Finding(
                Code.PRICE_STALE,
                f"the price of {intent.symbol} dates from {quote.at}, older than {snapshot.max_price_age}",
            )
        )
    if intent.limit_price is not None and (not is_number(intent.limit_price) or intent.limit_price <= 0):
        findings.append(Finding(Code.INVALID_INPUT, f"the limit price {intent.limit_price} is not valid"))
    if not is_number(snapshot.slippage_pct) or snapshot.slippage_pct < 0:
        findings.append(
            Finding(Code.INVALID_INPUT, f"the slippage estimate {snapshot.slippage_pct} is not valid")
        )
    if not all(is_number(value) for value in snapshot.exposures.values()):
        findings.append(Finding(Code.INVALID_INPUT, "an exposure of the account is not a number"))
    if not is_number(snapshot.equity) or snapshot.equity <= 0:
        findings.append(Finding(Code.EQUITY_MISSING, f"the account's equity is {snapshot.equity}"))
    if not is_number(snapshot.available_usd):
        findings.append(Finding(Code.BALANCE_MISSING, f"the available USD is {snapshot.available_usd}"))
    findings += _edge_findings(policy, snapshot, intent)
    findings += _rate_findings(policy, snapshot)
    return findings


def _edge_findings(policy: RiskPolicy, snapshot: Snapshot, intent: OrderIntent) -> list[Finding]:
    edge = intent.expected_edge_pct
    if not is_number(edge):
        return [Finding(Code.EDGE_MISSING, f"the expected edge is {edge}: no entry without one")]
    if not is_number(snapshot.slippage_pct):
        return []  # reported as INVALID_INPUT
    costs = 2 * snapshot.fees.taker_pct + 2 * snapshot.slippage_pct
    if edge - costs < policy.min_edge_pct:
        return [
            Finding(
                Code.EDGE_TOO_SMALL,
                f"the expected edge of {plain(edge)} % minus round-trip fees and slippage of "
                f"{plain(costs)} % is below the minimum of {plain(policy.min_edge_pct)} %",
            )
        ]
    return []


def _rate_findings(policy: RiskPolicy, snapshot: Snapshot) -> list[Finding]:
    findings = []
    for span, limit, label in (
        (timedelta(minutes=1), policy.max_orders_per_minute, "minute"),
        (timedelta(hours=1), policy.max_orders_per_hour, "hour"),
    ):
        count = sum(1 for at in snapshot.recent_orders if snapshot.now - at < span)
        if isinstance(limit, int) and count >= limit:
            findings.append(
                Finding(Code.RATE_LIMIT, f"{count} orders in the last {label} reach the limit of {limit}")
            )
    return findings


def _check_entry(
    policy: RiskPolicy,
    snapshot: Snapshot,
    intent: OrderIntent,
    pair: PairRules,
    quantity: Decimal,
    resized: list[Finding],
) -> Decision:
    gates = _entry_gates(policy, snapshot, intent)
    if gates:
        return _decide(intent, ZERO, gates, reject=True)
    market = snapshot.prices[intent.symbol].price
    price = intent.limit_price or market * (1 + snapshot.slippage_pct / HUNDRED)
    equity = snapshot.equity
    exposures = snapshot.exposures
    group = group_of(intent.symbol, snapshot.groups)
    pair_room = equity * policy.max_position_pct / HUNDRED - exposures.get(intent.symbol, ZERO)
    group_room = equity * policy.max_group_exposure_pct / HUNDRED - sum(
        (exposures.get(symbol, ZERO) for symbol in group), ZERO
    )
    caps = {
        Code.INSUFFICIENT_FUNDS: (
            (snapshot.available_usd - FEE_ROUNDING) / (price * (1 + snapshot.fees.taker_pct / HUNDRED)),
            f"{plain(snapshot.available_usd)} USD available (after open orders, the fee included)",
        ),
        Code.PAIR_LIMIT: (
            pair_room / price,
            f"{intent.symbol} may hold {plain(policy.max_position_pct)} % of equity; "
            f"{plain(max(pair_room, ZERO))} USD room left",
        ),
        Code.GROUP_LIMIT: (
            group_room / price,
            f"the correlated group {', '.join(sorted(group))} may hold "
            f"{plain(policy.max_group_exposure_pct)} % of equity; "
            f"{plain(max(group_room, ZERO))} USD room left",
        ),
    }
    for code, (cap, why) in caps.items():
        if cap < quantity:
            quantity = floor_to_lot(max(cap, ZERO), pair)
            resized.append(Finding(code, why))
    too_small = minimum_findings(quantity, price, pair)
    if too_small:
        return _decide(intent, ZERO, resized + too_small, reject=True)
    return _decide(intent, quantity, resized, reject=False)
