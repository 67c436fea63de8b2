"""The order service against the fake Kraken with the real ccxt client: one order on the exchange per intent,
no order lost from the book, a reason on every rejection, balances that agree after ``reconcile``, and a
simulated account that never reaches a private trading endpoint."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from decimal import Decimal as D

import pytest
from django.core.exceptions import ValidationError
from django.db import connection
from django.utils import timezone

from accounts.models import Account
from governance.actors import SystemActor
from governance.models import AuditEvent
from tests.fakes.kraken_rest import Fault, KrakenError
from trading.brokers.kraken import KrakenBroker, KrakenKeys
from trading.models import Balance, FeedStatus, Fill, Instrument, Order, OrderStatus, Position
from trading.services.orders import order_record, order_request, order_submit
from trading.services.reconcile import reconcile_account

ENGINE = SystemActor("strategy_cycle")
RECONCILE = SystemActor("reconcile")


@dataclass
class Env:
    fake: object
    creds: object
    account: Account
    factory: object
    btc: Instrument

    def orders(self):
        return self.fake.orders(self.creds.api_key)

    def reconcile(self):
        return reconcile_account(account=self.account, actor=RECONCILE, broker_factory=self.factory)


@pytest.fixture
def kraken_env(fake_kraken, settings, universe, firm):
    """A live account on the fake Kraken with 100,000 USD and 1 BTC, reconciled once (as at startup)."""
    settings.KRAKEN_API_URL = fake_kraken.url
    settings.KRAKEN_PRIVATE_TIMEOUT_MS = 1500
    settings.RECONCILE_GRACE_SECONDS = 0
    creds = fake_kraken.add_account(balances={"ZUSD": "100000", "XXBT": "1"})
    fake_kraken.set_price("XXBTZUSD", "50000", bid="49999.9", ask="50000.1")
    account = firm.alice_account
    # Live without the switch's checks (those are tested in test_simulation_mode).
    Account.objects.filter(pk=account.pk).update(simulation_mode=False)
    account.refresh_from_db()
    keys = KrakenKeys(api_key=creds.api_key, secret=creds.secret)

    def factory(account, name):
        assert name == "kraken"
        return KrakenBroker(account, keys=keys)

    btc = universe["BTC/USD"]
    FeedStatus.objects.create(
        instrument=btc, last_price=D("50000"), last_message_at=timezone.now(), stale=False
    )
    env = Env(fake_kraken, creds, account, factory, btc)
    env.reconcile()
    return env


def submit(env, side="buy", qty="0.01", **kwargs):
    kwargs.setdefault("order_type", "market")
    return order_submit(
        account=env.account,
        actor=ENGINE,
        instrument=env.btc,
        side=side,
        quantity=D(qty),
        broker_factory=env.factory,
        **kwargs,
    )


def assert_balances_agree(env):
    theirs = env.fake.balances(env.creds.api_key)
    ours = {b.asset: b.total for b in Balance.objects.filter(account=env.account, broker="kraken")}
    assert ours["USD"] == theirs["ZUSD"]
    assert ours["BTC"] == theirs["XXBT"]


def test_a_live_market_order_reaches_kraken_once_with_its_client_id_and_is_recorded(kraken_env):
    order = submit(kraken_env)
    assert order.status == OrderStatus.FILLED
    (on_exchange,) = kraken_env.orders()
    assert on_exchange.cl_ord_id == order.client_order_id
    assert order.kraken_order_id == on_exchange.txid
    fill = Fill.objects.get(order=order)
    (trade,) = kraken_env.fake.trades(kraken_env.creds.api_key)
    assert (fill.trade_id, fill.price, fill.quantity, fill.fee) == (
        trade.trade_txid,
        trade.price,
        trade.vol,
        trade.fee,
    )
    assert fill.fee_currency == "USD"
    assert not kraken_env.fake.margin_attempts()
    kraken_env.reconcile()
    assert_balances_agree(kraken_env)
    assert Position.objects.get(account=kraken_env.account, broker="kraken").quantity == D("0.01")


def test_insufficient_funds_is_rejected_with_krakens_message(kraken_env):
    kraken_env.fake.inject("AddOrder", Fault.kraken_error(KrakenError.INSUFFICIENT_FUNDS))
    order = submit(kraken_env)
    assert order.status == OrderStatus.REJECTED
    assert "EOrder:Insufficient funds" in order.status_reason
    assert kraken_env.orders() == []
    assert Balance.objects.get(account=kraken_env.account, broker="kraken", asset="USD").reserved == 0


@pytest.mark.parametrize(
    "fault",
    [
        Fault.kraken_error(KrakenError.RATE_LIMIT),
        Fault.kraken_error(KrakenError.INVALID_NONCE),
    ],
    ids=["rate-limit", "invalid-nonce"],
)
def test_safe_to_retry_errors_end_with_exactly_one_order(kraken_env, fault):
    kraken_env.fake.inject("AddOrder", fault)
    order = submit(kraken_env)
    assert order.status == OrderStatus.FILLED
    assert len(kraken_env.orders()) == 1


@pytest.mark.parametrize(
    "fault",
    [Fault.http_status(503, process=True), Fault.malformed_json(process=True), Fault.timeout_after_accept(3)],
    ids=["5xx-after-accept", "malformed-json-after-accept", "timeout-after-accept"],
)
def test_an_answer_lost_after_kraken_accepted_finds_the_order_again_never_a_duplicate(kraken_env, fault):
    kraken_env.fake.inject("AddOrder", fault)
    order = submit(kraken_env)
    if order.status == OrderStatus.UNKNOWN:  # the broker could not ask at once: reconciliation does
        kraken_env.reconcile()
        order.refresh_from_db()
    assert order.status == OrderStatus.FILLED
    (on_exchange,) = kraken_env.orders()
    assert on_exchange.cl_ord_id == order.client_order_id
    assert Fill.objects.filter(order=order).count() == 1
    # A retry of the same intent sends nothing.
    again = submit(kraken_env, client_order_id=order.client_order_id)
    assert again.pk == order.pk
    assert len(kraken_env.orders()) == 1
    kraken_env.reconcile()
    assert_balances_agree(kraken_env)


def test_a_5xx_before_kraken_processed_the_order_is_closed_by_reconciliation_not_resent(kraken_env):
    kraken_env.fake.inject("AddOrder", Fault.http_status(503, process=False))
    order = submit(kraken_env)
    assert order.status in (OrderStatus.UNKNOWN, OrderStatus.REJECTED)
    kraken_env.reconcile()
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED
    assert kraken_env.orders() == []
    assert Balance.objects.get(account=kraken_env.account, broker="kraken", asset="USD").reserved == 0


def test_a_worker_killed_between_commit_and_network_call_recovers_without_sending(kraken_env):
    env = kraken_env
    order, _ = order_record(
        account=env.account,
        actor=ENGINE,
        instrument=env.btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
    )
    # ... the worker dies here: the row is committed, nothing was sent.
    report = env.reconcile()
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED
    assert report.never_arrived == [order.client_order_id]
    assert env.fake.private_trading_calls(env.creds.api_key) == []


def test_a_worker_killed_between_network_call_and_response_recovers_without_a_duplicate(kraken_env):
    env = kraken_env
    order, _ = order_record(
        account=env.account,
        actor=ENGINE,
        instrument=env.btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
    )
    Order.objects.filter(pk=order.pk).update(status=OrderStatus.SUBMITTED)
    # The request reaches Kraken; the answer is lost with the worker.
    env.factory(env.account, "kraken").submit(order_request(order))
    assert len(env.orders()) == 1
    env.reconcile()
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED
    assert Fill.objects.filter(order=order).count() == 1
    assert len(env.orders()) == 1
    assert_balances_agree(env)


def test_reconcile_reports_and_corrects_balance_drift(kraken_env):
    kraken_env.fake.set_balance(kraken_env.creds.api_key, "ZUSD", "90000")  # a withdrawal outside Aether
    report = kraken_env.reconcile()
    assert D(report.balance_drift["USD"]["kraken"]) == D("90000")
    assert report.drift
    assert_balances_agree(kraken_env)


@pytest.mark.postgres  # two threads writing at once: SQLite's shared test database refuses one of them
@pytest.mark.django_db(transaction=True)
def test_a_simulated_account_toggled_during_a_submission_loop_only_trades_on_kraken_while_live(
    fake_kraken, settings, tmp_path, audit_transactional_db
):
    """Orders keep flowing through ``order_submit`` (default brokers, keys from the credential store) while
    a director switches the account live and back with ``account_set_simulation``. Every private trading
    call the fake sees falls inside a window in which the account was live."""
    from cryptography.fernet import Fernet

    from accounts.credential_services import kraken_credentials_set
    from tests.conftest import load_snapshot_universe
    from tests.factories import MembershipFactory, UserFactory
    from trading.services.mode import account_set_simulation
    from trading.services.orders import sim_balance_set

    key_file = tmp_path / "fernet.key"
    key_file.write_bytes(Fernet.generate_key())
    settings.AETHER_CREDENTIAL_STORE = "local"
    settings.KRAKEN_CREDENTIALS_DIR = str(tmp_path / "credentials")
    settings.KRAKEN_CREDENTIALS_KEY_FILE = str(key_file)
    settings.KRAKEN_API_URL = fake_kraken.url
    btc = load_snapshot_universe()["BTC/USD"]
    FeedStatus.objects.update_or_create(
        instrument=btc, defaults={"last_price": D("50000"), "last_message_at": timezone.now(), "stale": False}
    )
    creds = fake_kraken.add_account(balances={"ZUSD": "1000000", "XXBT": "10"})
    fake_kraken.set_price("XXBTZUSD", "50000", bid="49999.9", ask="50000.1")
    account = Account.objects.create(name="Toggle", slug="toggle", kind="director")
    director = UserFactory(username="erin")
    MembershipFactory(user=director, account=account, role="director")
    kraken_credentials_set(
        account=account, keys=KrakenKeys(api_key=creds.api_key, secret=creds.secret), actor=director
    )
    sim_balance_set(account=account, asset="USD", amount=D("1000000"), actor=ENGINE, reason="test")
    reconcile_account(account=account, actor=RECONCILE, broker_name="kraken")  # Kraken balances first
    live_windows: list[tuple[float, float]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def retrying(call):
        # Going live is refused while a simulated order is in flight: try again.
        last = None
        for _ in range(400):
            try:
                return call()
            except ValidationError as exc:
                last = exc
                time.sleep(0.005)
        raise AssertionError(f"kept being refused: {last}")

    def toggler():
        try:
            while not stop.is_set():
                opened = time.time()  # the account cannot be live before this
                retrying(
                    lambda: account_set_simulation(
                        account=account, enabled=False, actor=director, confirm="toggle"
                    )
                )
                time.sleep(0.03)
                retrying(lambda: account_set_simulation(account=account, enabled=True, actor=director))
                live_windows.append((opened, time.time()))  # nor after this
                time.sleep(0.03)
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            connection.close()

    thread = threading.Thread(target=toggler)
    thread.start()
    orders = []
    try:
        for index in range(60):
            FeedStatus.objects.filter(instrument=btc).update(last_message_at=timezone.now())
            orders.append(
                order_submit(
                    account=account,
                    actor=ENGINE,
                    instrument=btc,
                    side="buy",
                    order_type="market",
                    quantity=D("0.001"),
                    client_order_id=f"toggle-{index}",
                )
            )
    finally:
        stop.set()
        thread.join()
    assert not errors, errors
    calls = fake_kraken.private_trading_calls(creds.api_key)
    for call in calls:
        assert any(start <= call.time <= end for start, end in live_windows), call
    assert {order.broker for order in orders} == {"sim", "kraken"}, "the loop should have run in both modes"
    on_kraken = {o.cl_ord_id for o in fake_kraken.orders(creds.api_key)}
    assert on_kraken == {o.client_order_id for o in orders if o.broker == "kraken" and o.kraken_order_id}
    for order in orders:
        if order.broker == "kraken" and order.status == OrderStatus.REJECTED:
            assert "simulation" in order.status_reason, order.status_reason
        if order.broker == "sim":
            assert order.client_order_id not in on_kraken


def test_reconcile_with_the_stored_key_refreshes_the_fee_tier_and_balances(
    fake_kraken, settings, universe, firm
):
    from accounts.credential_services import kraken_credentials_set
    from trading.models import AccountFeeTier

    settings.KRAKEN_API_URL = fake_kraken.url
    creds = fake_kraken.add_account(balances={"ZUSD": "2500"})
    account = firm.alice_account
    kraken_credentials_set(
        account=account, keys=KrakenKeys(api_key=creds.api_key, secret=creds.secret), actor=firm.owner
    )
    fake_kraken.set_fees(creds.api_key, maker="0.14", taker="0.24")  # the 30-day volume moved a tier
    report = reconcile_account(account=account, actor=RECONCILE, broker_name="kraken")
    assert report.fee_tiers_updated > 0
    tier = AccountFeeTier.objects.get(account=account, instrument=universe["BTC/USD"])
    assert (tier.maker_pct, tier.taker_pct) == (D("0.14"), D("0.24"))
    assert Balance.objects.get(account=account, broker="kraken", asset="USD").total == D("2500")
    assert not report.drift


def test_holdings_aether_did_not_buy_are_never_sold(kraken_env):
    # The account holds 1 BTC on Kraken (reconciled) but Aether bought none of it.
    order = submit(kraken_env, side="sell", qty="0.1")
    assert order.status == OrderStatus.REJECTED
    assert "never sold" in order.status_reason
    assert kraken_env.fake.private_trading_calls(kraken_env.creds.api_key) == []


def test_a_kraken_fill_beyond_the_position_is_recorded_untracked_never_refused(kraken_env):
    from trading.brokers.base import FillReport, OrderReport, Side, Status
    from trading.services.orders import order_apply_report

    env = kraken_env
    submit(env, qty="0.01")  # Aether holds 0.01 BTC
    order = Order.objects.create(
        account=env.account,
        client_order_id="external-sell",
        broker="kraken",
        instrument=env.btc,
        side="sell",
        order_type="market",
        quantity=D("0.03"),
        status=OrderStatus.SUBMITTED,
        placed_by="system:test",
    )
    fill = FillReport(
        trade_id="T-EXT-1",
        exchange_order_id="O-EXT-1",
        client_order_id="external-sell",
        symbol="BTC/USD",
        side=Side.SELL,
        price=D("50000"),
        quantity=D("0.03"),
        fee=D("6"),
        fee_currency="USD",
        liquidity="taker",
        executed_at=timezone.now(),
    )
    report = OrderReport("external-sell", Status.FILLED, exchange_order_id="O-EXT-1", fills=(fill,))
    updated = order_apply_report(order_id=order.pk, report=report, actor=RECONCILE)
    assert updated.status == OrderStatus.FILLED
    assert Position.objects.get(account=env.account, broker="kraken").quantity == 0
    event = AuditEvent.objects.filter(action="order.filled", target_id=str(order.pk)).get()
    assert D(event.details["untracked_sold"]) == D("0.02")


def test_an_order_whose_broker_cannot_be_set_up_is_rejected_as_not_sent(kraken_env):
    def broken(account, name):
        raise RuntimeError("credential store unreachable")

    order = order_submit(
        account=kraken_env.account,
        actor=ENGINE,
        instrument=kraken_env.btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
        broker_factory=broken,
    )
    assert order.status == OrderStatus.REJECTED
    assert order.status_reason.startswith("not sent")
    assert Balance.objects.get(account=kraken_env.account, broker="kraken", asset="USD").reserved == 0
    assert kraken_env.orders() == []


def test_orders_left_on_kraken_are_still_reconciled_after_switching_to_simulation(kraken_env):
    from trading.services.reconcile import reconcile_account_books

    env = kraken_env
    resting = submit(env, order_type="limit", limit_price=D("40000"))
    assert resting.status == OrderStatus.OPEN
    Account.objects.filter(pk=env.account.pk).update(simulation_mode=True)
    env.account.refresh_from_db()
    env.fake.cross("XXBTZUSD", "39999")  # it fills on Kraken while the account is simulated
    reports = reconcile_account_books(account=env.account, actor=RECONCILE, broker_factory=env.factory)
    assert [report.broker for report in reports] == ["sim", "kraken"]
    resting.refresh_from_db()
    assert resting.status == OrderStatus.FILLED


def test_an_order_closed_as_never_arrived_that_shows_up_on_kraken_follows_the_exchange(kraken_env):
    env = kraken_env
    order, _ = order_record(
        account=env.account,
        actor=ENGINE,
        instrument=env.btc,
        side="buy",
        order_type="market",
        quantity=D("0.01"),
    )
    env.reconcile()  # never sent: closed
    order.refresh_from_db()
    assert order.status == OrderStatus.REJECTED
    # ... yet a worker that was still sending it gets it onto Kraken afterwards.
    env.factory(env.account, "kraken").submit(order_request(order))
    report = env.reconcile()
    order.refresh_from_db()
    assert order.status == OrderStatus.FILLED
    assert order.kraken_order_id
    assert any("exists on Kraken" in problem for problem in report.problems)
    actions = AuditEvent.objects.filter(target_type="trading.order", target_id=str(order.pk)).order_by("seq")
    assert "order.reappeared" in list(actions.values_list("action", flat=True))
