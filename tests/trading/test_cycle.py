"""The strategy cycle shell: once per (account, pair, bar), never overlapping, resumable without duplicates,
recorded with its reasons, started by closed bars and by beat's sweep."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D

import pandas as pd
import pytest
from django.utils import timezone

from governance.actors import SystemActor
from risk.services import killswitch_halt
from tests.learning.conftest import store
from tests.learning.synthetic import candles
from trading.candles import CandleRow
from trading.matching import Quote
from trading.models import Candle, Cycle, CycleStatus, Instrument, Order, OrderStatus
from trading.quotes import MemoryQuoteSource
from trading.services import cycle as cycle_service
from trading.services import feed_bars_store
from trading.services.cycle import CycleBusy, cycle_run, cycles_due
from trading.services.orders import sim_balance_set
from trading.strategy import Action, Signal

BARS = 400


class AlwaysEnter:
    """A strategy that wants a long on every bar (the test double of the Strategy interface)."""

    name = "test_enter"

    def signal(self, *, market, holding, policy):
        if holding.quantity > 0:
            return Signal(Action.HOLD, self.name, "test: already long")
        return Signal(Action.ENTER, self.name, "test: enter", expected_edge_pct=D("5"))


@pytest.fixture
def bars(universe):
    """BTC/USD and ETH/USD: 400 closed hourly bars ending with the last full hour."""
    end = pd.Timestamp(timezone.now()).floor("h") - pd.Timedelta(hours=1)
    index = pd.date_range(end - pd.Timedelta(hours=BARS - 1), periods=BARS, freq="h", name="open_time")
    store(universe["BTC/USD"], candles(BARS, seed=3, price=50000.0).set_axis(index), forming_after=False)
    store(universe["ETH/USD"], candles(BARS, seed=4, price=2500.0).set_axis(index), forming_after=False)
    last = Candle.objects.filter(instrument=universe["BTC/USD"], timeframe=60).order_by("-open_time").first()
    return {"btc": universe["BTC/USD"], "eth": universe["ETH/USD"], "bar": end.to_pydatetime(), "last": last}


def fresh_quotes(bars) -> MemoryQuoteSource:
    now = timezone.now()
    eth_close = Candle.objects.get(instrument=bars["eth"], timeframe=60, open_time=bars["bar"]).close
    return MemoryQuoteSource(
        {
            "BTC/USD": Quote.from_last(bars["last"].close, now - timedelta(seconds=5)),
            "ETH/USD": Quote.from_last(eth_close, now - timedelta(seconds=5)),
        }
    )


@pytest.fixture
def funded(firm, bars):
    sim_balance_set(
        account=firm.alice_account, asset="USD", amount=D("100000"), actor=firm.owner, reason="funding"
    )
    return firm.alice_account


FINISHED = (CycleStatus.DONE, CycleStatus.SKIPPED)


def run(account, bars, instrument=None, **kwargs) -> Cycle:
    kwargs.setdefault("quotes", fresh_quotes(bars))
    return cycle_run(
        account=account, instrument=instrument or bars["btc"], bar_open_time=bars["bar"], **kwargs
    )


def test_without_a_champion_the_rule_strategy_decides_and_the_cycle_says_so(funded, bars):
    cycle = run(funded, bars)
    assert cycle.status in (CycleStatus.DONE, CycleStatus.SKIPPED)
    assert cycle.strategy == "rule_trend"
    assert cycle.signal in {"enter", "exit", "hold"}
    decision = next(item for item in cycle.decisions if item["kind"] == "decision")
    assert "no champion model" in decision["model"]
    assert any("no champion" in note or "rule" in note for note in decision["notes"])
    nav = next(item for item in cycle.decisions if item["kind"] == "nav")
    assert D(nav["equity"]) > 0
    assert cycle.duration_ms is not None
    assert cycle.finished_at is not None


def test_an_entry_goes_through_risk_to_a_fill_and_a_retry_does_nothing_twice(funded, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    cycle = run(funded, bars)
    assert (cycle.status, cycle.strategy, cycle.signal) == (CycleStatus.DONE, "test_enter", "enter")
    order = Order.objects.get(account=funded)
    assert order.client_order_id == f"cy{cycle.pk}-0"
    assert (order.side, order.status, order.broker) == ("buy", OrderStatus.FILLED, "sim")
    assert f"cycle #{cycle.pk}" in order.reason
    record = next(item for item in cycle.decisions if item["kind"] == "order")
    assert (record["order_id"], record["verdict"]) == (order.pk, "accept")
    # The same task again (a redelivery): the finished cycle is returned, nothing is placed again.
    again = run(funded, bars)
    assert (again.pk, again.attempts) == (cycle.pk, 1)
    assert Order.objects.filter(account=funded).count() == 1
    # Buying power was capped by the hedge: the cycle recorded the target it used.
    decision = next(item for item in cycle.decisions if item["kind"] == "decision")
    assert 0 <= D(decision["hedge_target"]) <= 1


def test_a_cycle_resumed_after_its_worker_died_finds_the_order_it_already_placed(funded, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    cycle = run(funded, bars)
    # The worker "died" after placing the order and before finishing: the row is still running, lease lapsed.
    Cycle.objects.filter(pk=cycle.pk).update(
        status=CycleStatus.RUNNING, lease_until=timezone.now() - timedelta(seconds=1), finished_at=None
    )
    resumed = run(funded, bars)
    assert resumed.pk == cycle.pk
    assert (resumed.status, resumed.attempts) == (CycleStatus.DONE, 2)
    assert Order.objects.filter(account=funded).count() == 1  # found by its client id, not placed again


def running_elsewhere(account, instrument, bar_open_time) -> Cycle:
    """A cycle of ``account`` that another worker is running: its lease live for five more minutes."""
    now = timezone.now()
    return Cycle.objects.create(
        account=account,
        instrument=instrument,
        timeframe=60,
        bar_open_time=bar_open_time,
        broker="sim",
        started_at=now,
        lease_until=now + timedelta(minutes=5),
    )


def test_cycles_of_one_account_never_overlap_but_other_accounts_run(funded, firm, bars):
    running_elsewhere(funded, bars["eth"], bars["bar"])
    with pytest.raises(CycleBusy, match="holds the lease"):
        run(funded, bars)
    assert not Cycle.objects.filter(account=funded, instrument=bars["btc"]).exists()
    other = run(firm.bob_account, bars)
    assert other.status in (CycleStatus.DONE, CycleStatus.SKIPPED)


def test_a_halted_account_is_skipped_with_the_reason_and_places_no_entry(funded, firm, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    killswitch_halt(account=funded, actor=firm.owner, reason="news")
    cycle = run(funded, bars)
    assert cycle.status == CycleStatus.SKIPPED
    assert "halt" in cycle.reason.lower()
    assert not Order.objects.filter(account=funded).exists()


def test_unresolved_orders_block_new_entries_until_reconciliation(funded, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    Order.objects.create(
        account=funded,
        instrument=bars["btc"],
        broker="sim",
        client_order_id="lost-in-flight",
        side="buy",
        order_type="market",
        quantity=D("0.001"),
        status=OrderStatus.UNKNOWN,
        placed_by="system:test",
    )
    cycle = run(funded, bars)
    assert cycle.status == CycleStatus.SKIPPED
    assert "unknown outcome" in cycle.reason
    assert Order.objects.filter(account=funded).count() == 1


def test_a_missing_bar_fails_the_cycle_loudly_and_a_retry_may_run_it(funded, bars):
    with pytest.raises(cycle_service.CycleError, match="no closed 60m bar"):
        cycle_run(
            account=funded,
            instrument=bars["btc"],
            bar_open_time=bars["bar"] + timedelta(hours=5),
            quotes=fresh_quotes(bars),
        )
    failed = Cycle.objects.get(account=funded)
    assert failed.status == CycleStatus.FAILED
    assert "no closed 60m bar" in failed.error


def test_a_stored_closed_bar_queues_the_fan_out_and_the_fan_out_queues_every_account(
    firm, bars, celery_sent, django_capture_on_commit_callbacks, settings
):
    from trading import tasks

    opened = bars["bar"] + timedelta(hours=1)
    row = CandleRow(opened, D("1"), D("2"), D("1"), D("2"), D("3"), None, True)
    with django_capture_on_commit_callbacks(execute=True):
        feed_bars_store(instrument=bars["btc"], timeframe=60, rows=[row], source=Candle.Source.REPLAY)
    assert [(name, args) for name, args, _ in celery_sent] == [
        ("trading.bar_closed", (bars["btc"].pk, opened.isoformat()))
    ]
    celery_sent.clear()
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    assert tasks.bar_closed(bars["btc"].pk, opened.isoformat()) == 3
    # One task per account for the bar's open time: it runs every pair whose bar is closed. ETH's bar of
    # that hour is not stored yet: the tasks wait CYCLE_PAIRS_WAIT_SECONDS in case it never comes.
    expected = sorted(
        (account.pk, opened.isoformat()) for account in (firm.company, firm.alice_account, firm.bob_account)
    )
    assert sorted(args for name, args, _ in celery_sent if name == "trading.account_cycles") == expected
    assert {options["countdown"] for _, _, options in celery_sent} == {settings.CYCLE_PAIRS_WAIT_SECONDS}
    assert len(celery_sent) == 3
    # ETH's bar arrives: the last pair's bar queues the tasks at once.
    celery_sent.clear()
    with django_capture_on_commit_callbacks(execute=True):
        feed_bars_store(instrument=bars["eth"], timeframe=60, rows=[row], source=Candle.Source.REPLAY)
    celery_sent.clear()
    assert tasks.bar_closed(bars["eth"].pk, opened.isoformat()) == 3
    assert sorted(args for name, args, _ in celery_sent if name == "trading.account_cycles") == expected
    assert {options["countdown"] for _, _, options in celery_sent} == {None}
    # BTC's fan-out running only now (both bars stored, ETH's written last) queues nothing more.
    celery_sent.clear()
    assert tasks.bar_closed(bars["btc"].pk, opened.isoformat()) == 0
    assert celery_sent == []


def test_a_forming_bar_queues_nothing(bars, celery_sent, django_capture_on_commit_callbacks):
    opened = bars["bar"] + timedelta(hours=1)
    row = CandleRow(opened, D("1"), D("2"), D("1"), D("2"), D("3"), None, False)
    with django_capture_on_commit_callbacks(execute=True):
        feed_bars_store(instrument=bars["btc"], timeframe=60, rows=[row], source=Candle.Source.REPLAY)
    assert celery_sent == []


def test_the_sweep_queues_only_the_newest_bar_without_a_finished_cycle(funded, firm, bars, settings):
    settings.AETHER_PAIRS = ["BTC/USD"]
    due = cycles_due()
    assert {(account, bar) for account, _, bar in due} == {
        (firm.company.pk, bars["bar"]),
        (firm.alice_account.pk, bars["bar"]),
        (firm.bob_account.pk, bars["bar"]),
    }
    run(funded, bars)
    assert firm.alice_account.pk not in {account for account, _, _ in cycles_due()}


def test_the_cycle_task_retries_a_busy_account(funded, bars, monkeypatch):
    from celery.exceptions import Retry

    from trading import tasks

    def busy(**kwargs):
        raise CycleBusy("alice: cycle #1 holds the lease")

    monkeypatch.setattr(cycle_service, "cycle_run", busy)
    with pytest.raises(Retry):
        tasks.cycle_run.apply(args=(funded.pk, bars["btc"].pk, bars["bar"].isoformat()), throw=True).get()


def test_the_cycle_admin_is_account_scoped(funded, firm, bars, client):
    cycle = run(funded, bars)
    other = run(firm.bob_account, bars)
    client.force_login(firm.viewer)  # a viewer of alice's account only
    listing = client.get("/admin/trading/cycle/")
    assert listing.status_code == 200
    assert f"/admin/trading/cycle/{cycle.pk}/change/" in listing.content.decode()
    assert f"/admin/trading/cycle/{other.pk}/change/" not in listing.content.decode()
    assert client.get(f"/admin/trading/cycle/{other.pk}/change/").status_code == 404
    page = client.get(f"/admin/trading/cycle/{cycle.pk}/change/")
    assert page.status_code == 200
    assert "decisions" in page.content.decode()


def test_the_web_metrics_show_what_workers_did_per_account(funded, firm, bars, client, monkeypatch, settings):
    settings.METRICS_TOKEN = ""
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    run(funded, bars)
    Order.objects.create(
        account=firm.bob_account,
        instrument=bars["btc"],
        broker="sim",
        client_order_id="lost-in-flight",
        side="buy",
        order_type="market",
        quantity=D("0.001"),
        status=OrderStatus.UNKNOWN,
        placed_by="system:test",
    )
    text = client.get("/metrics").content.decode()
    assert 'aether_account_equity_usd{account="alice"}' in text
    assert 'aether_cycle_last_duration_seconds{account="alice"}' in text
    assert 'aether_cycle_decision_to_order_seconds{account="alice"}' in text
    assert 'aether_cycles_recent{account="alice",status="done"} 1.0' in text
    assert 'aether_orders_unknown{account="bob"} 1.0' in text
    assert 'aether_orders_unknown{account="alice"} 0.0' in text
    assert 'aether_kill_switch_state{account="alice",status="armed"} 1.0' in text
    assert 'aether_hedge_target_ratio_pct{account="alice"}' in text


class AlwaysHold:
    """A strategy that never trades (the test double of the Strategy interface)."""

    name = "test_hold"

    def signal(self, *, market, holding, policy):
        return Signal(Action.HOLD, self.name, "test: hold")


@pytest.fixture
def hedge_calls(monkeypatch):
    """The accounts whose hedge was evaluated, in order (the real evaluation runs)."""
    from hedging import services as hedging_services

    calls = []
    evaluate = hedging_services.hedge_evaluate

    def spy(**kwargs):
        calls.append(kwargs["account"].pk)
        return evaluate(**kwargs)

    monkeypatch.setattr(hedging_services, "hedge_evaluate", spy)
    return calls


def hedge_record(cycle) -> dict:
    return next(item for item in cycle.decisions if item["kind"] == "hedge")


def test_the_hedge_is_evaluated_once_per_account_and_bar_when_no_cycle_trades(
    funded, firm, bars, monkeypatch, hedge_calls
):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    first = run(funded, bars)
    assert hedge_calls == [funded.pk]
    assert "evaluated_by" not in hedge_record(first)
    second = run(funded, bars, instrument=bars["eth"])
    assert hedge_calls == [funded.pk]  # not again: nothing the hedge reads changed since the first cycle
    assert hedge_record(second)["evaluated_by"] == first.pk
    assert f"cycle #{first.pk}" in hedge_record(second)["summary"]
    assert second.status == CycleStatus.DONE
    # Another account's first cycle on the same bar evaluates its own hedge.
    run(firm.bob_account, bars, instrument=bars["eth"])
    assert hedge_calls == [funded.pk, firm.bob_account.pk]


def test_a_cycle_that_places_an_order_evaluates_the_hedge_again(funded, bars, monkeypatch, hedge_calls):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    run(funded, bars)
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    traded = run(funded, bars, instrument=bars["eth"])
    assert Order.objects.filter(account=funded, instrument=bars["eth"]).exists()
    assert hedge_calls == [funded.pk, funded.pk]
    assert "evaluated_by" not in hedge_record(traded)


def test_the_hedge_is_evaluated_when_the_previous_cycle_of_the_bar_did_not_evaluate_it(
    funded, bars, monkeypatch, hedge_calls
):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    now = timezone.now()
    for status, decisions in [
        (CycleStatus.FAILED, []),  # a failed cycle may have stopped before its hedge
        (CycleStatus.DONE, [{"kind": "hedge", "problem": "no fresh price for a holding"}]),
    ]:
        Cycle.objects.filter(account=funded).delete()
        Cycle.objects.create(
            account=funded,
            instrument=bars["eth"],
            timeframe=60,
            bar_open_time=bars["bar"],
            broker="sim",
            status=status,
            decisions=decisions,
            started_at=now - timedelta(seconds=2),
            lease_until=now - timedelta(seconds=1),
            finished_at=now - timedelta(seconds=1),
        )
        hedge_calls.clear()
        cycle = run(funded, bars)
        assert hedge_calls == [funded.pk], status
        assert "evaluated_by" not in hedge_record(cycle)


def nav_record(cycle) -> dict:
    return next(item for item in cycle.decisions if item["kind"] == "nav")


def cycle_snapshots(account) -> int:
    from risk.models import NavSnapshot

    return NavSnapshot.objects.filter(account=account, reason="cycle").count()


def test_the_nav_is_recorded_once_per_account_and_bar_when_no_cycle_trades(funded, firm, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    first = run(funded, bars)
    assert cycle_snapshots(funded) == 1
    assert D(nav_record(first)["equity"]) > 0
    second = run(funded, bars, instrument=bars["eth"])
    assert cycle_snapshots(funded) == 1  # not again: the book did not change since the first cycle's
    assert nav_record(second)["recorded_by"] == first.pk
    assert f"cycle #{first.pk}" in nav_record(second)["summary"]
    assert second.status == CycleStatus.DONE
    # Another account's first cycle on the same bar records its own.
    run(firm.bob_account, bars, instrument=bars["eth"])
    assert cycle_snapshots(firm.bob_account) == 1
    # The next bar's first cycle records again.
    previous = bars["bar"] - timedelta(hours=1)
    Cycle.objects.filter(account=funded).update(bar_open_time=previous)  # the bar above was the one before
    third = run(funded, bars)
    assert cycle_snapshots(funded) == 2
    assert "equity" in nav_record(third)


def test_a_cycle_that_places_an_order_records_the_nav_again(funded, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    run(funded, bars)
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    traded = run(funded, bars, instrument=bars["eth"])
    assert Order.objects.filter(account=funded, instrument=bars["eth"]).exists()
    assert cycle_snapshots(funded) == 2
    assert "recorded_by" not in nav_record(traded)
    # The kill switch saw the equity after the fill (the cycle's snapshot is marked after its orders).
    from risk.models import NavSnapshot

    latest = NavSnapshot.objects.filter(account=funded, reason="cycle").order_by("-taken_at", "-id").first()
    assert latest.positions_value > 0
    # A cycle relying on the traded one names it.
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    Cycle.objects.filter(account=funded, instrument=bars["btc"]).delete()
    after = run(funded, bars)
    assert nav_record(after)["recorded_by"] == traded.pk
    assert cycle_snapshots(funded) == 2


def test_the_nav_is_recorded_when_the_previous_cycle_of_the_bar_did_not_record_it(funded, bars, monkeypatch):
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    now = timezone.now()
    for status, decisions in [
        (CycleStatus.FAILED, []),  # a failed cycle may have stopped before its snapshot
        (CycleStatus.DONE, [{"kind": "nav", "problem": "BTC/USD: the last price is stale"}]),
        (CycleStatus.DONE, [{"kind": "hedge", "summary": "target 10 %"}]),  # no NAV record at all
    ]:
        Cycle.objects.filter(account=funded).delete()
        Cycle.objects.create(
            account=funded,
            instrument=bars["eth"],
            timeframe=60,
            bar_open_time=bars["bar"],
            broker="sim",
            status=status,
            decisions=decisions,
            started_at=now - timedelta(seconds=2),
            lease_until=now - timedelta(seconds=1),
            finished_at=now - timedelta(seconds=1),
        )
        before = cycle_snapshots(funded)
        cycle = run(funded, bars)
        assert cycle_snapshots(funded) == before + 1, (status, decisions)
        assert "equity" in nav_record(cycle)


def test_a_cycle_that_relies_on_the_bars_hedge_and_nav_reads_a_bounded_number_of_rows(
    funded, firm, bars, monkeypatch, django_assert_max_num_queries
):
    """What a no-trade cycle after the account's first on the bar costs in statements: the claim (3, in a
    savepoint here), the bar, the account with its policies, switch and thresholds (one read), exits, the
    champion, the risk state (9, with the quote), the hedge target, the look at the bar's previous cycle
    and the finish. The pair's market inputs are computed once per bar for every account."""
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    run(funded, bars)
    run(firm.bob_account, bars, instrument=bars["eth"])  # the bar's ETH inputs, as another account's cycle
    with django_assert_max_num_queries(20):
        second = run(funded, bars, instrument=bars["eth"])
    assert "recorded_by" in nav_record(second)
    assert "evaluated_by" in hedge_record(second)


