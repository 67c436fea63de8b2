"""The pre-trade shell on a simulated account: the snapshot from the database, accept / resize / reject with
their audit rows and metric, exits that pass a halt or a latched kill switch, stale prices that stop
entries."""

from __future__ import annotations

import math
from datetime import timedelta
from decimal import Decimal as D

import pytest
from django.utils import timezone
from prometheus_client import REGISTRY

from accounts.models import Account
from governance.actors import SystemActor
from governance.models import AuditEvent
from risk import engine
from risk.models import KillSwitch
from risk.pretrade import order_submit_checked, risk_snapshot
from risk.services import killswitch_halt, risk_policy_update
from trading.matching import Quote
from trading.models import Candle, Instrument, Order, OrderStatus, Position
from trading.quotes import MemoryQuoteSource
from trading.services.orders import sim_balance_set

ENGINE = SystemActor("strategy_cycle")
EDGE = D("2")  # % expected: clears 2 x 0.40 % taker + 2 x 0.05 % slippage + 0.10 % minimum edge


def fresh(price: str, *, age: timedelta = timedelta(seconds=5)) -> Quote:
    return Quote.from_last(D(price), timezone.now() - age)


@pytest.fixture
def book(firm, universe):
    """Alice's simulated account: 100,000 USD, percent exits (no candles needed), BTC at 50,000."""
    account = firm.alice_account
    sim_balance_set(account=account, asset="USD", amount=D("100000"), actor=firm.owner, reason="test funds")
    risk_policy_update(
        account=account,
        actor=firm.owner,
        stop_loss_kind="percent",
        stop_loss_value=D("2"),
        take_profit_kind="percent",
        take_profit_value=D("4"),
        trailing_kind="percent",
        trailing_value=D("3"),
    )
    quotes = MemoryQuoteSource({"BTC/USD": fresh("50000"), "ETH/USD": fresh("3000")})
    return account, universe["BTC/USD"], quotes


def checked(book, side="buy", qty="0.1", **kwargs):
    account, btc, quotes = book
    kwargs.setdefault("expected_edge_pct", EDGE if side == "buy" else None)
    kwargs.setdefault("reason", "strategy")
    return order_submit_checked(
        account=account,
        actor=kwargs.pop("actor", ENGINE),
        instrument=kwargs.pop("instrument", btc),
        side=side,
        order_type="market",
        quantity=D(qty),
        quotes=kwargs.pop("quotes", quotes),
        **kwargs,
    )


def decisions(verdict: str, code: str) -> float:
    return REGISTRY.get_sample_value("aether_risk_decisions_total", {"verdict": verdict, "code": code}) or 0.0


def events(account, action: str):
    return list(AuditEvent.objects.filter(account=account, action=action).order_by("seq"))


# --- Snapshot ---------------------------------------------------------------------------------------------


def test_the_snapshot_reads_the_book_from_the_database(book):
    account, btc, quotes = book
    checked(book, qty="0.1")
    snap = risk_snapshot(account=account, instrument=btc, quotes=quotes)
    position = Position.objects.get(account=account, broker="sim", instrument=btc)
    assert (snap.mode, snap.broker, snap.trading_enabled) == (engine.Mode.SIMULATION, "sim", True)
    assert set(snap.pairs) == {"BTC/USD", "ETH/USD", "SOL/USD"}
    assert snap.prices["BTC/USD"].price == D("50000")
    assert snap.max_price_age == timedelta(seconds=90)
    assert snap.held == {"BTC/USD": position.quantity}
    assert snap.exposures == {"BTC/USD": position.quantity * D("50000")}
    usd = account.balances.get(broker="sim", asset="USD")
    assert snap.available_usd == usd.total - usd.reserved
    assert D("99000") < snap.equity < D("100000")  # cash + BTC at the bid less the fee to sell
    assert snap.slippage_pct == D("0.05")
    assert len(snap.recent_orders) == 1
    # No candles: correlations are not measurable, so the traded pairs form one group (fail closed).
    assert snap.groups == (frozenset({"BTC/USD", "ETH/USD", "SOL/USD"}),)


