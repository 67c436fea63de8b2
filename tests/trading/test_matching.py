"""The simulated matching core, without a database: Kraken's order rules (with the real AssetPairs answers),
fees, slippage, and fills on submit, on quotes and on bars. Every number is checked by hand in a comment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trading.brokers.base import OrderKind, OrderRequest, PairRules, Side
from trading.fees import FeeRates
from trading.kraken_pairs import common_code, parse_asset_pairs
from trading.matching import (
    Bar,
    Quote,
    SlippageModel,
    check_order,
    fee_for,
    log_return_volatility,
    match_on_bar,
    match_on_quote,
    match_on_submit,
    quote_from_bars,
)

D = Decimal
REPO = Path(__file__).resolve().parents[2]
SNAPSHOT = REPO / "trading" / "data" / "kraken_asset_pairs_2026-09-25.json"
XBTUSDT = REPO.parent / "shared" / "data" / "kraken" / "asset_pairs_XBTUSDT.json"
needs_xbtusdt = pytest.mark.skipif(
    not XBTUSDT.exists(),
    reason=f"needs Kraken's recorded AssetPairs answer at {XBTUSDT} (shared data folder)",
)

PUBLISHED = FeeRates(maker_pct=D("0.25"), taker_pct=D("0.40"))
FIVE_BPS = SlippageModel(bps=D(5), impact=D(0))
NO_SLIPPAGE = SlippageModel(bps=D(0), impact=D(0))
T0 = datetime(2026, 9, 25, 10, 0, tzinfo=UTC)


def snapshot_rules(symbol: str) -> PairRules:
    """BTC/USD, ETH/USD… as the committed AssetPairs snapshot (what the ``universe`` fixture loads) says."""
    universe = parse_asset_pairs(json.loads(SNAPSHOT.read_text()))
    facts = next(pair for pair in universe.pairs if pair.symbol == symbol)
    return PairRules(
        symbol=facts.symbol,
        kraken_pair=facts.kraken_pair,
        base_asset=facts.base_asset,
        quote_asset="USD",
        ordermin=facts.ordermin,
        costmin=facts.costmin,
        tick_size=facts.tick_size,
        pair_decimals=facts.pair_decimals,
        lot_decimals=facts.lot_decimals,
        cost_decimals=facts.cost_decimals,
        status=facts.status,
    )


def xbtusdt_rules() -> PairRules:
    """Kraken's real XBTUSDT entry, taken as it is: quoted in USDT, so never tradable here."""
    entry = json.loads(XBTUSDT.read_text())["result"]["XBTUSDT"]
    base, quote = entry["wsname"].split("/")
    return PairRules(
        symbol=f"{common_code(base)}/{quote}",
        kraken_pair="XBTUSDT",
        base_asset=common_code(base),
        quote_asset=quote,
        ordermin=D(entry["ordermin"]),
        costmin=D(entry["costmin"]),
        tick_size=D(entry["tick_size"]),
        pair_decimals=entry["pair_decimals"],
        lot_decimals=entry["lot_decimals"],
        cost_decimals=entry["cost_decimals"],
        status=entry["status"],
    )


BTC = snapshot_rules("BTC/USD")


def order(
    kind=OrderKind.MARKET, side=Side.BUY, quantity="0.01", *, limit=None, stop=None, pair=BTC
) -> OrderRequest:
    return OrderRequest(
        account_id=1,
        client_order_id="c-1",
        pair=pair,
        side=side,
        kind=kind,
        quantity=D(quantity),
        limit_price=None if limit is None else D(limit),
        stop_price=None if stop is None else D(stop),
    )


def last_quote(price="60000.0", **extra) -> Quote:
    return Quote.from_last(D(price), T0, **extra)


def test_snapshot_btc_facts_are_what_the_tests_assume():
    assert (BTC.ordermin, BTC.costmin, BTC.tick_size, BTC.pair_decimals, BTC.lot_decimals) == (
        D("0.00005"),
        D("0.5"),
        D("0.1"),
        1,
        8,
    )