def test_a_matching_failure_does_not_cost_the_bar_its_cycles(
    funded, bars, celery_sent, monkeypatch, settings
):
    from trading import tasks
    from trading.services import orders

    def broken(**kwargs):
        raise RuntimeError("matching failed (test)")

    monkeypatch.setattr(orders, "sim_orders_match_bar", broken)
    with pytest.raises(RuntimeError, match="matching failed"):
        tasks.bar_closed(bars["btc"].pk, bars["bar"].isoformat())
    assert len([name for name, _, _ in celery_sent if name == "trading.account_cycles"]) == 3
    # A pair whose fan-out leaves the queuing to the pair written last still raises its matching error.
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    celery_sent.clear()
    with pytest.raises(RuntimeError, match="matching failed"):
        tasks.bar_closed(bars["btc"].pk, bars["bar"].isoformat())
    assert celery_sent == []


def test_transient_retries_are_capped_apart_from_waiting_for_a_lease(funded, bars, monkeypatch):
    from celery.exceptions import Retry
    from django.db import OperationalError

    from trading import tasks

    def down(**kwargs):
        raise OperationalError("database restarting (test)")

    monkeypatch.setattr(cycle_service, "cycle_run", down)
    args = (funded.pk, bars["btc"].pk, bars["bar"].isoformat())
    with pytest.raises(Retry):
        tasks.cycle_run.apply(args=args, headers={"aether_transient_retries": 2}, throw=True).get()
    with pytest.raises(OperationalError):
        tasks.cycle_run.apply(args=args, headers={"aether_transient_retries": 3}, throw=True).get()