def test_correlated_groups_come_from_the_closed_candles(book, settings):
    account, btc, quotes = book
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    closes = {
        "BTC/USD": [50000 * (1 + 0.01 * math.sin(i)) for i in range(60)],
        "ETH/USD": [3000 * (1 + 0.01 * math.sin(i)) for i in range(60)],  # moves with BTC
        "SOL/USD": [20 * (1 + 0.01 * math.cos(i * 1.7)) for i in range(60)],
    }
    for symbol, series in closes.items():
        instrument = Instrument.objects.get(symbol=symbol)
        Candle.objects.bulk_create(
            Candle(
                instrument=instrument,
                timeframe=settings.AETHER_TIMEFRAME,
                open_time=now - timedelta(hours=60 - i),
                open=D(str(round(close, 4))),
                high=D(str(round(close * 1.001, 4))),
                low=D(str(round(close * 0.999, 4))),
                close=D(str(round(close, 4))),
                volume=D("10"),
                source="replay",
            )
            for i, close in enumerate(series)
        )
    risk_policy_update(account=account, actor=account.memberships.first().user, correlation_window=48)
    snap = risk_snapshot(account=account, instrument=btc, quotes=quotes)
    assert snap.groups == (frozenset({"BTC/USD", "ETH/USD"}), frozenset({"SOL/USD"}))


# --- Accept, resize, reject -------------------------------------------------------------------------------


def test_an_accepted_entry_is_submitted_as_asked_and_counted(book, django_capture_on_commit_callbacks):
    account, _, _ = book
    before = decisions("accept", "none")
    with django_capture_on_commit_callbacks(execute=True):
        result = checked(book, qty="0.1")
    assert result.decision.verdict == engine.Verdict.ACCEPT
    assert result.order.quantity == D("0.1")
    assert result.order.status == OrderStatus.FILLED
    assert not events(account, "risk.rejected")
    assert not events(account, "risk.resized")
    assert decisions("accept", "none") == before + 1


def test_a_rejected_entry_is_audited_counted_and_never_reaches_the_order_book(
    book, django_capture_on_commit_callbacks
):
    account, _, _ = book
    before = decisions("reject", "edge_missing")
    with django_capture_on_commit_callbacks(execute=True):
        result = checked(book, qty="0.1", expected_edge_pct=None)
    assert result.order is None
    assert result.decision.verdict == engine.Verdict.REJECT
    assert result.decision.codes == (engine.Code.EDGE_MISSING,)
    assert not Order.objects.filter(account=account).exists()
    (event,) = events(account, "risk.rejected")
    assert event.actor == "system:strategy_cycle"
    assert event.details["codes"] == ["edge_missing"]
    assert event.details["message"] == result.decision.message
    assert event.details["message"].startswith("Rejected buy 0.1 BTC/USD: the expected edge is None")
    assert decisions("reject", "edge_missing") == before + 1


def test_an_oversized_entry_is_resized_to_the_pair_limit_audited_and_submitted(
    book, django_capture_on_commit_callbacks
):
    account, _, _ = book
    before = decisions("resize", "pair_limit")
    with django_capture_on_commit_callbacks(execute=True):
        result = checked(book, qty="1")  # 50,000 USD: above 20 % of 100,000
    assert result.decision.verdict == engine.Verdict.RESIZE
    assert result.decision.codes == (engine.Code.PAIR_LIMIT,)
    # 20,000 USD of room at 50,000 plus 5 bps of slippage, rounded down to the lot.
    assert result.decision.quantity == D("0.39980009")
    assert result.order.quantity == result.decision.quantity
    assert result.order.status == OrderStatus.FILLED
    (event,) = events(account, "risk.resized")
    assert event.details["requested_quantity"] == "1"
    assert event.details["quantity"] == "0.39980009"
    assert event.details["client_order_id"] == result.order.client_order_id
    assert decisions("resize", "pair_limit") == before + 1


def test_a_sell_beyond_the_holding_is_resized_to_it(book):
    account, btc, _ = book
    bought = checked(book, qty="0.1").order
    result = checked(book, side="sell", qty="0.5", reason="exit")
    assert result.decision.verdict == engine.Verdict.RESIZE
    assert result.decision.codes == (engine.Code.SELL_EXCEEDS_HOLDING,)
    assert result.order.quantity == bought.filled_quantity == D("0.1")
    assert result.order.status == OrderStatus.FILLED
    assert Position.objects.get(account=account, broker="sim", instrument=btc).quantity == 0
    assert events(account, "risk.resized")[0].details["codes"] == ["sell_exceeds_holding"]


def test_a_known_client_order_id_returns_its_order_without_a_second_check(book):
    first = checked(book, qty="0.1", client_order_id="strategy-1")
    again = checked(book, qty="0.1", client_order_id="strategy-1")
    assert again.order.pk == first.order.pk
    assert Order.objects.count() == 1


# --- Halts, the kill switch, stale prices -----------------------------------------------------------------