# --- check_order ---------------------------------------------------------------------------------------


def test_a_valid_order_has_no_problems():
    assert check_order(order(OrderKind.LIMIT, limit="60000.0"), reference_price=None) == []
    assert check_order(order(), reference_price=D("60000.0")) == []
    assert check_order(order(OrderKind.STOP_LOSS, Side.SELL, stop="59000.0"), reference_price=None) == []
    assert check_order(order(OrderKind.TAKE_PROFIT, Side.SELL, stop="61000.0"), reference_price=None) == []


def test_quantity_below_the_minimum_is_named_in_words():
    problems = check_order(order(quantity="0.00001"), reference_price=D("60000.0"))
    assert "0.00001 BTC is below Kraken's minimum order of 0.00005 BTC for BTC/USD" in problems


def test_quantity_finer_than_the_lot_is_refused_not_rounded():
    problems = check_order(order(quantity="0.010000001"), reference_price=D("60000.0"))
    assert problems == [
        "0.010000001 BTC has more than 8 decimals: "
        "Kraken accepts BTC/USD quantities in steps of 0.00000001 BTC"
    ]


def test_cost_below_costmin_uses_the_limit_or_the_reference_price():
    # 0.00005 BTC * 9,000.0 USD = 0.45 USD < 0.5 USD.
    expected = (
        "0.00005 BTC at 9000 USD costs 0.45 USD, below Kraken's minimum order cost of 0.5 USD for BTC/USD"
    )
    assert check_order(order(OrderKind.LIMIT, quantity="0.00005", limit="9000.0"), reference_price=None) == [
        expected
    ]
    assert check_order(order(quantity="0.00005"), reference_price=D("9000.0")) == [expected]
    # A market order without a known price cannot be costed here: Kraken checks it.
    assert check_order(order(quantity="0.00005"), reference_price=None) == []
    # 0.00005 * 10,000.0 = 0.5: exactly the minimum is allowed.
    assert check_order(order(quantity="0.00005"), reference_price=D("10000.0")) == []


def test_prices_must_sit_on_the_tick():
    problems = check_order(order(OrderKind.LIMIT, limit="60000.05"), reference_price=None)
    assert problems == ["the limit price 60000.05 is not a multiple of BTC/USD's tick of 0.1 USD"]
    eth = snapshot_rules("ETH/USD")  # tick 0.01
    assert (
        check_order(order(OrderKind.LIMIT, quantity="0.01", limit="3000.01", pair=eth), reference_price=None)
        == []
    )
    assert (
        "trigger price 3000.005"
        in check_order(
            order(OrderKind.STOP_LOSS, Side.SELL, quantity="0.01", stop="3000.005", pair=eth),
            reference_price=None,
        )[0]
    )


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (order(OrderKind.LIMIT), "a limit order needs a limit price"),
        (order(OrderKind.STOP_LOSS, Side.SELL), "a stop-loss order needs a trigger price"),
        (order(OrderKind.TAKE_PROFIT, Side.SELL), "a take-profit order needs a trigger price"),
        (order(limit="60000.0"), "a market order takes no limit price"),
        (order(stop="60000.0"), "a market order takes no trigger price"),
        (order(OrderKind.LIMIT, limit="60000.0", stop="59000.0"), "a limit order takes no trigger price"),
        (
            order(OrderKind.STOP_LOSS, Side.SELL, limit="1.0", stop="59000.0"),
            "a stop-loss order takes no limit price",
        ),
        (order(OrderKind.LIMIT, limit="-1"), "the limit price must be a positive number of USD, not -1"),
        (order(quantity="0"), "the quantity must be a positive amount of BTC, not 0"),
    ],
)
def test_prices_and_quantities_that_do_not_fit_the_order_type(request_, message):
    assert message in check_order(request_, reference_price=D("60000.0"))