def test_a_broker_that_refuses_the_fan_out_is_logged_not_raised(bars, monkeypatch, caplog):
    from trading import tasks
    from trading.services.market import _queue_bar_closed

    def refused(*args, **kwargs):
        raise ConnectionError("broker down (test)")

    monkeypatch.setattr(tasks.bar_closed, "delay", refused)
    _queue_bar_closed(bars["btc"].pk, bars["bar"])()
    assert "could not queue trading.bar_closed" in caplog.text


def test_a_resumed_cycle_never_sends_what_it_decided_again_when_its_first_attempt_placed_orders(
    funded, bars, monkeypatch
):
    """The first attempt placed cy<pk>-0 and died; the book changed meanwhile, so the resumed attempt may
    decide something else. Its ids are taken: it sends nothing and says so."""
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    cycle = run(funded, bars)
    order = Order.objects.get(account=funded)
    # The position is sold by hand (the director), and the worker had "died" before finishing.
    from trading.services.orders import order_submit

    order_submit(
        account=funded,
        actor=SystemActor("test_director"),
        instrument=bars["btc"],
        side="sell",
        order_type="market",
        quantity=order.filled_quantity,
        quotes=fresh_quotes(bars),
    )
    Cycle.objects.filter(pk=cycle.pk).update(
        status=CycleStatus.RUNNING, lease_until=timezone.now() - timedelta(seconds=1), finished_at=None
    )
    resumed = run(funded, bars)
    assert Order.objects.filter(account=funded).count() == 2  # the first buy and the director's sell
    resumed_record = next(item for item in resumed.decisions if item["kind"] == "resumed")
    assert resumed_record["orders"][0]["client_order_id"] == f"cy{cycle.pk}-0"
    assert "not sent" in resumed_record["summary"]


