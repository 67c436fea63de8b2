"""The simulated matching core: Kraken's order rules, slippage, fees and fills. Plain Python, no Django.

``SimBroker`` (``trading/brokers/sim.py``), the backtest and the bench all drive these functions; they take
and return small frozen values, and every amount is a ``Decimal``.

Decisions recorded here (the issue is silent on them):

* **Precision is a rejection, never a rounding.** A quantity with more decimals than the pair's
  ``lot_decimals``, or a price off the pair's tick, is refused with a message; the caller rounds *before*
  asking, so what is sent is exactly what was decided.
* **Fees are charged in USD and rounded up** to USD's precision on Kraken (4 decimals: ``Assets`` says
  ``ZUSD.decimals = 4`` in the 2026-09 recording), so a simulated fee is never smaller than Kraken's.
* **Slippage** (:class:`SlippageModel`) is always adverse and rounded to the tick in the adverse direction.
* **Fill prices on a bar** (:func:`match_on_bar`): a resting limit fills at its limit, or at the open when the
  bar gaps through it; stops fill at the worse of trigger and open plus slippage; a take-profit fills at its
  trigger, or the better open, plus slippage (once triggered, Kraken sends it as a market order — the same
  as a take-profit already triggered at submission).
* **Fill time on a bar**: the bar's open time when the fill price *is* the open (a gap: the order was
  executable at the bar's first trade), else the bar's close time (the earliest moment the bar is known).
* A simulated order always fills completely (no partial fills): the size term of the slippage prices the
  size instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from itertools import pairwise

from trading.brokers.base import OrderKind, OrderRequest, PairRules, Side
from trading.fees import FeeRates

#: USD's precision on Kraken (``Assets`` → ``ZUSD.decimals``): fees and USD balances move in these steps.
USD_DECIMALS = 4
FEE_CURRENCY = "USD"
MAKER = "maker"
TAKER = "taker"

_HUNDRED = Decimal(100)
_BPS = Decimal(10_000)
_ZERO = Decimal(0)
# Parkinson: the stdev of a bar's log return ≈ ln(high / low) / sqrt(4 ln 2).
_PARKINSON = 1 / (4 * Decimal(2).ln()).sqrt()


# --- Values ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Quote:
    """The market for one pair at ``at``. When only a last trade or a candle close is known, bid = ask = last
    (:meth:`from_last`). ``volatility`` is the stdev of one bar's log return (a fraction, e.g. 0.01 for 1 %);
    ``bar_notional`` the USD value a typical recent bar traded. ``fresh_until``: after this moment the quote
    is stale and must not be filled against (``None``: the source does not judge)."""

    bid: Decimal
    ask: Decimal
    last: Decimal
    at: datetime
    volatility: Decimal | None = None
    bar_notional: Decimal | None = None
    fresh_until: datetime | None = None

    @classmethod
    def from_last(cls, last: Decimal, at: datetime, **extra) -> Quote:
        return cls(bid=last, ask=last, last=last, at=at, **extra)

    def touch(self, side: Side) -> Decimal:
        """What a taker pays (buy: the ask) or receives (sell: the bid)."""
        return self.ask if side == Side.BUY else self.bid

    def is_stale(self, now: datetime) -> bool:
        return self.fresh_until is not None and now > self.fresh_until


@dataclass(frozen=True, slots=True)
class Bar:
    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal  # in the base asset
    open_time: datetime
    close_time: datetime

    @property
    def notional(self) -> Decimal:
        """USD traded in the bar, valued at the close."""
        return self.volume * self.close

    @property
    def volatility(self) -> Decimal | None:
        """Parkinson's estimate of the stdev of this bar's log return, from its range."""
        if self.low <= 0 or self.high <= self.low:
            return None
        return (self.high / self.low).ln() * _PARKINSON


@dataclass(frozen=True, slots=True)
class Execution:
    """One simulated fill. ``fee`` is in ``fee_currency`` (USD), already rounded up."""

    price: Decimal
    quantity: Decimal
    fee: Decimal
    fee_currency: str
    liquidity: str  # "maker" | "taker"
    executed_at: datetime

    @property
    def notional(self) -> Decimal:
        return self.price * self.quantity


# --- Numbers -----------------------------------------------------------------------------------------------


def plain(value: Decimal) -> str:
    """``Decimal("5E-5")`` → ``"0.00005"``, ``Decimal("100.00")`` → ``"100"``: numbers as people write."""
    return format(value.normalize(), "f")


def round_to_step(value: Decimal, step: Decimal, *, up: bool) -> Decimal:
    """``value`` rounded to a multiple of ``step``, up or down; the result keeps the step's exponent."""
    units = (value / step).to_integral_value(rounding=ROUND_CEILING if up else ROUND_FLOOR)
    return (units * step).quantize(step)