@pytest.mark.parametrize(
    ("status", "meaning"),
    [
        ("cancel_only", "only cancellations are accepted"),
        ("post_only", "only post-only limit orders are accepted"),
        ("reduce_only", "Aether trades spot only"),
        ("maintenance", "the pair is in maintenance"),
        ("delisted", "the pair is no longer listed"),
    ],
)
def test_a_pair_that_is_not_online_refuses_every_order(status, meaning):
    from dataclasses import replace

    pair = replace(BTC, status=status)
    for request in (order(pair=pair), order(OrderKind.LIMIT, limit="60000.0", pair=pair)):
        (problem,) = check_order(request, reference_price=D("60000.0"))
        assert problem.startswith(f"BTC/USD is {status} on Kraken: ")
        assert meaning in problem


def test_limit_only_permits_limit_orders_only():
    from dataclasses import replace

    pair = replace(BTC, status="limit_only")
    assert check_order(order(OrderKind.LIMIT, limit="60000.0", pair=pair), reference_price=None) == []
    assert check_order(order(pair=pair), reference_price=D("60000.0")) == [
        "BTC/USD is limit_only on Kraken: only limit orders are accepted"
    ]
    assert check_order(order(OrderKind.STOP_LOSS, Side.SELL, stop="59000.0", pair=pair), reference_price=None)


@needs_xbtusdt
def test_real_xbtusdt_pair_is_refused_for_its_quote_and_its_real_limits():
    pair = xbtusdt_rules()
    # The recorded answer: ordermin 0.00005, costmin 0.5, tick 0.1, lot_decimals 8, quoted in USDT.
    assert (pair.ordermin, pair.costmin, pair.tick_size, pair.lot_decimals) == (
        D("0.00005"),
        D("0.5"),
        D("0.1"),
        8,
    )
    # A well-formed order is still refused: the quote is not USD.
    assert check_order(order(OrderKind.LIMIT, limit="60000.0", pair=pair), reference_price=None) == [
        "BTC/USDT is quoted in USDT: Aether trades spot USD pairs only"
    ]
    # Everything wrong at once is reported at once, each rule with the pair's real numbers.
    problems = check_order(
        order(OrderKind.LIMIT, quantity="0.000010001", limit="60000.05", pair=pair), reference_price=None
    )
    assert problems == [
        "BTC/USDT is quoted in USDT: Aether trades spot USD pairs only",
        "0.000010001 BTC has more than 8 decimals: "
        "Kraken accepts BTC/USDT quantities in steps of 0.00000001 BTC",
        "0.000010001 BTC is below Kraken's minimum order of 0.00005 BTC for BTC/USDT",
        "the limit price 60000.05 is not a multiple of BTC/USDT's tick of 0.1 USDT",
    ]
    # costmin 0.5 USDT: 0.00005 * 9,000.0 = 0.45.
    assert check_order(
        order(OrderKind.LIMIT, quantity="0.00005", limit="9000.0", pair=pair), reference_price=None
    )[1] == (
        "0.00005 BTC at 9000 USDT costs 0.45 USDT, below Kraken's minimum order cost of 0.5 USDT for BTC/USDT"
    )


# --- Fees ----------------------------------------------------------------------------------------------


def test_fee_is_rounded_up_to_usd_precision():
    # 3,000.00 * 0.40 % = 12.0000 exactly.
    assert fee_for(D("3000.00"), D("0.40")) == D("12.0000")
    # 4.2021 * 0.40 % = 0.0168084 → up to 4 decimals: 0.0169 (never the optimistic 0.0168).
    assert fee_for(D("4.2021"), D("0.40")) == D("0.0169")
    # 600.30 * 0.26 % = 1.56078 → 1.5608.
    assert fee_for(D("600.30"), D("0.26")) == D("1.5608")
    # The top tier charges no maker fee at all.
    assert fee_for(D("600.30"), D("0")) == D("0.0000")
    with pytest.raises(ValueError, match="must not be negative"):
        fee_for(D("-1"), D("0.4"))


# --- Slippage ------------------------------------------------------------------------------------------