def test_a_halt_blocks_entries_but_lets_exits_through(book, firm):
    account, _, _ = book
    checked(book, qty="0.1")
    killswitch_halt(account=account, actor=firm.owner, reason="director's halt")
    entry = checked(book, qty="0.1")
    assert entry.order is None
    assert entry.decision.codes == (engine.Code.HALTED,)
    exit_ = checked(book, side="sell", qty="0.1", reason="exit")
    assert exit_.decision.verdict == engine.Verdict.ACCEPT
    assert exit_.order.status == OrderStatus.FILLED


def test_a_latched_kill_switch_blocks_entries_but_lets_exits_through(book):
    account, _, _ = book
    checked(book, qty="0.1")
    KillSwitch.objects.create(
        account=account,
        status="tripped",
        tripped_on=timezone.now().date(),
        tripped_at=timezone.now(),
        reason="drawdown 3.1 % from the day's high",
    )
    entry = checked(book, qty="0.1")
    assert entry.order is None
    assert engine.Code.KILL_SWITCH_LATCHED in entry.decision.codes
    assert "drawdown 3.1 %" in events(account, "risk.rejected")[0].details["message"]
    exit_ = checked(book, side="sell", qty="0.1", reason="exit")
    assert exit_.order.status == OrderStatus.FILLED


def test_a_stale_price_rejects_an_entry_but_not_an_exit(book):
    _, _, quotes = book
    checked(book, qty="0.1")
    quotes.set("BTC/USD", fresh("50000", age=timedelta(minutes=10)))
    entry = checked(book, qty="0.1")
    assert entry.order is None
    assert entry.decision.codes == (engine.Code.PRICE_STALE,)
    exit_ = checked(book, side="sell", qty="0.1", reason="exit")
    assert exit_.decision.verdict == engine.Verdict.ACCEPT
    assert exit_.order is not None


def test_a_pair_the_feed_marked_stale_rejects_entries_even_with_a_recent_tick(book):
    _, _, quotes = book
    recent = timezone.now() - timedelta(seconds=5)
    quotes.set("BTC/USD", Quote.from_last(D("50000"), recent, fresh_until=recent))
    entry = checked(book, qty="0.1")
    assert entry.decision.codes == (engine.Code.PRICE_STALE,)


def test_trading_disabled_blocks_entries(book):
    account, _, _ = book
    Account.objects.filter(pk=account.pk).update(trading_enabled=False)
    entry = checked(book, qty="0.1")
    assert entry.decision.codes == (engine.Code.TRADING_DISABLED,)


