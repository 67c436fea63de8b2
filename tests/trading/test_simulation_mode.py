"""The simulation / live switch: every refusal, the happy path with its audit rows, the command and the admin.

Kraken is the fake server (real ccxt signing); the key lives in the local Fernet store under tmp_path.
"""

from __future__ import annotations

import io
import re
import uuid
from decimal import Decimal

import pytest
from cryptography.fernet import Fernet
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from accounts.credential_services import kraken_credentials_set
from accounts.models import Account, KrakenCredential
from governance.actors import SystemActor
from governance.models import AuditEvent
from tests.fakes.kraken_rest import Fault
from trading.brokers.kraken import KrakenKeys
from trading.models import BrokerName, Order, OrderStatus, OrderType, Side
from trading.services.mode import account_set_simulation


@pytest.fixture
def kraken(settings, tmp_path, fake_kraken):
    key_file = tmp_path / "fernet.key"
    key_file.write_bytes(Fernet.generate_key())
    settings.AETHER_CREDENTIAL_STORE = "local"
    settings.KRAKEN_CREDENTIALS_DIR = str(tmp_path / "credentials")
    settings.KRAKEN_CREDENTIALS_KEY_FILE = str(key_file)
    settings.KRAKEN_LOCK_DIR = str(tmp_path / "locks")
    settings.KRAKEN_API_URL = fake_kraken.url
    return fake_kraken


@pytest.fixture
def alice_keys(firm, universe, kraken) -> KrakenKeys:
    creds = kraken.add_account(balances={"ZUSD": "10000"})
    keys = KrakenKeys(api_key=creds.api_key, secret=creds.secret)
    kraken_credentials_set(account=firm.alice_account, keys=keys, actor=firm.owner)
    kraken.clear_log()
    return keys


def balance_calls(kraken) -> int:
    return sum(1 for record in kraken.requests() if record.endpoint == "Balance")


def audit(action: str, account: Account | None = None) -> list[AuditEvent]:
    events = AuditEvent.objects.filter(action=action).order_by("seq")
    if account is not None:
        events = events.filter(account=account)
    return list(events)


def make_order(account, instrument, *, broker: str, status: str = OrderStatus.OPEN) -> Order:
    return Order.objects.create(
        account=account,
        client_order_id=str(uuid.uuid4()),
        broker=broker,
        instrument=instrument,
        side=Side.BUY,
        order_type=OrderType.LIMIT,
        quantity=Decimal("0.001"),
        limit_price=Decimal("50000"),
        status=status,
        placed_by="system:test",
    )


def simulated(account: Account) -> bool:
    return Account.objects.get(pk=account.pk).simulation_mode


def go_live(firm, actor=None, confirm="alice"):
    return account_set_simulation(
        account=firm.alice_account, enabled=False, actor=actor or firm.owner, confirm=confirm
    )


# --- Who may switch ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director", "superuser"])
def test_only_a_director_of_the_account_turns_live_on(firm, alice_keys, kraken, persona):
    with pytest.raises(PermissionDenied, match="Only a director of Alice"):
        go_live(firm, actor=getattr(firm, persona))
    assert simulated(firm.alice_account)
    assert balance_calls(kraken) == 0
    assert audit("account.live_refused") == []  # not a director: nothing of theirs to record on Alice


def test_the_platform_never_turns_live_on(firm, alice_keys, kraken):
    with pytest.raises(PermissionDenied, match="system:strategy_cycle may not turn live trading on"):
        go_live(firm, actor=SystemActor("strategy_cycle"))
    assert simulated(firm.alice_account)


@pytest.mark.parametrize("persona", ["viewer", "outsider", "director"])
def test_non_directors_cannot_switch_to_simulation_either(firm, persona):
    Account.objects.filter(pk=firm.alice_account.pk).update(simulation_mode=False)
    with pytest.raises(PermissionDenied, match="switch it to simulation"):
        account_set_simulation(account=firm.alice_account, enabled=True, actor=getattr(firm, persona))
    assert not simulated(firm.alice_account)


# --- Why not now --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("confirm", "message"),
    [
        (None, "needs confirmation: give the account's slug ('alice')"),
        ("", "needs confirmation"),
        ("Alice", "The confirmation 'Alice' is not the account's slug ('alice')"),
        ("bob", "is not the account's slug"),
    ],
)
def test_going_live_needs_the_slug_as_confirmation(firm, alice_keys, kraken, confirm, message):
    with pytest.raises(ValidationError, match=re.escape(message)):
        go_live(firm, confirm=confirm)
    assert simulated(firm.alice_account)
    assert balance_calls(kraken) == 0  # refused before asking Kraken
    (refused,) = audit("account.live_refused")
    assert refused.actor == "user:alice"
    assert message.split(":")[0] in refused.details["reason"]