def test_basis_points_move_the_price_against_the_taker_and_round_against_it():
    quote = last_quote("60000.3")
    # Buy: 60,000.3 * 1.0005 = 60,030.30015 → up to the 0.1 tick: 60,030.4.
    buy = match_on_submit(order(), quote, fees=PUBLISHED, slippage=FIVE_BPS)
    assert buy.price == D("60030.4")
    # Sell: 60,000.3 * 0.9995 = 59,970.29985 → down to the tick: 59,970.2.
    sell = match_on_submit(order(side=Side.SELL), quote, fees=PUBLISHED, slippage=FIVE_BPS)
    assert sell.price == D("59970.2")


def test_size_and_volatility_term():
    # 1 BTC at 40,000.0 = 40,000 USD against a 1,000,000 USD bar: sqrt(0.04) = 0.2;
    # * volatility 0.01 * impact 1 = 0.002 (20 bps), plus 5 bps = 25 bps: 40,000 * 1.0025 = 40,100.0.
    model = SlippageModel(bps=D(5), impact=D(1))
    quote = last_quote("40000.0", volatility=D("0.01"), bar_notional=D(1_000_000))
    assert match_on_submit(order(quantity="1"), quote, fees=PUBLISHED, slippage=model).price == D("40100.0")
    # Without a bar notional only the bps apply: 40,000 * 1.0005 = 40,020.0.
    plain_quote = last_quote("40000.0", volatility=D("0.01"))
    assert match_on_submit(order(quantity="1"), plain_quote, fees=PUBLISHED, slippage=model).price == D(
        "40020.0"
    )
    with pytest.raises(ValueError, match="must not be negative"):
        SlippageModel(bps=D(-1), impact=D(0))


def test_volatility_helpers():
    # ln(110/100) = 0.0953102, ln(99/110) = -0.1053605: mean -0.0050252, sample variance
    # ((0.1003353)² + (0.1003353)²) / 1 = 0.0201344 → stdev 0.1418956.
    vol = log_return_volatility([D(100), D(110), D(99)])
    assert abs(vol - D("0.1418956")) < D("0.0000001")
    assert log_return_volatility([D(100), D(110)]) is None
    bars = [
        Bar(D(100), D(101), D(99), D(c), D(2), T0 + timedelta(hours=i), T0 + timedelta(hours=i + 1))
        for i, c in enumerate(["100", "110", "99"])
    ]
    quote = quote_from_bars(bars)
    # bar notionals 200, 220, 198 → mean 206.
    assert (quote.last, quote.at, quote.bar_notional, quote.volatility) == (
        D(99),
        T0 + timedelta(hours=3),
        D(206),
        vol,
    )
    # Parkinson: ln(101/99) / sqrt(4 ln 2) = 0.0200007 * 0.6005612 = 0.0120116.
    assert abs(bars[0].volatility - D("0.0120116")) < D("0.0000001")
    assert quote_from_bars([]) is None


# --- On submit -----------------------------------------------------------------------------------------


def test_market_orders_fill_at_the_touch_plus_slippage_as_taker():
    quote = Quote(bid=D("59990.0"), ask=D("60000.0"), last=D("59995.0"), at=T0)
    buy = match_on_submit(order(), quote, fees=PUBLISHED, slippage=FIVE_BPS)
    # 60,000.0 * 1.0005 = 60,030.0; 0.01 * 60,030.0 = 600.300 USD * 0.40 % = 2.4012 USD.
    assert (buy.price, buy.quantity, buy.fee, buy.fee_currency, buy.liquidity, buy.executed_at) == (
        D("60030.0"),
        D("0.01"),
        D("2.4012"),
        "USD",
        "taker",
        T0,
    )
    sell = match_on_submit(order(side=Side.SELL), quote, fees=PUBLISHED, slippage=FIVE_BPS)
    # The bid: 59,990.0 * 0.9995 = 59,960.005 → 59,960.0; 599.600 * 0.40 % = 2.3984.
    assert (sell.price, sell.fee) == (D("59960.0"), D("2.3984"))
    later = T0 + timedelta(seconds=3)
    assert match_on_submit(order(), quote, fees=PUBLISHED, slippage=FIVE_BPS, at=later).executed_at == later