def test_a_hedge_that_cannot_be_evaluated_is_a_problem_on_the_cycle_and_the_nav_is_still_recorded(
    funded, bars, monkeypatch
):
    from hedging import services as hedging_services

    def unavailable(**kwargs):
        raise hedging_services.HedgeUnavailable("no volatility inputs for SOL/USD (test)")

    monkeypatch.setattr(hedging_services, "hedge_evaluate", unavailable)
    cycle = run(funded, bars)
    assert cycle.status in (CycleStatus.DONE, CycleStatus.SKIPPED)
    hedge = next(item for item in cycle.decisions if item["kind"] == "hedge")
    assert "no volatility inputs" in hedge["problem"]
    nav = next(item for item in cycle.decisions if item["kind"] == "nav")
    assert D(nav["equity"]) > 0


# ----------------------------------------------------------------------------------------------------------
# One account's pairs on one bar, in one task
# ----------------------------------------------------------------------------------------------------------


def run_account(account, bars, **kwargs) -> list[Cycle]:
    return cycle_service.account_cycles_run(
        account=account, bar_open_time=bars["bar"], quotes=fresh_quotes(bars), **kwargs
    )


def comparable(cycle: Cycle) -> list[dict]:
    """A cycle's records without what differs between two runs of the same decision (ids, timings)."""
    drop = {"order_id", "client_order_id", "decision_to_order_ms", "evaluated_by", "recorded_by", "summary"}
    return [{key: value for key, value in item.items() if key not in drop} for item in cycle.decisions]