def test_groups_are_computed_once_per_set_of_candles_and_again_for_a_new_bar(book, settings, monkeypatch):
    from risk import pretrade

    account, btc, quotes = book
    now = timezone.now().replace(minute=0, second=0, microsecond=0)
    eth = Instrument.objects.get(symbol="ETH/USD")

    def bar(instrument, hours_ago, close):
        Candle.objects.create(
            instrument=instrument,
            timeframe=settings.AETHER_TIMEFRAME,
            open_time=now - timedelta(hours=hours_ago),
            open=D(close),
            high=D(close),
            low=D(close),
            close=D(close),
            volume=D("1"),
            source="replay",
        )

    for hours in range(10, 0, -1):
        bar(btc, hours, str(50000 + hours))
        bar(eth, hours, str(3000 + hours))
    calls = []
    real = pretrade.engine.correlated_groups
    monkeypatch.setattr(
        pretrade.engine, "correlated_groups", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    first = risk_snapshot(account=account, instrument=btc, quotes=quotes, now=now).groups
    assert risk_snapshot(account=account, instrument=btc, quotes=quotes, now=now).groups == first
    assert len(calls) == 1
    bar(btc, 0, "50100")  # a new closed bar: computed again
    risk_snapshot(account=account, instrument=btc, quotes=quotes, now=now)
    assert len(calls) == 2


def test_the_order_rate_counts_wall_clock_ages_on_the_replays_clock(book):
    """In a replay the platform clock is days behind the wall clock: orders placed a minute ago (wall
    time) are a minute old on the replay's clock too, and orders from earlier real hours are not recent."""
    account, btc, quotes = book
    checked(book)
    replay_now = timezone.now() - timedelta(days=14)
    snap = risk_snapshot(account=account, instrument=btc, quotes=quotes, now=replay_now)
    (placed,) = snap.recent_orders
    assert timedelta(0) <= replay_now - placed < timedelta(minutes=1)
    Order.objects.filter(account=account).update(created_at=timezone.now() - timedelta(hours=2))
    assert risk_snapshot(account=account, instrument=btc, quotes=quotes, now=replay_now).recent_orders == ()


def test_the_risk_state_holds_the_snapshot_its_positions_and_the_unresolved_orders(book):
    from dataclasses import replace

    from risk.pretrade import risk_state
    from risk.selectors import engine_policy_for
    from risk.services import nav_mark_book

    account, btc, quotes = book
    checked(book, qty="0.1")
    Order.objects.create(
        account=account,
        instrument=btc,
        broker="sim",
        client_order_id="lost-in-flight",
        side="sell",
        order_type="limit",
        quantity=D("0.01"),
        limit_price=D("60000"),
        reserved_amount=D("0.01"),
        status=OrderStatus.UNKNOWN,
        placed_by="system:test",
    )
    now = timezone.now()
    state = risk_state(account=account, instrument=btc, quotes=quotes, now=now)
    position = Position.objects.get(account=account, broker="sim", instrument=btc)
    assert set(state.positions) == {"BTC/USD"}
    assert state.positions["BTC/USD"].quantity == position.quantity
    assert state.unresolved_orders == 1
    # An order of unknown outcome still reserves what it may sell.
    assert state.snapshot.held == {"BTC/USD": position.quantity - D("0.01")}
    # The equity is the book marked now (from the rows the state read), as the NAV service marks it.
    assert (
        state.snapshot.equity == nav_mark_book(account=account, broker="sim", quotes=quotes, now=now).equity
    )

    # The public snapshot is the same; a policy the caller read is used as given. (Recent orders are
    # dated by their wall-clock age, so only their number is compared.)
    def same(snapshot):
        return replace(snapshot, recent_orders=len(snapshot.recent_orders))

    assert same(risk_snapshot(account=account, instrument=btc, quotes=quotes, now=now)) == same(
        state.snapshot
    )
    policy = engine_policy_for(account=account)
    given = risk_state(
        account=Account.objects.get(pk=account.pk),
        instrument=btc,
        quotes=quotes,
        now=now,
        policy=policy,
        account_is_current=True,
    )
    assert same(given.snapshot) == same(state.snapshot)
    Order.objects.filter(client_order_id="lost-in-flight").update(status=OrderStatus.CANCELED)
    assert risk_state(account=account, instrument=btc, quotes=quotes, now=now).unresolved_orders == 0


def test_the_snapshot_reads_the_account_in_a_fixed_number_of_queries(book, django_assert_num_queries):
    account, btc, quotes = book
    checked(book, qty="0.1")
    risk_snapshot(account=account, instrument=btc, quotes=quotes)  # the groups' cache is warm
    # account, policy, universe, positions, live orders, balance, groups' shape, recent orders, switch,
    # fee tier of the pair, and one fee tier per held pair for its mark
    with django_assert_num_queries(11):
        risk_snapshot(account=account, instrument=btc, quotes=quotes)


def test_the_state_read_for_one_pair_serves_another_pair_as_a_full_read_would(book, universe, settings):
    """What the strategy cycle does for an account's second pair on a bar: the first pair's state with the
    second pair's price and fee rates, at the second cycle's clock, equals the state read for it afresh."""
    from dataclasses import replace

    from risk.pretrade import risk_state, risk_state_for_pair
    from risk.selectors import switch_state_for

    account, btc, quotes = book
    eth = universe["ETH/USD"]
    checked(book, qty="0.1")  # a position, a recent order, a fee tier read
    earlier = timezone.now() - timedelta(minutes=10)  # the replay's clock may run ahead of the wall
    now = timezone.now()
    first = risk_state(account=account, instrument=btc, quotes=quotes, now=earlier)
    switch = switch_state_for(account=account)  # as the cycle reads it with the account
    derived = risk_state_for_pair(
        first, account=account, instrument=eth, now=now, switch=switch, quotes=quotes
    )
    fresh_read = risk_state(account=account, instrument=eth, quotes=quotes, now=now)

    def same(state):  # recent orders are dated by their wall-clock age: compared below
        return replace(state.snapshot, recent_orders=len(state.snapshot.recent_orders))

    assert derived is not None
    assert same(derived) == same(fresh_read)
    # The recent order's age on the second cycle's clock: as a fresh read dates it, give or take the wall
    # time between the two reads (not the ten minutes the clock moved).
    (derived_at,), (fresh_at,) = derived.snapshot.recent_orders, fresh_read.snapshot.recent_orders
    assert abs(derived_at - fresh_at) < timedelta(seconds=1)
    assert derived.snapshot.prices["ETH/USD"].price == D("3000")
    assert derived.positions.keys() == fresh_read.positions.keys()
    # A pair outside the symbols the correlated groups were computed over is read afresh.
    settings.AETHER_PAIRS = ["BTC/USD"]
    narrow = risk_state(account=account, instrument=btc, quotes=quotes, now=now)
    assert "ETH/USD" not in narrow.grouped
    assert risk_state_for_pair(narrow, account=account, instrument=eth, now=now, switch=switch) is None