def test_a_crossing_limit_fills_at_once_never_worse_than_its_limit():
    quote = last_quote()
    # Touch + slippage 60,030.0 is worse than the limit 60,010.0: the limit caps it.
    capped = match_on_submit(
        order(OrderKind.LIMIT, limit="60010.0"), quote, fees=PUBLISHED, slippage=FIVE_BPS
    )
    assert (capped.price, capped.liquidity) == (D("60010.0"), "taker")
    # A generous limit fills at touch + slippage.
    assert match_on_submit(
        order(OrderKind.LIMIT, limit="61000.0"), quote, fees=PUBLISHED, slippage=FIVE_BPS
    ).price == D("60030.0")
    sell = match_on_submit(
        order(OrderKind.LIMIT, Side.SELL, limit="59990.0"), quote, fees=PUBLISHED, slippage=FIVE_BPS
    )
    assert sell.price == D("59990.0")  # 59,970.0 after slippage, floored by the limit


def test_a_limit_that_does_not_cross_rests():
    quote = last_quote()
    assert (
        match_on_submit(order(OrderKind.LIMIT, limit="59999.9"), quote, fees=PUBLISHED, slippage=FIVE_BPS)
        is None
    )
    assert (
        match_on_submit(
            order(OrderKind.LIMIT, Side.SELL, limit="60000.1"), quote, fees=PUBLISHED, slippage=FIVE_BPS
        )
        is None
    )


@pytest.mark.parametrize(
    ("kind", "side", "trigger", "fills"),
    [
        (OrderKind.STOP_LOSS, Side.SELL, "60500.0", True),  # last 60,000 <= 60,500: already through
        (OrderKind.STOP_LOSS, Side.SELL, "59000.0", False),
        (OrderKind.STOP_LOSS, Side.BUY, "59000.0", True),  # last >= stop
        (OrderKind.STOP_LOSS, Side.BUY, "61000.0", False),
        (OrderKind.TAKE_PROFIT, Side.SELL, "59000.0", True),  # last >= trigger
        (OrderKind.TAKE_PROFIT, Side.SELL, "61000.0", False),
        (OrderKind.TAKE_PROFIT, Side.BUY, "61000.0", True),  # last <= trigger
        (OrderKind.TAKE_PROFIT, Side.BUY, "59000.0", False),
    ],
)
def test_triggered_stops_and_take_profits_fill_as_market_orders(kind, side, trigger, fills):
    execution = match_on_submit(
        order(kind, side, stop=trigger), last_quote(), fees=PUBLISHED, slippage=FIVE_BPS
    )
    if not fills:
        assert execution is None
    else:
        assert execution.price == (D("60030.0") if side == Side.BUY else D("59970.0"))
        assert execution.liquidity == "taker"


def test_a_resting_limit_reached_by_a_later_quote_fills_at_its_limit_as_maker():
    request = order(OrderKind.LIMIT, limit="59900.0")
    assert match_on_quote(request, last_quote("59900.1"), fees=PUBLISHED, slippage=FIVE_BPS) is None
    execution = match_on_quote(request, last_quote("59850.0"), fees=PUBLISHED, slippage=FIVE_BPS)
    # 0.01 * 59,900.0 = 599.000 * 0.25 % = 1.4975.
    assert (execution.price, execution.liquidity, execution.fee) == (D("59900.0"), "maker", D("1.4975"))
    stop = order(OrderKind.STOP_LOSS, Side.SELL, stop="59900.0")
    assert match_on_quote(stop, last_quote("59850.0"), fees=PUBLISHED, slippage=FIVE_BPS).price == D(
        "59820.0"
    )


# --- On bars -------------------------------------------------------------------------------------------

BAR = Bar(
    open=D("60000.0"),
    high=D("60500.0"),
    low=D("59500.0"),
    close=D("60200.0"),
    volume=D("10"),
    open_time=T0,
    close_time=T0 + timedelta(hours=1),
)
GAP_DOWN = Bar(D("59000.0"), D("59400.0"), D("58800.0"), D("59100.0"), D("10"), T0, T0 + timedelta(hours=1))
GAP_UP = Bar(D("61000.0"), D("61200.0"), D("60900.0"), D("61100.0"), D("10"), T0, T0 + timedelta(hours=1))
CLOSE = T0 + timedelta(hours=1)


