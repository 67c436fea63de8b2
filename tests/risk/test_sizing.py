from decimal import Decimal as D

from risk.engine import Code, Distance, ExitRule, RiskPolicy, size_entry
from tests.risk.builders import BTC, FEES, SOL, pair

POLICY = RiskPolicy(volatility_target_pct=None)


def test_risk_amount_over_stop_distance_rounded_down_to_the_lot():
    # risk 0.5 % of 10,000 = 50 USD; stop 2 ATR = 2 x 300 = 600 USD → 50 / 600 = 0.083333333… BTC
    size = size_entry(policy=POLICY, pair=BTC, equity=D(10000), price=D(20000), fees=FEES, atr=D(300))
    assert size.quantity == D("0.08333333")
    assert size.stop_distance == D(600)
    assert size.limited_by == "risk"
    assert size.quantity * size.stop_distance <= D(50)


def test_realised_volatility_stands_in_for_the_atr():
    # V = 20,000 x 0.01 = 200; stop 2 x 200 = 400 → 50 / 400 = 0.125 BTC (2,500 USD: above the 20 % cap)
    size = size_entry(
        policy=POLICY, pair=BTC, equity=D(10000), price=D(20000), fees=FEES, realised_volatility=D("0.01")
    )
    assert size.quantity == D("0.1")  # 20 % of 10,000 / 20,000
    assert size.limited_by == Code.PAIR_LIMIT


def test_a_percent_stop_sizes_from_the_price():
    policy = RiskPolicy(
        volatility_target_pct=None,
        stop_loss=ExitRule(Distance.PERCENT, D(5)),
        take_profit=ExitRule(Distance.PERCENT, D(10)),
    )
    size = size_entry(policy=policy, pair=BTC, equity=D(10000), price=D(20000), fees=FEES, atr=D(1))
    assert size.stop_distance == D(1000)
    assert size.quantity == D("0.05")


def test_the_volatility_target_caps_the_position():
    # risk 1 %: 100 / 600 = 0.1667; pair 20 %: 2,000 / 20,000 = 0.1;
    # target 0.25 % of 10,000 = 25 USD of one-bar stdev, V = 300 → 25 / 300 = 0.08333333 BTC binds
    policy = RiskPolicy(risk_per_trade_pct=D(1))
    size = size_entry(policy=policy, pair=BTC, equity=D(10000), price=D(20000), fees=FEES, atr=D(300))
    assert size.limited_by == Code.VOLATILITY_LIMIT
    assert size.quantity == D("0.08333333")


def test_the_buying_power_cap_includes_the_taker_fee():
    # B = 10,000 x (1 - 0.9 hedge) = 1,000 → 1,000 / (20,000 x 1.004) = 0.04980079… BTC
    size = size_entry(
        policy=POLICY, pair=BTC, equity=D(10000), price=D(20000), fees=FEES, atr=D(300), buying_power=D(1000)
    )
    assert size.limited_by == Code.BUYING_POWER_LIMIT
    assert size.quantity == D("0.04980079")
    assert size.quantity * D(20000) * D("1.004") <= D(1000)


def test_below_ordermin_is_no_trade_with_the_reason():
    size = size_entry(policy=POLICY, pair=SOL, equity=D(10), price=D(20), fees=FEES, atr=D(50))
    assert not size.tradable
    assert size.quantity == 0
    assert [finding.code for finding in size.reasons] == [Code.BELOW_ORDERMIN, Code.BELOW_COSTMIN]
    assert "below Kraken's minimum order of 0.02 SOL" in size.reasons[0].message


def test_below_costmin_is_no_trade_with_the_reason():
    dear = pair("BTC/USD", ordermin="0.0001", costmin="200")  # 5 USD risk / 600 = 0.00833333 BTC = 166.67 USD
    size = size_entry(policy=POLICY, pair=dear, equity=D(1000), price=D(20000), fees=FEES, atr=D(300))
    assert size.quantity == 0
    assert [finding.code for finding in size.reasons] == [Code.BELOW_COSTMIN]


def test_bad_inputs_fail_closed():
    def codes(**kwargs):
        args = {
            "policy": POLICY,
            "pair": BTC,
            "equity": D(10000),
            "price": D(20000),
            "fees": FEES,
            "atr": D(300),
        }
        size = size_entry(**{**args, **kwargs})
        assert size.quantity == 0
        return [finding.code for finding in size.reasons]

    assert codes(atr=D(0)) == [Code.VOLATILITY_INVALID]
    assert codes(atr=D(-5)) == [Code.VOLATILITY_INVALID]
    assert codes(atr=D("NaN")) == [Code.VOLATILITY_INVALID]
    assert codes(atr=None, realised_volatility=None) == [Code.VOLATILITY_INVALID]
    assert codes(atr=None, realised_volatility=D("NaN")) == [Code.VOLATILITY_INVALID]
    assert codes(equity=D("NaN")) == [Code.EQUITY_MISSING]
    assert codes(price=None) == [Code.PRICE_MISSING]
    assert codes(buying_power=D("NaN")) == [Code.INVALID_INPUT]
    assert codes(policy=RiskPolicy(max_position_pct=D(50))) == [Code.POLICY_INVALID]