def test_an_accounts_cycles_run_every_pair_with_a_closed_bar_and_decide_as_separate_cycles_would(
    funded, firm, bars, settings
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    sim_balance_set(
        account=firm.bob_account, asset="USD", amount=D("100000"), actor=SystemActor("test"), reason="funding"
    )
    together = run_account(funded, bars)
    assert [cycle.instrument.symbol for cycle in together] == ["BTC/USD", "ETH/USD"]
    apart = [run(firm.bob_account, bars), run(firm.bob_account, bars, instrument=bars["eth"])]
    for mine, theirs in zip(together, apart, strict=True):
        assert (mine.status, mine.strategy, mine.signal, mine.reason) == (
            theirs.status,
            theirs.strategy,
            theirs.signal,
            theirs.reason,
        )
        assert comparable(mine) == comparable(theirs)
    # The hedge and the NAV snapshot once per account and bar, by the first cycle.
    first, second = together
    assert hedge_record(first)["summary"].startswith("target ")  # the evaluation's summary for the admin
    assert hedge_record(second)["evaluated_by"] == first.pk
    assert nav_record(second)["recorded_by"] == first.pk
    # A redelivered task does nothing twice.
    again = run_account(funded, bars)
    assert [(cycle.pk, cycle.attempts) for cycle in again] == [(cycle.pk, 1) for cycle in together]


def test_the_second_pair_reuses_the_accounts_reads_while_nothing_traded(
    funded, firm, bars, settings, monkeypatch, django_assert_max_num_queries
):
    """The state the first pair read (the risk state, the bar's earlier cycles, the bar's candles) serves
    the second: its cycle costs the claim (3, in a savepoint here), the account (read again after the NAV
    snapshot, which feeds the kill switch), exits, the champion, the fee rates, the hedge target and the
    finish; 20 when it read everything itself (the test above)."""
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    run(firm.bob_account, bars, instrument=bars["eth"])  # the bar's ETH inputs, as another account's cycle
    context = cycle_service.AccountBar(
        candles={
            candle.instrument_id: candle
            for candle in Candle.objects.filter(open_time=bars["bar"], timeframe=60, closed=True)
        }
    )
    run(funded, bars, context=context)
    assert context.state is not None
    assert context.nav_by is not None
    quotes = fresh_quotes(bars)
    with django_assert_max_num_queries(12):
        second = run(funded, bars, instrument=bars["eth"], context=context, quotes=quotes)
    assert "recorded_by" in nav_record(second)
    assert "evaluated_by" in hedge_record(second)


def test_the_account_is_read_again_only_when_the_hedge_evaluation_met_another_hedge_policy(
    funded, firm, bars, settings, monkeypatch
):
    """An account's first evaluation creates its hedge policy (the core's defaults), one that ends a lapsed
    manual override writes it, and a director may change it after the account was read: each time the
    next pair reads the account, with that policy, again. An evaluation that meets and leaves the policy
    as it was read does not make it read again."""
    from hedging.models import HedgePolicy
    from hedging.services import hedge_policy_for

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    for account in (firm.bob_account, firm.company):
        sim_balance_set(
            account=account, asset="USD", amount=D("100000"), actor=firm.director, reason="funding"
        )

    def evaluated(account) -> cycle_service.AccountBar:
        context = cycle_service.AccountBar()
        cycle = run(account, bars, context=context)
        assert hedge_record(cycle)["summary"].startswith("target ")  # evaluated by this cycle
        return context

    # No policy yet: created by the evaluation.
    assert not HedgePolicy.objects.filter(account=funded).exists()
    context = evaluated(funded)
    assert HedgePolicy.objects.filter(account=funded).exists()
    assert context.account is None

    # A policy that the evaluation leaves as it was.
    policy = hedge_policy_for(account=firm.bob_account)
    context = evaluated(firm.bob_account)
    assert context.account is not None
    assert context.account.hedge_policy.pk == policy.pk
    assert HedgePolicy.objects.get(pk=policy.pk).mode == "auto"

    # A director's override set after the account was read, before the evaluation: read again.
    context = cycle_service.AccountBar()
    original = cycle_service._hedge

    def override_first(**kwargs):
        HedgePolicy.objects.filter(pk=policy.pk).update(
            mode="manual", manual_target_pct=D("90"), manual_reason="director (test)"
        )
        return original(**kwargs)

    Cycle.objects.filter(account=firm.bob_account).delete()
    with monkeypatch.context() as patched:
        patched.setattr(cycle_service, "_hedge", override_first)
        cycle = run(firm.bob_account, bars, context=context)
    assert "90" in hedge_record(cycle)["summary"]
    assert context.account is None

    # A manual override that lapsed an hour ago: ended by the evaluation.
    lapsed = hedge_policy_for(account=firm.company)
    HedgePolicy.objects.filter(pk=lapsed.pk).update(
        mode="manual",
        manual_target_pct=D("40"),
        manual_expires_at=timezone.now() - timedelta(hours=1),
        manual_reason="test",
    )
    context = evaluated(firm.company)
    assert HedgePolicy.objects.get(pk=lapsed.pk).mode == "auto"
    assert context.account is None


def test_after_an_entry_the_next_pair_reads_the_moved_book(funded, bars, settings, monkeypatch):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    btc, eth = run_account(funded, bars)
    assert Order.objects.filter(account=funded, status=OrderStatus.FILLED).count() == 2
    spent = Order.objects.get(account=funded, instrument=bars["btc"])
    buying_power = [
        D(next(item for item in cycle.decisions if item["kind"] == "decision")["buying_power"])
        for cycle in (btc, eth)
    ]
    # ETH was sized on the USD left after the BTC fill, not on the balance before it.
    assert buying_power[1] < buying_power[0]
    assert buying_power[0] - buying_power[1] >= spent.filled_quantity * spent.average_fill_price * D("0.5")
    # Each cycle that traded evaluated the hedge and recorded the NAV itself.
    for cycle in (btc, eth):
        assert "evaluated_by" not in hedge_record(cycle)
        assert "equity" in nav_record(cycle)


def test_a_kill_switch_tripped_by_the_first_pairs_snapshot_stops_the_next_pairs_entry(
    funded, bars, settings, monkeypatch
):
    from datetime import date

    from risk import services as risk_services
    from risk.models import KillSwitch

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    record = risk_services.nav_snapshot_record

    def snapshot_that_trips(**kwargs):
        """The snapshot, and the trip it records when the day's drawdown reaches the limit."""
        nav = record(**kwargs)
        KillSwitch.objects.filter(account=kwargs["account"]).update(
            status="tripped", tripped_on=date.today(), reason="daily drawdown 3.1 % >= 3 % (test)"
        )
        nav.kill_switch_status = "tripped"
        return nav

    monkeypatch.setattr(risk_services, "nav_snapshot_record", snapshot_that_trips)
    btc, eth = run_account(funded, bars)
    assert btc.signal == "enter"
    assert Order.objects.filter(account=funded, instrument=bars["btc"]).exists()
    assert eth.status == CycleStatus.SKIPPED
    assert "latched" in eth.reason.lower() or "kill switch" in eth.reason.lower()
    assert not Order.objects.filter(account=funded, instrument=bars["eth"]).exists()


def test_a_halt_between_two_pairs_is_enforced_when_the_entry_is_checked(
    funded, firm, bars, settings, monkeypatch
):
    """A halt a director sets between two pairs of a batch stops the second pair's entry: its cycle reads
    the account afresh when the first pair's hedge evaluation wrote the hedge policy (here, its first), and
    where the account is shared, the entry is checked again on fresh state before anything is recorded."""
    from risk import services as risk_services

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysEnter())
    record = risk_services.nav_snapshot_record

    def snapshot_then_halt(**kwargs):
        nav = record(**kwargs)
        killswitch_halt(account=kwargs["account"], actor=firm.owner, reason="news (test)")
        return nav

    monkeypatch.setattr(risk_services, "nav_snapshot_record", snapshot_then_halt)
    _, eth = run_account(funded, bars)
    assert Order.objects.get(account=funded, instrument=bars["btc"]).status == OrderStatus.FILLED
    assert not Order.objects.filter(account=funded, instrument=bars["eth"]).exists()
    refused = [item for item in eth.decisions if item["kind"] == "order"]
    if refused:  # decided on a shared account: refused by the check on fresh state
        assert (refused[0]["verdict"], refused[0]["codes"]) == ("reject", ["halted"])
    else:  # decided on a fresh read of the account: skipped
        assert eth.status == CycleStatus.SKIPPED
        assert "news (test)" in eth.reason