def on_bar(request, bar=BAR, slippage=FIVE_BPS):
    return match_on_bar(request, bar, fees=PUBLISHED, slippage=slippage)


def test_limits_on_a_bar():
    # Buy 59,800.0: low 59,500 reaches it; min(59,800, open 60,000) = 59,800 as maker at the bar's close.
    # Fee: 0.01 * 59,800.0 = 598.000 * 0.25 % = 1.4950.
    buy = on_bar(order(OrderKind.LIMIT, limit="59800.0"))
    assert (buy.price, buy.liquidity, buy.fee, buy.executed_at) == (D("59800.0"), "maker", D("1.4950"), CLOSE)
    # Sell 60,400.0: high 60,500 reaches it; max(60,400, 60,000) = 60,400.
    assert on_bar(order(OrderKind.LIMIT, Side.SELL, limit="60400.0")).price == D("60400.0")
    # Not reached: low 59,500 > 59,400; high 60,500 < 60,600.
    assert on_bar(order(OrderKind.LIMIT, limit="59400.0")) is None
    assert on_bar(order(OrderKind.LIMIT, Side.SELL, limit="60600.0")) is None


def test_limits_on_a_gap_fill_at_the_open_at_the_open_time():
    buy = on_bar(order(OrderKind.LIMIT, limit="59800.0"), GAP_DOWN)
    assert (buy.price, buy.executed_at, buy.liquidity) == (D("59000.0"), T0, "maker")
    sell = on_bar(order(OrderKind.LIMIT, Side.SELL, limit="60400.0"), GAP_UP)
    assert (sell.price, sell.executed_at) == (D("61000.0"), T0)


def test_stops_on_a_bar_fill_at_the_worse_of_trigger_and_open_plus_slippage():
    # Sell stop 59,800.0: low 59,500 trades through; min(59,800, 60,000) = 59,800 * 0.9995 = 59,770.1, taker.
    # Fee: 0.01 * 59,770.1 = 597.701 * 0.40 % = 2.390804 → 2.3909.
    sell = on_bar(order(OrderKind.STOP_LOSS, Side.SELL, stop="59800.0"))
    assert (sell.price, sell.liquidity, sell.fee, sell.executed_at) == (
        D("59770.1"),
        "taker",
        D("2.3909"),
        CLOSE,
    )
    # Gap down through the stop: the open 59,000 is worse: 59,000 * 0.9995 = 58,970.5, at the open.
    gap = on_bar(order(OrderKind.STOP_LOSS, Side.SELL, stop="59800.0"), GAP_DOWN)
    assert (gap.price, gap.executed_at) == (D("58970.5"), T0)
    # Buy stop 60,300.0: high 60,500; max(60,300, 60,000) * 1.0005 = 60,330.15 → up: 60,330.2.
    assert on_bar(order(OrderKind.STOP_LOSS, Side.BUY, stop="60300.0")).price == D("60330.2")
    # Buy stop on a gap up: 61,000 * 1.0005 = 61,030.5.
    assert on_bar(order(OrderKind.STOP_LOSS, Side.BUY, stop="60300.0"), GAP_UP).price == D("61030.5")
    # Not triggered.
    assert on_bar(order(OrderKind.STOP_LOSS, Side.SELL, stop="59400.0")) is None
    assert on_bar(order(OrderKind.STOP_LOSS, Side.BUY, stop="60600.0")) is None


