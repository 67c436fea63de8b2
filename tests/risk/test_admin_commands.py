"""The risk admin (scoped; policy edits and switch actions through the services) and the operator commands."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal as D
from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.forms.models import model_to_dict
from django.urls import reverse
from django.utils import timezone

from governance.models import AuditEvent
from risk.models import KillSwitch, NavSnapshot, RiskPolicy
from risk.selectors import entries_allowed
from risk.services import killswitch_halt, risk_policy_for
from trading.services.orders import sim_balance_set


@pytest.fixture
def staff(firm):
    for user in (firm.owner, firm.director, firm.viewer, firm.outsider):
        user.is_staff = True
        user.save()
    return firm


@pytest.fixture
def rows(staff):
    """A policy, a switch and a snapshot for alice's account and for bob's."""
    made = {}
    now = timezone.now()
    for slug, account in (("alice", staff.alice_account), ("bob", staff.bob_account)):
        made[f"{slug}_policy"] = risk_policy_for(account=account)
        made[f"{slug}_switch"] = KillSwitch.objects.create(account=account)
        made[f"{slug}_nav"] = NavSnapshot.objects.create(
            account=account,
            broker="sim",
            taken_at=now,
            equity=D("1000"),
            cash=D("1000"),
            positions_value=0,
            day=now.date(),
            day_high=D("1000"),
            drawdown_pct=0,
            kill_switch_status="armed",
            reason="schedule",
        )
    return made


def change_url(obj):
    return reverse(f"admin:risk_{obj._meta.model_name}_change", args=[obj.pk])


def changelist_url(model_name: str) -> str:
    return reverse(f"admin:risk_{model_name}_changelist")


def policy_form(policy: RiskPolicy, **changes) -> dict:
    data = {
        key: ("" if value is None else value)
        for key, value in model_to_dict(policy, fields=RiskPolicy.EDITABLE).items()
    }
    for flag in ("trailing_enabled", "flatten_on_breach", "auto_rearm_at_day_change"):
        if not data[flag]:
            data.pop(flag)  # an unchecked box is absent from the POST
    data.update(changes)
    return data


# --- Scoping per persona --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("persona", "sees_alice", "sees_bob"),
    [("owner", True, False), ("viewer", True, False), ("outsider", False, True), ("superuser", True, True)],
)
def test_each_risk_admin_shows_only_the_users_accounts(client, rows, firm, persona, sees_alice, sees_bob):
    client.force_login(getattr(firm, persona))
    for model_name in ("riskpolicy", "killswitch", "navsnapshot"):
        page = client.get(changelist_url(model_name))
        assert page.status_code == 200, model_name
        listed = {obj.account.slug for obj in page.context["cl"].result_list}
        assert ("alice" in listed) == sees_alice, model_name
        assert ("bob" in listed) == sees_bob, model_name
        alice_row = rows[
            {"riskpolicy": "alice_policy", "killswitch": "alice_switch", "navsnapshot": "alice_nav"}[
                model_name
            ]
        ]
        assert client.get(change_url(alice_row)).status_code == (200 if sees_alice else 404), model_name


def test_an_outsider_gets_404_on_alices_rows_and_their_history(client, rows, firm):
    client.force_login(firm.outsider)
    for key in ("alice_policy", "alice_switch"):
        obj = rows[key]
        assert client.get(change_url(obj)).status_code == 404
        history = reverse(f"admin:risk_{obj._meta.model_name}_history", args=[obj.pk])
        assert client.get(history).status_code == 404
        version = obj.history.first().history_id
        revert = reverse(f"admin:risk_{obj._meta.model_name}_simple_history", args=[obj.pk, version])
        assert client.get(revert).status_code == 404


def test_a_director_may_not_revert_a_policy_from_its_history(client, rows, firm):
    client.force_login(firm.owner)
    policy = rows["alice_policy"]
    version = policy.history.first().history_id
    url = reverse("admin:risk_riskpolicy_simple_history", args=[policy.pk, version])
    assert client.get(reverse("admin:risk_riskpolicy_history", args=[policy.pk])).status_code == 200
    assert client.post(url, policy_form(policy, max_daily_drawdown_pct="9")).status_code == 403


def test_the_nav_list_has_a_date_hierarchy_and_nobody_edits_snapshots_or_switches(client, rows, firm):
    client.force_login(firm.owner)
    page = client.get(changelist_url("navsnapshot"))
    assert page.context["cl"].date_hierarchy == "taken_at"
    detail = client.get(change_url(rows["alice_nav"]))
    assert detail.context["has_change_permission"] is False
    assert client.get(reverse("admin:risk_navsnapshot_add")).status_code == 403
    assert client.get(reverse("admin:risk_killswitch_add")).status_code == 403
    assert client.post(change_url(rows["alice_switch"]), {"status": "armed"}).status_code == 403


# --- Policy edits ---------------------------------------------------------------------------------------


def test_a_director_edits_the_policy_through_the_service(client, rows, firm):
    client.force_login(firm.owner)
    policy = rows["alice_policy"]
    response = client.post(
        change_url(policy), policy_form(policy, max_daily_drawdown_pct="2", flatten_on_breach="on")
    )
    assert response.status_code == 302
    policy.refresh_from_db()
    assert (policy.max_daily_drawdown_pct, policy.flatten_on_breach) == (D("2"), True)
    event = AuditEvent.objects.filter(account=firm.alice_account, action="risk_policy.updated").latest("seq")
    assert event.actor == "user:alice"
    assert event.details["before"] == {"flatten_on_breach": False, "max_daily_drawdown_pct": "3.0000"}
    assert event.details["after"] == {"flatten_on_breach": True, "max_daily_drawdown_pct": "2.0000"}


def test_an_invalid_policy_in_the_admin_shows_every_problem_and_saves_nothing(client, rows, firm):
    client.force_login(firm.owner)
    policy = rows["alice_policy"]
    response = client.post(
        change_url(policy),
        policy_form(policy, max_position_pct="50", risk_per_trade_pct="3.5", max_orders_per_minute="100"),
    )
    assert response.status_code == 200
    errors = " | ".join(response.context["adminform"].form.non_field_errors())
    assert "maximum orders per minute (100) is above maximum orders per hour (60)" in errors
    policy.refresh_from_db()
    assert policy.max_position_pct == D("20")
    assert not AuditEvent.objects.filter(action="risk_policy.updated").exists()


def test_a_director_adds_the_policy_of_an_account_that_has_none(client, staff):
    client.force_login(staff.owner)
    data = policy_form(RiskPolicy(account=staff.company), max_daily_drawdown_pct="4")
    data["account"] = staff.company.pk
    response = client.post(reverse("admin:risk_riskpolicy_add"), data)
    assert response.status_code == 302
    policy = RiskPolicy.objects.get(account=staff.company)
    assert policy.max_daily_drawdown_pct == D("4")
    created_and_updated = AuditEvent.objects.filter(account=staff.company).order_by("seq")
    assert [(e.action, e.actor) for e in created_and_updated] == [
        ("risk_policy.created", "user:alice"),
        ("risk_policy.updated", "user:alice"),
    ]


def test_a_viewer_reads_the_policy_but_may_not_change_it(client, rows, firm):
    client.force_login(firm.viewer)
    policy = rows["alice_policy"]
    page = client.get(change_url(policy))
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    response = client.post(change_url(policy), policy_form(policy, max_daily_drawdown_pct="1"))
    assert response.status_code == 403
    policy.refresh_from_db()
    assert policy.max_daily_drawdown_pct == D("3")
    assert client.post(reverse("admin:risk_riskpolicy_add"), {}).status_code == 403


# --- Kill-switch actions --------------------------------------------------------------------------------


def action_choices(response) -> set[str]:
    form = response.context["action_form"]
    return set() if form is None else {name for name, _ in form.fields["action"].choices if name}


def test_a_viewer_is_not_offered_the_switch_actions_and_cannot_post_them(client, rows, firm):
    client.force_login(firm.viewer)
    url = changelist_url("killswitch")
    assert not action_choices(client.get(url)) & {"halt_entries", "resume_entries", "rearm_switch"}
    client.post(url, {"action": "halt_entries", "_selected_action": [rows["alice_switch"].pk]})
    assert entries_allowed(firm.alice_account) is True
    assert not AuditEvent.objects.filter(action="killswitch.halted").exists()


def test_a_director_halts_and_resumes_from_the_admin(client, rows, firm):
    client.force_login(firm.owner)
    url = changelist_url("killswitch")
    assert {"halt_entries", "resume_entries", "rearm_switch"} <= action_choices(client.get(url))
    switch = rows["alice_switch"]
    response = client.post(url, {"action": "halt_entries", "_selected_action": [switch.pk]}, follow=True)
    assert "1 account(s) halted." in response.content.decode()
    assert entries_allowed(firm.alice_account) is False
    event = AuditEvent.objects.filter(action="killswitch.halted").latest("seq")
    assert (event.actor, event.details["note"]) == ("user:alice", "halted in the admin by alice")
    response = client.post(url, {"action": "resume_entries", "_selected_action": [switch.pk]}, follow=True)
    assert "1 account(s) resumed." in response.content.decode()
    assert entries_allowed(firm.alice_account) is True


def test_the_admin_rearm_action_reports_the_same_day_refusal(client, rows, firm):
    switch = rows["alice_switch"]
    switch.status, switch.tripped_on, switch.tripped_at = "tripped", timezone.now().date(), timezone.now()
    switch.save()
    client.force_login(firm.owner)
    response = client.post(
        changelist_url("killswitch"), {"action": "rearm_switch", "_selected_action": [switch.pk]}, follow=True
    )
    text = response.content.decode()
    assert "stays latched until the next UTC day" in text
    assert "0 account(s) re-armed." in text
    assert entries_allowed(firm.alice_account) is False


# --- Commands -------------------------------------------------------------------------------------------


def run(name: str, *args) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_risk_halt_and_resume_need_a_director_of_the_account(firm):
    with pytest.raises(CommandError, match="directors only") as refused:
        run("risk_halt", "--account", "alice", "--as-user", "carol", "--reason", "test")
    assert refused.value.returncode == 1
    with pytest.raises(CommandError, match="no such account") as usage:
        run("risk_halt", "--account", "nobody", "--as-user", "alice", "--reason", "test")
    assert usage.value.returncode == 2
    output = run("risk_halt", "--account", "alice", "--as-user", "alice", "--reason", "maintenance")
    assert "risk_halt: Kill switch of Alice: armed, halted" in output
    assert KillSwitch.objects.get(account=firm.alice_account).halt_reason == "maintenance"
    with pytest.raises(CommandError, match="directors only"):
        run("risk_resume", "--account", "alice", "--as-user", "bob")
    assert "risk_resume: Kill switch of Alice: armed" in run(
        "risk_resume", "--account", "alice", "--as-user", "alice"
    )
    assert entries_allowed(firm.alice_account) is True


def test_risk_rearm_is_refused_on_the_day_of_the_trip_then_allowed(firm):
    yesterday = timezone.now() - timedelta(days=1)
    KillSwitch.objects.create(
        account=firm.alice_account,
        status="tripped",
        tripped_on=timezone.now().date(),
        tripped_at=timezone.now(),
    )
    with pytest.raises(CommandError, match="stays latched until the next UTC day") as refused:
        run("risk_rearm", "--account", "alice", "--as-user", "alice")
    assert refused.value.returncode == 1
    switch = KillSwitch.objects.get(account=firm.alice_account)
    switch.tripped_on, switch.tripped_at = yesterday.date(), yesterday
    switch.save()
    assert "armed" in run("risk_rearm", "--account", "alice", "--as-user", "alice", "--reason", "reviewed")
    assert entries_allowed(firm.alice_account) is True


def test_nav_snapshot_command_records_one_account_or_all(firm):
    sim_balance_set(account=firm.alice_account, asset="USD", amount=D("1234.5"), actor=firm.owner, reason="t")
    output = run("nav_snapshot", "--account", "alice")
    assert "alice: 1234.5" in output
    assert "nav_snapshot: 1 recorded, 0 refused" in output
    snapshot = NavSnapshot.objects.get(account=firm.alice_account)
    assert (snapshot.reason, snapshot.equity) == ("manual", D("1234.5"))
    assert "nav_snapshot: 3 recorded, 0 refused" in run("nav_snapshot", "--reason", "schedule")
    assert NavSnapshot.objects.count() == 4
    # The two accounts with nothing in them have no drawdown to measure: their switches stay armed.
    for account in (firm.company, firm.bob_account):
        assert entries_allowed(account) is True
        assert NavSnapshot.objects.get(account=account).drawdown_pct == 0


def test_nav_snapshot_command_reports_an_unmarkable_book(firm, universe):
    from trading.models import Position

    Position.objects.create(
        account=firm.bob_account, broker="sim", instrument=universe["SOL/USD"], quantity=D("1")
    )
    with pytest.raises(CommandError, match="2 recorded, 1 refused") as refused:
        run("nav_snapshot")
    assert refused.value.returncode == 1
    assert not NavSnapshot.objects.filter(account=firm.bob_account).exists()


def test_the_scheduled_task_queues_one_snapshot_per_account(firm, monkeypatch):
    from risk import tasks

    queued = []
    monkeypatch.setattr(tasks.nav_snapshot, "delay", lambda *args: queued.append(args))
    assert tasks.nav_snapshot_all() == 3
    assert sorted(queued) == sorted(
        (pk, "schedule") for pk in (firm.company.pk, firm.alice_account.pk, firm.bob_account.pk)
    )
    killswitch_halt(
        account=firm.alice_account, actor=firm.owner, reason="x"
    )  # a halted account is still marked
    assert "alice: 0" in tasks.nav_snapshot(firm.alice_account.pk, "schedule")