def fee_for(notional: Decimal, pct: Decimal, *, decimals: int = USD_DECIMALS) -> Decimal:
    """Kraken's fee on ``notional`` at ``pct`` percent, rounded **up** to ``decimals`` (USD: 4): a simulated
    fee is never optimistic. ``fee_for(Decimal("3000.00"), Decimal("0.40"))`` = 12.0000."""
    if notional < 0 or pct < 0:
        raise ValueError("fee_for: notional and rate must not be negative")
    return (notional * pct / _HUNDRED).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_CEILING)


def log_return_volatility(closes: list[Decimal]) -> Decimal | None:
    """Sample stdev of the log returns between consecutive closes; ``None`` with fewer than three closes."""
    returns = [(b / a).ln() for a, b in pairwise(closes) if a > 0 and b > 0]
    if len(returns) < 2:
        return None
    mean = sum(returns, _ZERO) / len(returns)
    variance = sum(((r - mean) ** 2 for r in returns), _ZERO) / (len(returns) - 1)
    return variance.sqrt()


def quote_from_bars(bars: list[Bar], *, fresh_until: datetime | None = None) -> Quote | None:
    """The quote a backtest sees after ``bars`` (oldest first): bid = ask = last close at the last bar's close
    time, the close-to-close volatility and the mean bar notional of the bars given."""
    if not bars:
        return None
    last = bars[-1]
    notionals = [bar.notional for bar in bars if bar.volume > 0]
    return Quote.from_last(
        last.close,
        last.close_time,
        volatility=log_return_volatility([bar.close for bar in bars]),
        bar_notional=sum(notionals, _ZERO) / len(notionals) if notionals else None,
        fresh_until=fresh_until,
    )


# --- Slippage ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SlippageModel:
    """Adverse price move of a taker fill, as a fraction of the touch price::

        slippage = bps / 10,000 + impact * volatility * sqrt(order notional / bar notional)

    ``bps`` covers half the spread and other noise (bid = ask when only a last price is known); the second
    term is the square-root law of market impact, with ``volatility`` the stdev of one bar's log return and
    ``bar notional`` the USD a bar trades. As sigma_bar * sqrt(Q / V_bar) = sigma_day * sqrt(Q / V_day), the
    term does not depend on the timeframe; ``impact`` ≈ 1 is the law's usual coefficient. Without a
    volatility or a bar notional only the bps term applies. Buys pay up, sells receive less; the price is
    rounded to the pair's tick in the adverse direction (up for a buy, down for a sell) and a sell never
    goes below one tick."""

    bps: Decimal = Decimal(5)
    impact: Decimal = Decimal(1)

    def __post_init__(self) -> None:
        if self.bps < 0 or self.impact < 0:
            raise ValueError("SlippageModel: bps and impact must not be negative")

    def fraction(
        self, *, notional: Decimal, volatility: Decimal | None, bar_notional: Decimal | None
    ) -> Decimal:
        fraction = self.bps / _BPS
        if volatility and bar_notional and bar_notional > 0 and notional > 0:
            fraction += self.impact * volatility * (notional / bar_notional).sqrt()
        return fraction

    def price(
        self,
        *,
        side: Side,
        base_price: Decimal,
        quantity: Decimal,
        pair: PairRules,
        volatility: Decimal | None,
        bar_notional: Decimal | None,
    ) -> Decimal:
        """``base_price`` moved against the taker and rounded to the tick against the taker."""
        fraction = self.fraction(
            notional=base_price * quantity, volatility=volatility, bar_notional=bar_notional
        )
        tick = tick_of(pair)
        if side == Side.BUY:
            return round_to_step(base_price * (1 + fraction), tick, up=True)
        return max(round_to_step(base_price * (1 - fraction), tick, up=False), tick)


def tick_of(pair: PairRules) -> Decimal:
    """The pair's price step: its ``tick_size``, or 10^-pair_decimals when none is given."""
    return pair.tick_size if pair.tick_size > 0 else Decimal(1).scaleb(-pair.pair_decimals)


# --- Kraken's order rules ----------------------------------------------------------------------------------

_STATUS_MEANING = {
    "cancel_only": "only cancellations are accepted",
    "post_only": "only post-only limit orders are accepted, which Aether does not place",
    "limit_only": "only limit orders are accepted",
    "reduce_only": "only orders reducing a margin position are accepted, and Aether trades spot only",
    "maintenance": "the pair is in maintenance",
    "delisted": "the pair is no longer listed",
}


def _trigger_price(request: OrderRequest) -> Decimal | None:
    return request.stop_price if request.kind in (OrderKind.STOP_LOSS, OrderKind.TAKE_PROFIT) else None