def test_a_pair_finished_by_another_task_makes_the_next_pair_read_afresh(funded, bars, settings, monkeypatch):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD", "SOL/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    context = cycle_service.AccountBar()
    run(funded, bars, context=context)
    assert context.state is not None
    run(funded, bars, context=context)  # BTC again: finished already (as by another task)
    assert context.state is None
    assert context.account is None
    assert not context.looked_back


def test_a_configured_pair_missing_from_the_universe_does_not_stop_the_others(funded, bars, settings, caplog):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD", "NOPE/USD"]
    cycles = run_account(funded, bars)
    assert [cycle.instrument.symbol for cycle in cycles] == ["BTC/USD", "ETH/USD"]
    assert "NOPE/USD not in the synced universe" in caplog.text


def test_the_account_task_claims_its_pairs_together_and_each_renews_its_lease_on_its_turn(
    funded, bars, settings, monkeypatch, django_assert_max_num_queries
):
    """One claim for the account's pairs; each pair's lease is a whole lease from the start of its turn
    (so a dead worker's cycles lapse within one lease), and its start is its turn's."""
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    btc, eth = run_account(funded, bars)
    lease = timedelta(seconds=settings.CYCLE_LEASE_SECONDS)
    stored = {c.instrument_id: c for c in Cycle.objects.filter(pk__in=[btc.pk, eth.pk])}
    btc, eth = stored[bars["btc"].pk], stored[bars["eth"].pk]
    assert btc.lease_until - btc.started_at == lease
    assert eth.lease_until - eth.started_at == lease
    assert btc.started_at <= btc.finished_at <= eth.started_at <= eth.finished_at
    assert {(c.attempts, c.status) for c in stored.values()} <= {(1, "done"), (1, "skipped")}
    # The claim of both pairs costs what the claim of one does: the lock, the read and one INSERT.
    Cycle.objects.filter(pk__in=[btc.pk, eth.pk]).delete()
    with django_assert_max_num_queries(3 + 2):  # and the savepoint of the test's transaction
        claimed = cycle_service._claim_pairs(
            account=funded,
            instruments=[bars["btc"], bars["eth"]],
            timeframe=60,
            bar_open_time=bars["bar"],
            now=timezone.now(),
        )
    assert [(cycle.instrument_id, run, cycle.pk is not None) for cycle, run in claimed] == [
        (bars["btc"].pk, True, True),
        (bars["eth"].pk, True, True),
    ]


