from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from risk.engine import Mark, RiskInputError, marked_equity, observe_equity
from tests.risk.builders import FEES


def test_equity_is_cash_plus_holdings_net_of_the_exit_fee():
    # 0.5 BTC at 20,000 = 10,000 - 40 fee; 2 ETH at 1,500.33 = 3,000.66 - 12.00264 → 12.0027 (rounded up)
    equity = marked_equity(
        cash_usd=D("1000.5"),
        marks=[
            Mark("BTC/USD", D("0.5"), D(20000)),
            Mark("ETH/USD", D(2), D("1500.33")),
            Mark("SOL/USD", D(0), None),
        ],
        fees=FEES,
    )
    assert equity == D("1000.5") + D(10000) - D(40) + D("3000.66") - D("12.0027")


def test_a_holding_without_a_price_has_no_equity():
    with pytest.raises(RiskInputError, match="no usable price"):
        marked_equity(cash_usd=D(0), marks=[Mark("BTC/USD", D(1), None)], fees=FEES)
    with pytest.raises(RiskInputError, match="not a number"):
        marked_equity(cash_usd=D("NaN"), marks=[], fees=FEES)


def at(hour, day=21):
    return datetime(2026, 11, day, hour, tzinfo=UTC)


def test_drawdown_is_measured_from_the_days_high_not_its_start():
    day = observe_equity(None, equity=D(10000), at=at(0))
    day = observe_equity(day, equity=D(11000), at=at(5))
    day = observe_equity(day, equity=D(10500), at=at(9))
    assert day.high_water == D(11000)
    assert day.drawdown_pct == D(500) / D(11000) * 100  # 4.545 % although still up 5 % on the day's start


def test_a_new_utc_day_starts_a_new_high_water_mark():
    day = observe_equity(None, equity=D(11000), at=at(23))
    day = observe_equity(day, equity=D(9000), at=at(0, day=22))
    assert (day.high_water, day.drawdown_pct) == (D(9000), 0)


def test_out_of_order_and_naive_times_are_refused():
    day = observe_equity(None, equity=D(1), at=at(5))
    with pytest.raises(RiskInputError, match="older"):
        observe_equity(day, equity=D(1), at=at(4))
    with pytest.raises(RiskInputError, match="time zone"):
        observe_equity(None, equity=D(1), at=datetime(2026, 11, 21))


def test_an_account_with_nothing_in_it_has_no_drawdown_to_trip_on():
    # Not funded yet (or a live book before its first reconciliation): the day's high is 0.
    day = observe_equity(None, equity=D(0), at=at(1))
    assert day.drawdown_pct == 0
    funded = observe_equity(day, equity=D(10000), at=at(2))
    assert (funded.high_water, funded.drawdown_pct) == (D(10000), 0)


def test_observe_equity_keeps_the_mark_object_and_the_utc_day():
    """Within a day the mark is ``max(mark, equity)`` as that call gives it (the earlier mark when equal,
    its exponent included); a new UTC day, also from a non-UTC zone, starts a new record."""
    from datetime import timedelta, timezone

    at = datetime(2022, 5, 12, 22, tzinfo=UTC)
    first = observe_equity(None, equity=D("100.00"), at=at)
    same = observe_equity(first, equity=D("100.0"), at=at + timedelta(minutes=1))
    assert str(same.high_water) == "100.00"
    assert str(same.equity) == "100.0"
    higher = observe_equity(same, equity=D("100.5"), at=at + timedelta(minutes=2))
    assert higher.high_water is higher.equity
    lower = observe_equity(higher, equity=D(99), at=at + timedelta(minutes=3))
    assert (lower.high_water, lower.equity, lower.day) == (D("100.5"), D(99), at.date())
    plus_two = timezone(timedelta(hours=2))
    next_day = observe_equity(lower, equity=D(98), at=datetime(2022, 5, 13, 1, 30, tzinfo=plus_two))
    assert next_day.day == at.date()  # 23:30 UTC: still the 12th
    next_day = observe_equity(next_day, equity=D(98), at=datetime(2022, 5, 13, 2, 30, tzinfo=plus_two))
    assert (next_day.day, next_day.high_water) == (datetime(2022, 5, 13).date(), D(98))
    for bad in (D("NaN"), D("Infinity"), None, True):
        with pytest.raises(RiskInputError):
            observe_equity(lower, equity=bad, at=at + timedelta(hours=1))
    assert observe_equity(lower, equity=99, at=at + timedelta(hours=1)).equity == 99
    with pytest.raises(RiskInputError):
        observe_equity(lower, equity=D(1), at=datetime(2022, 5, 12, 23))