def check_order(request: OrderRequest, *, reference_price: Decimal | None) -> list[str]:
    """Every reason Kraken would refuse ``request`` (empty: none), each a sentence a director can act on.
    ``reference_price`` prices a market order for the minimum-cost rule (unknown: that rule is left to the
    exchange). Nothing is rounded: a quantity or price off Kraken's precision is refused."""
    pair = request.pair
    base, quote, symbol = pair.base_asset, pair.quote_asset, pair.symbol
    problems: list[str] = []

    if quote != "USD":
        problems.append(f"{symbol} is quoted in {quote}: Aether trades spot USD pairs only")
    if pair.status == "limit_only":
        if request.kind != OrderKind.LIMIT:
            problems.append(f"{symbol} is limit_only on Kraken: {_STATUS_MEANING['limit_only']}")
    elif pair.status != "online":
        meaning = _STATUS_MEANING.get(pair.status, "it is not online")
        problems.append(f"{symbol} is {pair.status} on Kraken: {meaning}")

    quantity = request.quantity
    lot = Decimal(1).scaleb(-pair.lot_decimals)
    if not quantity.is_finite() or quantity <= 0:
        problems.append(f"the quantity must be a positive amount of {base}, not {quantity}")
    else:
        if quantity != quantity.quantize(lot, rounding=ROUND_FLOOR):
            problems.append(
                f"{plain(quantity)} {base} has more than {pair.lot_decimals} decimals: Kraken accepts "
                f"{symbol} quantities in steps of {plain(lot)} {base}"
            )
        if quantity < pair.ordermin:
            problems.append(
                f"{plain(quantity)} {base} is below Kraken's minimum order of {plain(pair.ordermin)} {base} "
                f"for {symbol}"
            )

    problems += _price_problems(request)

    price = {
        OrderKind.MARKET: reference_price,
        OrderKind.LIMIT: request.limit_price,
    }.get(request.kind, _trigger_price(request))
    if price is not None and price > 0 and quantity.is_finite() and quantity > 0:
        cost = quantity * price
        if cost < pair.costmin:
            cost_shown = cost.quantize(Decimal(1).scaleb(-pair.cost_decimals), rounding=ROUND_FLOOR)
            problems.append(
                f"{plain(quantity)} {base} at {plain(price)} {quote} costs {plain(cost_shown)} {quote}, "
                f"below Kraken's minimum order cost of {plain(pair.costmin)} {quote} for {symbol}"
            )
    return problems


def _price_problems(request: OrderRequest) -> list[str]:
    pair, kind = request.pair, request.kind
    problems = []
    wants_limit = kind == OrderKind.LIMIT
    wants_trigger = kind in (OrderKind.STOP_LOSS, OrderKind.TAKE_PROFIT)
    if wants_limit and request.limit_price is None:
        problems.append("a limit order needs a limit price")
    if not wants_limit and request.limit_price is not None:
        problems.append(f"a {kind} order takes no limit price")
    if wants_trigger and request.stop_price is None:
        problems.append(f"a {kind} order needs a trigger price")
    if not wants_trigger and request.stop_price is not None:
        problems.append(f"a {kind} order takes no trigger price")
    tick = tick_of(pair)
    for label, price in (("limit price", request.limit_price), ("trigger price", request.stop_price)):
        if price is None:
            continue
        if not price.is_finite() or price <= 0:
            problems.append(f"the {label} must be a positive number of {pair.quote_asset}, not {price}")
        elif price % tick != 0 or price != price.quantize(
            Decimal(1).scaleb(-pair.pair_decimals), ROUND_FLOOR
        ):
            problems.append(
                f"the {label} {plain(price)} is not a multiple of {pair.symbol}'s tick of {plain(tick)} "
                f"{pair.quote_asset}"
            )
    return problems


# --- Matching ----------------------------------------------------------------------------------------------


def _execution(
    request: OrderRequest, *, price: Decimal, liquidity: str, fees: FeeRates, at: datetime
) -> Execution:
    pct = fees.maker_pct if liquidity == MAKER else fees.taker_pct
    return Execution(
        price=price,
        quantity=request.quantity,
        fee=fee_for(price * request.quantity, pct),
        fee_currency=FEE_CURRENCY,
        liquidity=liquidity,
        executed_at=at,
    )


def _triggered(request: OrderRequest, last: Decimal) -> bool:
    trigger = request.stop_price
    buy = request.side == Side.BUY
    if request.kind == OrderKind.STOP_LOSS:
        return last >= trigger if buy else last <= trigger
    return last <= trigger if buy else last >= trigger  # take-profit


def _crosses(request: OrderRequest, quote: Quote) -> bool:
    if request.side == Side.BUY:
        return quote.ask <= request.limit_price
    return quote.bid >= request.limit_price