def test_going_live_needs_a_kraken_key(firm, universe, kraken):
    with pytest.raises(
        ValidationError, match=r"alice has no Kraken API key; set one with manage\.py set_kraken_key"
    ):
        go_live(firm)
    assert simulated(firm.alice_account)
    assert len(audit("account.live_refused")) == 1


def test_going_live_needs_a_key_kraken_accepts_now(firm, alice_keys, kraken):
    kraken.inject("Balance", Fault.kraken_error("EAPI:Invalid key"), api_key=alice_keys.api_key)
    with pytest.raises(ValidationError, match=r"Kraken refused alice's stored API key \(EAPI:Invalid key\)"):
        go_live(firm)
    assert simulated(firm.alice_account)
    credential = KrakenCredential.objects.get(account=firm.alice_account)
    assert not credential.validation_ok
    assert credential.validation_message == "EAPI:Invalid key"
    assert balance_calls(kraken) == 1  # it was re-checked, not taken from the row
    (validated,) = audit("kraken_key.validated")
    assert validated.details["ok"] is False


def test_going_live_needs_no_open_simulated_orders(firm, alice_keys, kraken, universe):
    btc = universe["BTC/USD"]
    open_orders = [
        make_order(firm.alice_account, btc, broker=BrokerName.SIM, status=status)
        for status in (OrderStatus.OPEN, OrderStatus.PARTIALLY_FILLED, OrderStatus.UNKNOWN)
    ]
    make_order(firm.alice_account, btc, broker=BrokerName.SIM, status=OrderStatus.FILLED)  # finished: fine
    make_order(firm.bob_account, btc, broker=BrokerName.SIM)  # another account's: irrelevant
    with pytest.raises(ValidationError, match="alice still has 3 open simulated order") as caught:
        go_live(firm)
    for order in open_orders:
        assert order.client_order_id in str(caught.value)
    assert simulated(firm.alice_account)

    for order in open_orders:
        Order.objects.filter(pk=order.pk).update(status=OrderStatus.CANCELED)
    assert go_live(firm).changed


# --- The happy path and the way back ------------------------------------------------------------------------


def test_a_director_turns_live_on_with_everything_audited(firm, alice_keys, kraken):
    result = go_live(firm)

    assert result.changed
    assert result.simulation_mode is False
    assert not simulated(firm.alice_account)
    assert balance_calls(kraken) == 1  # the key was re-validated just now
    credential = KrakenCredential.objects.get(account=firm.alice_account)
    (validated,) = audit("kraken_key.validated")
    assert validated.details == {
        "fingerprint": credential.fingerprint,
        "ok": True,
        "message": credential.validation_message,
    }
    (live,) = audit("account.live_enabled")
    assert live.actor == "user:alice"
    assert live.account == firm.alice_account
    assert live.seq > validated.seq
    assert live.details == {
        "before": {"simulation_mode": True},
        "after": {"simulation_mode": False},
        "fingerprint": credential.fingerprint,
        "validated_at": credential.validated_at.isoformat(),
    }
    latest = firm.alice_account.history.first()
    assert latest.simulation_mode is False
    assert latest.history_user == firm.owner

    again = go_live(firm)  # already live: nothing changes, nothing is recorded
    assert not again.changed
    assert len(audit("account.live_enabled")) == 1


def test_back_to_simulation_reports_live_orders_left_on_kraken(firm, alice_keys, kraken, universe):
    go_live(firm)
    btc = universe["BTC/USD"]
    left = make_order(firm.alice_account, btc, broker=BrokerName.KRAKEN, status=OrderStatus.OPEN)
    make_order(firm.alice_account, btc, broker=BrokerName.KRAKEN, status=OrderStatus.FILLED)

    result = account_set_simulation(account=firm.alice_account, enabled=True, actor=firm.owner)

    assert result.changed
    assert simulated(firm.alice_account)
    assert result.open_live_orders == (left.client_order_id,)
    assert "1 live order(s) remain open on Kraken" in result.message
    assert "reconciliation keeps tracking them" in result.message
    (event,) = audit("account.simulation_enabled")
    assert event.actor == "user:alice"
    assert event.details == {
        "before": {"simulation_mode": False},
        "after": {"simulation_mode": True},
        "open_live_orders": [left.client_order_id],
    }


def test_the_platform_may_switch_to_simulation_any_time(firm):
    Account.objects.filter(pk=firm.alice_account.pk).update(simulation_mode=False)
    result = account_set_simulation(
        account=firm.alice_account, enabled=True, actor=SystemActor("kill_switch")
    )
    assert result.changed
    assert simulated(firm.alice_account)
    assert result.open_live_orders == ()
    assert audit("account.simulation_enabled")[0].actor == "system:kill_switch"

    again = account_set_simulation(account=firm.alice_account, enabled=True, actor=firm.owner)
    assert not again.changed
    assert len(audit("account.simulation_enabled")) == 1