def test_a_finished_bar_is_returned_as_it_is_while_another_cycle_of_the_account_runs(
    funded, bars, settings, monkeypatch
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    done = run_account(funded, bars)
    running_elsewhere(funded, bars["btc"], bars["bar"] + timedelta(hours=1))  # the next bar's
    assert [c.pk for c in run_account(funded, bars)] == [c.pk for c in done]
    assert run(funded, bars).pk == done[0].pk


def slow_first_pair(monkeypatch, bars, meanwhile):
    """Run ``meanwhile()`` while the BTC cycle runs (as if it took long); record the pairs this task ran."""
    execute = cycle_service._cycle_execute
    ran = []

    def run_and_wait(cycle, **kwargs):
        ran.append(kwargs["instrument"].symbol)
        if kwargs["instrument"] == bars["btc"]:
            meanwhile()
        return execute(cycle, **kwargs)

    monkeypatch.setattr(cycle_service, "_cycle_execute", run_and_wait)
    return ran


def test_a_pair_another_worker_resumed_while_earlier_pairs_ran_is_left_to_it(
    funded, bars, settings, monkeypatch
):
    """ETH's lease lapsed while BTC ran, and another worker resumed ETH: the account task does not run it
    (the claim it falls back to meets that worker's lease) and a retry finds it as that worker leaves it."""
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    ran = slow_first_pair(
        monkeypatch,
        bars,
        lambda: Cycle.objects.filter(account=funded, instrument=bars["eth"]).update(
            attempts=2, lease_until=timezone.now() + timedelta(minutes=5)
        ),
    )
    with pytest.raises(CycleBusy, match="is running in another worker"):
        run_account(funded, bars)
    assert ran == ["BTC/USD"]
    assert Cycle.objects.get(account=funded, instrument=bars["btc"]).status in FINISHED
    eth = Cycle.objects.get(account=funded, instrument=bars["eth"])
    assert (eth.status, eth.attempts) == (CycleStatus.RUNNING, 2)  # the other worker's, untouched


def test_a_pair_whose_lease_lapsed_is_claimed_again_and_never_runs_beside_another_workers_cycle(
    funded, bars, settings, monkeypatch
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    lapsed = timezone.now() - timedelta(seconds=1)

    # Nobody claimed meanwhile: ETH is claimed again (a second attempt) and runs.
    ran = slow_first_pair(
        monkeypatch,
        bars,
        lambda: Cycle.objects.filter(account=funded, instrument=bars["eth"]).update(lease_until=lapsed),
    )
    _, eth = run_account(funded, bars)
    assert ran == ["BTC/USD", "ETH/USD"]
    assert (eth.attempts, eth.status in FINISHED) == (2, True)

    # The next bar's task claimed in the account meanwhile: ETH does not run beside it.
    Cycle.objects.filter(account=funded).delete()

    def next_bar_claimed():
        Cycle.objects.filter(account=funded, instrument=bars["eth"]).update(lease_until=lapsed)
        running_elsewhere(funded, bars["btc"], bars["bar"] + timedelta(hours=1))

    ran = slow_first_pair(monkeypatch, bars, next_bar_claimed)
    with pytest.raises(CycleBusy, match="holds the lease"):
        run_account(funded, bars)
    assert ran == ["BTC/USD"]
    eth = Cycle.objects.get(account=funded, instrument=bars["eth"], bar_open_time=bars["bar"])
    assert (eth.status, eth.attempts) == (CycleStatus.RUNNING, 1)  # a retry resumes it


def test_a_task_stopped_by_an_error_between_pairs_releases_the_pairs_it_had_not_started(
    funded, bars, settings, monkeypatch
):
    from django.db import OperationalError

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD", "SOL/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    sol = Instrument.objects.get(symbol="SOL/USD")
    source = Candle.objects.get(instrument=bars["eth"], timeframe=60, open_time=bars["bar"])
    source.pk, source.instrument = None, sol
    source.save()

    def database_gone(cycle, **kwargs):
        raise OperationalError("server closed the connection unexpectedly (test)")

    monkeypatch.setattr(cycle_service, "_take_turn", database_gone)
    with pytest.raises(OperationalError):
        run_account(funded, bars)
    rows = {c.instrument.symbol: c for c in Cycle.objects.filter(account=funded)}
    assert rows["BTC/USD"].status in FINISHED
    now = timezone.now()
    assert rows["ETH/USD"].status == rows["SOL/USD"].status == CycleStatus.RUNNING
    assert rows["SOL/USD"].lease_until <= now  # released: a retry need not wait for it
    # ETH (whose turn failed) keeps its lease until it lapses; once it has, a retry runs what is left.
    Cycle.objects.filter(pk=rows["ETH/USD"].pk).update(lease_until=now - timedelta(seconds=1))
    monkeypatch.undo()
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD", "SOL/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    retried = run_account(funded, bars)
    assert [c.status in FINISHED for c in retried] == [True, True, True]


def test_a_clock_failure_at_the_start_of_a_claimed_pair_fails_that_cycle_loudly(
    funded, bars, settings, monkeypatch
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    calls = []

    def clock():
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("clock unavailable (test)")
        return timezone.now()

    monkeypatch.setattr(cycle_service, "platform_now", clock)
    with pytest.raises(RuntimeError, match="clock unavailable"):
        cycle_service.account_cycles_run(account=funded, bar_open_time=bars["bar"], quotes=fresh_quotes(bars))
    statuses = dict(Cycle.objects.filter(account=funded).values_list("instrument__symbol", "status"))
    assert statuses["BTC/USD"] == CycleStatus.FAILED
    assert statuses["ETH/USD"] in FINISHED
    assert "clock unavailable" in Cycle.objects.get(account=funded, instrument=bars["btc"]).error


def test_the_account_task_looks_for_the_bars_earlier_cycles_only_when_one_had_finished(
    funded, bars, settings, monkeypatch
):
    """Claimed all together, none of the bar's cycles had finished: the hedge and NAV are done by the
    first pair without a look back. With one finished by another task, the first pair to run looks."""
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    looked = []
    done_on_this_bar = cycle_service._done_on_this_bar

    def spy(cycle):
        looked.append(cycle.instrument.symbol)
        return done_on_this_bar(cycle)

    monkeypatch.setattr(cycle_service, "_done_on_this_bar", spy)
    btc, eth = run_account(funded, bars)
    assert looked == []
    assert "summary" in hedge_record(btc)
    assert hedge_record(eth)["evaluated_by"] == btc.pk
    assert nav_record(eth)["recorded_by"] == btc.pk

    Cycle.objects.filter(pk=eth.pk).delete()  # ETH to run again, BTC finished (as by another task)
    _, again = run_account(funded, bars)
    assert looked == ["ETH/USD"]
    assert hedge_record(again)["evaluated_by"] == btc.pk
    assert nav_record(again)["recorded_by"] == btc.pk


def test_another_workers_lease_stops_the_account_task_before_it_claims_anything(funded, bars, settings):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    elsewhere = running_elsewhere(funded, bars["btc"], bars["bar"] - timedelta(hours=1))
    with pytest.raises(CycleBusy, match=f"cycle #{elsewhere.pk} .* holds the lease"):
        run_account(funded, bars)
    assert not Cycle.objects.filter(account=funded, bar_open_time=bars["bar"]).exists()


def test_pairs_claimed_by_a_worker_that_died_are_resumed_once_their_leases_lapse(
    funded, bars, settings, monkeypatch
):
    """The worker dies during the first pair: both pairs stay running (claimed together; the one not started
    has its lease released on the way out, which a SIGKILL would not do), a retry meets the first pair's
    live lease, and once the leases lapse the retry resumes both (second attempts) and finishes them."""
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    monkeypatch.setattr(cycle_service, "_strategy_for", lambda account: AlwaysHold())
    execute = cycle_service._cycle_execute

    class WorkerDied(BaseException):  # not an Exception: nothing in the cycle catches it, as with SIGKILL
        pass

    def dies(cycle, **kwargs):
        raise WorkerDied

    monkeypatch.setattr(cycle_service, "_cycle_execute", dies)
    with pytest.raises(WorkerDied):
        run_account(funded, bars)
    claimed = Cycle.objects.filter(account=funded, bar_open_time=bars["bar"])
    assert sorted(claimed.values_list("status", "attempts")) == [("running", 1), ("running", 1)]
    monkeypatch.setattr(cycle_service, "_cycle_execute", execute)
    with pytest.raises(CycleBusy, match="is running in another worker"):
        run_account(funded, bars)
    claimed.update(lease_until=timezone.now() - timedelta(seconds=1))
    resumed = run_account(funded, bars)
    assert [(cycle.attempts, cycle.status in FINISHED) for cycle in resumed] == [(2, True), (2, True)]


def test_a_failing_pair_does_not_stop_the_others_and_the_failure_is_raised(
    funded, bars, settings, monkeypatch
):
    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    market_inputs = cycle_service._market_inputs

    def broken_for_btc(instrument, timeframe, candle):
        if instrument.symbol == "BTC/USD":
            raise RuntimeError("features failed (test)")
        return market_inputs(instrument, timeframe, candle)

    monkeypatch.setattr(cycle_service, "_market_inputs", broken_for_btc)
    with pytest.raises(RuntimeError, match="features failed"):
        run_account(funded, bars)
    statuses = dict(Cycle.objects.filter(account=funded).values_list("instrument__symbol", "status"))
    assert statuses["BTC/USD"] == CycleStatus.FAILED
    assert statuses["ETH/USD"] in (CycleStatus.DONE, CycleStatus.SKIPPED)
    # The retry runs what failed; the finished pair is returned as it is.
    monkeypatch.setattr(cycle_service, "_market_inputs", market_inputs)
    cycles = run_account(funded, bars)
    assert {cycle.instrument.symbol: cycle.attempts for cycle in cycles} == {"BTC/USD": 2, "ETH/USD": 1}


def test_the_account_task_retries_a_busy_account_and_the_sweep_queues_one_task_per_account(
    funded, firm, bars, settings, monkeypatch, celery_sent
):
    from celery.exceptions import Retry

    from trading import tasks

    settings.AETHER_PAIRS = ["BTC/USD", "ETH/USD"]
    assert tasks.cycles_sweep() == 3  # three accounts, two pairs each, one bar
    queued = sorted(args for name, args, _ in celery_sent if name == "trading.account_cycles")
    assert queued == sorted(
        (account.pk, bars["bar"].isoformat())
        for account in (firm.company, firm.alice_account, firm.bob_account)
    )

    def busy(**kwargs):
        raise CycleBusy("alice: cycle #1 holds the lease")

    monkeypatch.setattr(cycle_service, "account_cycles_run", busy)
    with pytest.raises(Retry):
        tasks.account_cycles.apply(args=(funded.pk, bars["bar"].isoformat()), throw=True).get()


def test_the_sweep_still_queues_the_other_pairs_when_a_configured_pair_is_missing(
    funded, firm, bars, settings
):
    settings.AETHER_PAIRS = ["BTC/USD", "NOPE/USD"]
    assert {instrument for _, instrument, _ in cycles_due()} == {bars["btc"].pk}