def _market_price(request: OrderRequest, quote: Quote, slippage: SlippageModel) -> Decimal:
    return slippage.price(
        side=request.side,
        base_price=quote.touch(request.side),
        quantity=request.quantity,
        pair=request.pair,
        volatility=quote.volatility,
        bar_notional=quote.bar_notional,
    )


def match_on_submit(
    request: OrderRequest,
    quote: Quote,
    *,
    fees: FeeRates,
    slippage: SlippageModel,
    at: datetime | None = None,
) -> Execution | None:
    """What happens to a new order against the current quote: an :class:`Execution` when it fills at once
    (as taker), ``None`` when it rests. ``at`` is the fill time (default: the quote's time).

    * market: the touch (ask for a buy, bid for a sell) plus slippage;
    * limit that crosses the touch: the better of touch + slippage and the limit (never worse than the
      limit); a limit that does not cross rests;
    * stop-loss / take-profit already triggered by the last price: as a market order; else it rests."""
    at = quote.at if at is None else at
    kind = request.kind
    if kind == OrderKind.MARKET:
        return _execution(
            request, price=_market_price(request, quote, slippage), liquidity=TAKER, fees=fees, at=at
        )
    if kind == OrderKind.LIMIT:
        if not _crosses(request, quote):
            return None
        slipped = _market_price(request, quote, slippage)
        price = (
            min(slipped, request.limit_price)
            if request.side == Side.BUY
            else max(slipped, request.limit_price)
        )
        return _execution(request, price=price, liquidity=TAKER, fees=fees, at=at)
    if _triggered(request, quote.last):
        return _execution(
            request, price=_market_price(request, quote, slippage), liquidity=TAKER, fees=fees, at=at
        )
    return None


def match_on_quote(
    request: OrderRequest,
    quote: Quote,
    *,
    fees: FeeRates,
    slippage: SlippageModel,
    at: datetime | None = None,
) -> Execution | None:
    """A *resting* order against a later quote (a live tick). A limit the touch has reached fills at its own
    limit as maker (a resting order sets the trade price); a triggered stop or take-profit fills as a market
    order at the touch plus slippage. ``None``: it keeps resting."""
    at = quote.at if at is None else at
    if request.kind == OrderKind.LIMIT:
        if not _crosses(request, quote):
            return None
        return _execution(request, price=request.limit_price, liquidity=MAKER, fees=fees, at=at)
    if request.kind == OrderKind.MARKET or _triggered(request, quote.last):
        return _execution(
            request, price=_market_price(request, quote, slippage), liquidity=TAKER, fees=fees, at=at
        )
    return None


def match_on_bar(
    request: OrderRequest,
    bar: Bar,
    *,
    fees: FeeRates,
    slippage: SlippageModel,
    volatility: Decimal | None = None,
) -> Execution | None:
    """A resting order against the next candle; ``None`` when the bar does not reach it.

    * buy limit: fills when ``low <= limit``, at ``min(limit, open)``, as maker; sell limit: ``high >= limit``
      at ``max(limit, open)`` (a gap through the limit fills at the open);
    * stop-loss: triggers when the bar trades through the trigger (sell: ``low <= stop``; buy:
      ``high >= stop``) and fills at the worse of trigger and open, plus slippage, as taker;
    * take-profit: triggers at ``high >= trigger`` (sell) / ``low <= trigger`` (buy) and fills at the
      trigger or the better open, plus slippage, as taker.

    The slippage's size term uses ``volatility`` (default: the bar's own Parkinson estimate) and the bar's
    notional. Fill time: the bar's open time for a fill at the open (a gap), else its close time."""
    buy = request.side == Side.BUY
    if request.kind == OrderKind.LIMIT:
        limit = request.limit_price
        if buy and bar.low <= limit:
            price = min(limit, bar.open)
        elif not buy and bar.high >= limit:
            price = max(limit, bar.open)
        else:
            return None
        at = bar.open_time if price == bar.open else bar.close_time
        return _execution(request, price=price, liquidity=MAKER, fees=fees, at=at)

    if request.kind == OrderKind.MARKET:
        base = bar.open
    else:
        trigger = request.stop_price
        if request.kind == OrderKind.STOP_LOSS:
            if buy and bar.high >= trigger:
                base = max(trigger, bar.open)
            elif not buy and bar.low <= trigger:
                base = min(trigger, bar.open)
            else:
                return None
        else:  # take-profit
            if buy and bar.low <= trigger:
                base = min(trigger, bar.open)
            elif not buy and bar.high >= trigger:
                base = max(trigger, bar.open)
            else:
                return None
    price = slippage.price(
        side=request.side,
        base_price=base,
        quantity=request.quantity,
        pair=request.pair,
        volatility=bar.volatility if volatility is None else volatility,
        bar_notional=bar.notional,
    )
    at = bar.open_time if base == bar.open else bar.close_time
    return _execution(request, price=price, liquidity=TAKER, fees=fees, at=at)