# --- manage.py set_simulation -------------------------------------------------------------------------------


def set_simulation(*args: str) -> str:
    out = io.StringIO()
    call_command("set_simulation", *args, stdout=out)
    return out.getvalue()


def test_set_simulation_command_goes_live_and_back(firm, alice_keys, kraken):
    out = set_simulation("--account", "alice", "--live", "--confirm", "alice", "--as-user", "alice")
    assert "set_simulation: alice is now trading live on Kraken" in out
    assert not simulated(firm.alice_account)
    assert audit("account.live_enabled")[0].actor == "user:alice"

    out = set_simulation("--account", "alice", "--simulation")
    assert "set_simulation: alice is now in simulation mode." in out
    assert audit("account.simulation_enabled")[0].actor == "system:set_simulation"


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--account", "nobody", "--simulation"], 2, "no such account"),
        (["--account", "alice", "--live", "--confirm", "alice"], 2, "--live needs --as-user"),
        (["--account", "alice", "--live", "--as-user", "alice"], 2, "--live needs --confirm alice"),
        (["--account", "alice", "--simulation", "--confirm", "alice"], 2, "--confirm goes with --live"),
        (["--account", "alice", "--live", "--confirm", "alice", "--as-user", "ghost"], 2, "no such active"),
        (["--account", "alice", "--live", "--confirm", "alice", "--as-user", "carol"], 1, "Only a director"),
        (["--account", "alice", "--live", "--confirm", "alicia", "--as-user", "alice"], 1, "not the account"),
    ],
)
def test_set_simulation_command_refusals(firm, alice_keys, args, code, message):
    with pytest.raises(CommandError, match=message) as caught:
        set_simulation(*args)
    assert caught.value.returncode == code
    assert simulated(firm.alice_account)


# --- The admin actions --------------------------------------------------------------------------------------


def changelist() -> str:
    return reverse("admin:accounts_account_changelist")


def test_admin_switch_to_live_asks_for_the_slug_then_switches(firm, alice_keys, kraken, client):
    client.force_login(firm.owner)
    selected = {"_selected_action": [firm.alice_account.pk]}
    page = client.post(changelist(), {"action": "switch_to_live", "index": 0, **selected})
    assert page.status_code == 200
    html = page.content.decode()
    assert "Type the account's slug, <code>alice</code>, to confirm" in html
    assert KrakenCredential.objects.get().fingerprint in html
    assert alice_keys.api_key not in html
    assert simulated(firm.alice_account)  # the first step only asks

    wrong = {"action": "switch_to_live", "post": "yes", "confirm_slug": "nope", **selected}
    response = client.post(changelist(), wrong, follow=True)
    assert "is not the account&#x27;s slug" in response.content.decode()
    assert simulated(firm.alice_account)

    right = {"action": "switch_to_live", "post": "yes", "confirm_slug": "alice", **selected}
    response = client.post(changelist(), right, follow=True)
    assert "Alice is now trading live on Kraken" in response.content.decode()  # the admin capitalises
    assert not simulated(firm.alice_account)
    assert audit("account.live_enabled")[0].actor == "user:alice"

    response = client.post(
        changelist(), {"action": "switch_to_simulation", "index": 0, **selected}, follow=True
    )
    assert "Alice is now in simulation mode." in response.content.decode()
    assert simulated(firm.alice_account)


def test_admin_switch_actions_are_not_offered_to_a_viewer(firm, client):
    client.force_login(firm.viewer)
    page = client.get(changelist())
    form = page.context["action_form"]  # None: the viewer is offered no action at all
    choices = [] if form is None else [value for value, _ in form.fields["action"].choices]
    assert "switch_to_live" not in choices
    assert "switch_to_simulation" not in choices
    response = client.post(
        changelist(),
        {
            "action": "switch_to_live",
            "post": "yes",
            "confirm_slug": "alice",
            "_selected_action": [firm.alice_account.pk],
        },
    )
    assert simulated(firm.alice_account)
    assert response.status_code in (200, 302)
    assert audit("account.live_enabled") == []


def test_admin_switch_to_live_takes_one_account_at_a_time(firm, alice_keys, client):
    client.force_login(firm.owner)
    response = client.post(
        changelist(),
        {
            "action": "switch_to_live",
            "index": 0,
            "_selected_action": [firm.alice_account.pk, firm.company.pk],
        },
        follow=True,
    )
    assert "Select exactly one account" in response.content.decode()
    assert simulated(firm.alice_account)