def test_take_profits_on_a_bar_fill_at_the_trigger_or_the_better_open():
    # Sell 60,400.0: high reaches it; max(60,400, 60,000) * 0.9995 = 60,369.8.
    sell = on_bar(order(OrderKind.TAKE_PROFIT, Side.SELL, stop="60400.0"))
    assert (sell.price, sell.liquidity, sell.executed_at) == (D("60369.8"), "taker", CLOSE)
    # Gap up: the open 61,000 is better: 61,000 * 0.9995 = 60,969.5, at the open.
    gap = on_bar(order(OrderKind.TAKE_PROFIT, Side.SELL, stop="60400.0"), GAP_UP)
    assert (gap.price, gap.executed_at) == (D("60969.5"), T0)
    # Without slippage the take-profit is exactly its trigger.
    assert on_bar(order(OrderKind.TAKE_PROFIT, Side.SELL, stop="60400.0"), slippage=NO_SLIPPAGE).price == D(
        "60400.0"
    )
    # Buy take-profit 59,600.0: low 59,500 reaches it: 59,600 * 1.0005 = 59,629.8.
    assert on_bar(order(OrderKind.TAKE_PROFIT, Side.BUY, stop="59600.0")).price == D("59629.8")
    assert on_bar(order(OrderKind.TAKE_PROFIT, Side.SELL, stop="60600.0")) is None


def test_a_bar_prices_size_with_its_own_range_and_volume():
    # 1 BTC at the 59,800 trigger against a bar of 10 * 60,200 = 602,000 USD: sqrt(59,800 / 602,000) =
    # 0.3151753; Parkinson volatility ln(60,500 / 59,500) * 0.6005612 = 0.0100096; product 0.0031548,
    # plus 5 bps = 0.0036548 → 59,800 * (1 - 0.0036548) = 59,581.44 → down to the tick: 59,581.4.
    model = SlippageModel(bps=D(5), impact=D(1))
    execution = on_bar(order(OrderKind.STOP_LOSS, Side.SELL, "1", stop="59800.0"), slippage=model)
    assert execution.price == D("59581.4")


# --- Properties ----------------------------------------------------------------------------------------

prices = st.integers(min_value=10_000, max_value=2_000_000).map(lambda n: D(n) / 10)  # 1,000.0 … 200,000.0
quantities = st.integers(min_value=5_000, max_value=10_000_000).map(lambda n: D(n).scaleb(-8))
sides = st.sampled_from([Side.BUY, Side.SELL])
models = st.builds(
    SlippageModel,
    bps=st.integers(min_value=0, max_value=100).map(D),
    impact=st.integers(min_value=0, max_value=20).map(lambda n: D(n) / 10),
)
rates = st.builds(
    FeeRates,
    maker_pct=st.integers(min_value=0, max_value=25).map(lambda n: D(n) / 100),
    taker_pct=st.integers(min_value=10, max_value=40).map(lambda n: D(n) / 100),
)


@given(side=sides, limit=prices, touch=prices, quantity=quantities, model=models, fees=rates)
def test_a_limit_never_fills_worse_than_its_limit(side, limit, touch, quantity, model, fees):
    request = order(OrderKind.LIMIT, side, str(quantity), limit=str(limit))
    quote = last_quote(str(touch), volatility=D("0.02"), bar_notional=D(500_000))
    bar = Bar(touch, max(touch, limit), min(touch, limit), touch, D(3), T0, CLOSE)
    for execution in (
        match_on_submit(request, quote, fees=fees, slippage=model),
        match_on_quote(request, quote, fees=fees, slippage=model),
        match_on_bar(request, bar, fees=fees, slippage=model),
    ):
        if execution is not None:
            assert execution.price <= limit if side == Side.BUY else execution.price >= limit


@given(side=sides, touch=prices, quantity=quantities, model=models, fees=rates)
def test_slippage_is_adverse_on_the_tick_and_fees_never_negative_nor_optimistic(
    side, touch, quantity, model, fees
):
    quote = last_quote(str(touch), volatility=D("0.03"), bar_notional=D(100_000))
    execution = match_on_submit(order(side=side, quantity=str(quantity)), quote, fees=fees, slippage=model)
    assert execution.price >= touch if side == Side.BUY else execution.price <= touch
    assert execution.price > 0
    assert execution.price % BTC.tick_size == 0
    exact = execution.price * execution.quantity * fees.taker_pct / 100
    assert execution.fee >= 0
    assert exact <= execution.fee < exact + D("0.0001")
