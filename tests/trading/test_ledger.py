"""Position, PnL and reservation arithmetic, checked by hand (no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal as D

import pytest

from trading.ledger import Book, FillFacts, LedgerError, apply_fill, release_for_fill, reservation_for

T0 = datetime(2026, 11, 2, 12, tzinfo=UTC)


def fill(side, price, qty, fee, *, currency="USD", minutes=0):
    return FillFacts(side, D(price), D(qty), D(fee), currency, T0 + timedelta(minutes=minutes))


def test_the_worked_example_of_the_module_doc():
    # Buy 0.5 BTC at 20,000, fee 26 (0.26 %): cost 10,000 + 26 = 10,026; average 10,026 / 0.5 = 20,052.
    bought = apply_fill(Book(), fill("buy", "20000", "0.5", "26"), base_asset="BTC")
    assert bought.book.quantity == D("0.5")
    assert bought.book.average_cost == D("20052")
    assert bought.usd_delta == D("-10026")
    assert bought.base_delta == D("0.5")
    assert bought.closed_trip is None
    # Sell 0.5 at 22,000, fee 28.60: proceeds 11,000 - 28.60 = 10,971.40; realised 945.40.
    sold = apply_fill(bought.book, fill("sell", "22000", "0.5", "28.60", minutes=60), base_asset="BTC")
    assert sold.realised_pnl == D("945.40")
    assert sold.usd_delta == D("10971.40")
    assert sold.base_delta == D("-0.5")
    assert sold.book.quantity == 0
    assert sold.book.realised_pnl == D("945.40")
    trip = sold.closed_trip
    assert trip is not None
    assert (trip.entry_price, trip.exit_price) == (D("20000"), D("22000"))
    assert trip.fees == D("54.60")
    assert trip.net_pnl == D("945.40")
    # 945.40 / 10,026 = 0.0942948334…, in percent 9.42948334 (8 places).
    assert trip.return_pct == D("9.42948334")
    assert (trip.opened_at, trip.closed_at) == (T0, T0 + timedelta(minutes=60))
    assert trip.quantity == D("0.5")


def test_average_cost_blends_buys_and_a_partial_sell_keeps_it():
    # 1 @ 100 fee 0.40 → cost 100.40; 1 @ 110 fee 0.44 → cost 110.44; average (100.40 + 110.44) / 2 = 105.42.
    book = apply_fill(Book(), fill("buy", "100", "1", "0.40"), base_asset="ETH").book
    book = apply_fill(book, fill("buy", "110", "1", "0.44", minutes=1), base_asset="ETH").book
    assert book.average_cost == D("105.42")
    # Sell 0.5 @ 120 fee 0.24: proceeds 59.76; realised 59.76 - 0.5 x 105.42 = 59.76 - 52.71 = 7.05.
    partial = apply_fill(book, fill("sell", "120", "0.5", "0.24", minutes=2), base_asset="ETH")
    assert partial.realised_pnl == D("7.05")
    assert partial.book.average_cost == D("105.42")
    assert partial.book.quantity == D("1.5")
    assert partial.closed_trip is None
    # Sell the rest, 1.5 @ 90 fee 0.54: proceeds 134.46; realised 134.46 - 158.13 = -23.67.
    closed = apply_fill(partial.book, fill("sell", "90", "1.5", "0.54", minutes=3), base_asset="ETH")
    assert closed.realised_pnl == D("-23.67")
    trip = closed.closed_trip
    # Trip: net 7.05 - 23.67 = -16.62; fees 0.40 + 0.44 + 0.24 + 0.54 = 1.62; max held 2.
    assert trip.net_pnl == D("-16.62")
    assert trip.fees == D("1.62")
    assert trip.quantity == D("2")
    # Entry (100 + 110) / 2 = 105; exit (60 + 135) / 2 = 97.5.
    assert (trip.entry_price, trip.exit_price) == (D("105"), D("97.5"))
    # Return -16.62 / (210 + 0.84) x 100 = -7.8827546955…, -7.88275470 at 8 places.
    assert trip.return_pct == D("-7.88275470")
    assert closed.book == Book(realised_pnl=D("-16.62"))


def test_a_fee_charged_in_the_base_reduces_what_a_buy_receives():
    # Buy 1 BTC @ 100 with a 0.004 BTC fee: receive 0.996, pay 100 USD; the fee is worth 0.40 USD.
    effect = apply_fill(Book(), fill("buy", "100", "1", "0.004", currency="BTC"), base_asset="BTC")
    assert effect.base_delta == D("0.996")
    assert effect.usd_delta == D("-100")
    assert effect.fee_usd == D("0.4")
    # Average cost 100 / 0.996 = 100.401606425702… (12 places).
    assert effect.book.average_cost == D("100.401606425703")


def test_spot_never_goes_short():
    book = apply_fill(Book(), fill("buy", "100", "1", "0"), base_asset="BTC").book
    with pytest.raises(LedgerError, match="exceeds the position of 1"):
        apply_fill(book, fill("sell", "100", "1.0001", "0"), base_asset="BTC")


@pytest.mark.parametrize(
    ("price", "qty", "fee", "currency", "message"),
    [
        ("0", "1", "0", "USD", "not valid"),
        ("1", "0", "0", "USD", "not valid"),
        ("1", "1", "-0.1", "USD", "not valid"),
        ("1", "1", "0.1", "EUR", "neither USD nor BTC"),
    ],
)
def test_invalid_fills_are_refused(price, qty, fee, currency, message):
    with pytest.raises(LedgerError, match=message):
        apply_fill(Book(), fill("buy", price, qty, fee, currency=currency), base_asset="BTC")


def test_reservations_hold_usd_with_buffer_and_fee_or_the_base():
    # 0.1 BTC @ 50,000 with a 1 % buffer and a 0.40 % taker fee: 0.1 x 50,500 x 1.004 = 5,070.20.
    buy = reservation_for(
        side="buy",
        quantity=D("0.1"),
        price=D("50000"),
        taker_pct=D("0.40"),
        buffer_pct=D("1"),
        base_asset="BTC",
        cost_decimals=5,
    )
    assert (buy.asset, buy.amount) == ("USD", D("5070.20000"))
    # Rounded up at the cost precision: 0.00003 x 33,333.3 = 0.999999; x 1.0026 = 1.002598997, up to 1.00260.
    odd = reservation_for(
        side="buy",
        quantity=D("0.00003"),
        price=D("33333.3"),
        taker_pct=D("0.26"),
        buffer_pct=D("0"),
        base_asset="BTC",
        cost_decimals=5,
    )
    assert odd.amount == D("1.00260")
    sell = reservation_for(
        side="sell",
        quantity=D("0.25"),
        price=D("50000"),
        taker_pct=D("0.40"),
        buffer_pct=D("1"),
        base_asset="BTC",
        cost_decimals=5,
    )
    assert (sell.asset, sell.amount) == ("BTC", D("0.25"))


def test_a_fill_releases_what_it_used_and_never_more_than_is_reserved():
    assert release_for_fill(side="buy", reserved=D("100"), fill_quantity=D("1"), fill_cost=D("60")) == D("60")
    assert release_for_fill(side="buy", reserved=D("50"), fill_quantity=D("1"), fill_cost=D("60")) == D("50")
    assert release_for_fill(side="sell", reserved=D("2"), fill_quantity=D("0.5"), fill_cost=D("1")) == D(
        "0.5"
    )


def test_an_exchange_sell_beyond_the_position_is_taken_with_the_excess_untracked():
    # Held by Aether: 0.5 @ average 100 (fee 0). Kraken sells 1.0 @ 120 with a 0.48 USD fee (holdings
    # bought outside Aether make up the rest). Proceeds 119.52; the tracked half realises
    # 119.52 x 0.5 - 0.5 x 100 = 9.76; the other 0.5 has no known cost and realises nothing.
    book = apply_fill(Book(), fill("buy", "100", "0.5", "0"), base_asset="BTC").book
    effect = apply_fill(
        book, fill("sell", "120", "1", "0.48", minutes=5), base_asset="BTC", untracked_ok=True
    )
    assert effect.untracked == D("0.5")
    assert effect.realised_pnl == D("9.76")
    assert effect.base_delta == D("-1")
    assert effect.usd_delta == D("119.52")
    assert effect.book.quantity == 0
    assert effect.closed_trip is not None
    assert effect.closed_trip.net_pnl == D("9.76")
    # Nothing held at all: nothing realised, no trip.
    bare = apply_fill(Book(), fill("sell", "120", "1", "0.48"), base_asset="BTC", untracked_ok=True)
    assert (bare.untracked, bare.realised_pnl, bare.closed_trip) == (D("1"), 0, None)


def test_a_fee_in_the_base_is_not_counted_twice_in_the_return():
    # Buy 1 @ 100, fee 0.004 BTC: cost 100 USD for 0.996 BTC. Sell 0.996 @ 110, fee 0.44 USD:
    # proceeds 0.996 x 110 - 0.44 = 109.12; realised 109.12 - 100 = 9.12.
    # The return is over what was paid, 100 USD: 9.12 %.
    book = apply_fill(Book(), fill("buy", "100", "1", "0.004", currency="BTC"), base_asset="BTC").book
    trip = apply_fill(book, fill("sell", "110", "0.996", "0.44", minutes=1), base_asset="BTC").closed_trip
    assert trip.net_pnl == D("9.12")
    assert trip.return_pct == D("9.12")
