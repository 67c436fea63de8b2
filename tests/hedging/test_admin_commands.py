"""The hedge admin (scoped; edits and overrides through the services; history read-only) and the commands."""

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
from hedging.models import HedgePolicy, HedgeSnapshot
from hedging.services import hedge_policy_for


@pytest.fixture
def staff(firm):
    for user in (firm.owner, firm.director, firm.viewer, firm.outsider):
        user.is_staff = True
        user.save()
    return firm


@pytest.fixture
def rows(staff):
    made = {}
    now = timezone.now()
    for slug, account in (("alice", staff.alice_account), ("bob", staff.bob_account)):
        made[f"{slug}_policy"] = hedge_policy_for(account=account)
        made[f"{slug}_snapshot"] = HedgeSnapshot.objects.create(
            account=account,
            taken_at=now,
            event="target_changed",
            mode="auto",
            target_pct=D(10),
            reason="test",
        )
    return made


def change_url(obj):
    return reverse(f"admin:hedging_{obj._meta.model_name}_change", args=[obj.pk])


def policy_form(policy: HedgePolicy, **changes) -> dict:
    data = {
        key: ("" if value is None else value)
        for key, value in model_to_dict(policy, fields=HedgePolicy.EDITABLE).items()
    }
    data["min_interval"] = "04:00:00"
    data.update(changes)
    return data


@pytest.mark.parametrize(
    ("persona", "sees_alice", "sees_bob"),
    [("owner", True, False), ("viewer", True, False), ("outsider", False, True), ("superuser", True, True)],
)
def test_each_hedge_admin_shows_only_the_users_accounts(client, rows, firm, persona, sees_alice, sees_bob):
    client.force_login(getattr(firm, persona))
    for model_name, key in (("hedgepolicy", "alice_policy"), ("hedgesnapshot", "alice_snapshot")):
        page = client.get(reverse(f"admin:hedging_{model_name}_changelist"))
        assert page.status_code == 200, model_name
        listed = {obj.account.slug for obj in page.context["cl"].result_list}
        assert ("alice" in listed) == sees_alice, model_name
        assert ("bob" in listed) == sees_bob, model_name
        assert client.get(change_url(rows[key])).status_code == (200 if sees_alice else 404), model_name


def test_snapshots_are_read_only_and_policy_history_cannot_be_reverted(client, rows, firm):
    client.force_login(firm.owner)
    assert client.get(change_url(rows["alice_snapshot"])).context["has_change_permission"] is False
    assert client.get(reverse("admin:hedging_hedgesnapshot_add")).status_code == 403
    policy = rows["alice_policy"]
    version = policy.history.first().history_id
    revert = reverse("admin:hedging_hedgepolicy_simple_history", args=[policy.pk, version])
    assert client.post(revert, policy_form(policy, floor_pct="50")).status_code == 403


def test_a_viewer_cannot_edit_the_policy(client, rows, firm):
    client.force_login(firm.viewer)
    policy = rows["alice_policy"]
    assert client.post(change_url(policy), policy_form(policy, floor_pct="20")).status_code == 403
    policy.refresh_from_db()
    assert policy.floor_pct == D(10)


def test_a_director_edits_and_overrides_through_the_services(client, rows, firm):
    client.force_login(firm.owner)
    policy = rows["alice_policy"]
    expires = timezone.now() + timedelta(days=1)
    response = client.post(
        change_url(policy),
        policy_form(
            policy,
            floor_pct="15",
            override="manual",
            new_manual_target_pct="60",
            new_manual_expires_at_0=expires.strftime("%Y-%m-%d"),
            new_manual_expires_at_1=expires.strftime("%H:%M:%S"),
            new_manual_expires_at=expires.isoformat(),
            override_reason="board decision",
        ),
    )
    assert response.status_code == 302, response.context["adminform"].form.errors if response.context else ""
    policy.refresh_from_db()
    assert (policy.floor_pct, policy.mode, policy.manual_target_pct) == (D(15), "manual", D(60))
    kinds = set(AuditEvent.objects.filter(account=firm.alice_account).values_list("action", flat=True))
    assert {"hedge_policy.updated", "hedge.manual_set"} <= kinds


def test_an_invalid_edit_shows_the_cores_sentences(client, rows, firm):
    client.force_login(firm.owner)
    policy = rows["alice_policy"]
    response = client.post(change_url(policy), policy_form(policy, floor_pct="90"))
    assert response.status_code == 200
    assert "is above the ceiling" in str(response.context["adminform"].form.non_field_errors())


def test_the_admin_action_goes_back_to_automatic_for_directors_only(client, rows, firm):
    from hedging.services import hedge_set_manual

    hedge_set_manual(account=firm.alice_account, actor=firm.owner, target_pct=D(50), reason="x")
    url = reverse("admin:hedging_hedgepolicy_changelist")
    policy = rows["alice_policy"]
    client.force_login(firm.viewer)
    client.post(url, {"action": "set_automatic", "_selected_action": [policy.pk]})
    policy.refresh_from_db()
    assert policy.mode == "manual"
    client.force_login(firm.owner)
    client.post(url, {"action": "set_automatic", "_selected_action": [policy.pk]})
    policy.refresh_from_db()
    assert policy.mode == "auto"


# --- Commands ----------------------------------------------------------------------------------------------


def run(name: str, *args) -> str:
    out = StringIO()
    call_command(name, *args, stdout=out, stderr=StringIO())
    return out.getvalue()


def test_the_override_commands(firm):
    expires = (timezone.now() + timedelta(hours=3)).isoformat()
    text = run(
        "hedge_set_manual",
        "--account",
        "alice",
        "--as-user",
        "alice",
        "--target-pct",
        "35",
        "--expires",
        expires,
        "--reason",
        "event risk",
    )
    assert "alice target 35.00 %" in text
    assert HedgePolicy.objects.get(account=firm.alice_account).mode == "manual"
    assert "automatic" in run("hedge_set_auto", "--account", "alice", "--as-user", "alice")
    assert HedgePolicy.objects.get(account=firm.alice_account).mode == "auto"
    with pytest.raises(CommandError, match="directors only") as refused:
        run(
            "hedge_set_manual",
            "--account",
            "alice",
            "--as-user",
            "carol",
            "--target-pct",
            "35",
            "--reason",
            "x",
        )
    assert refused.value.returncode == 1
    with pytest.raises(CommandError, match="needs a time zone") as usage:
        run(
            "hedge_set_manual",
            "--account",
            "alice",
            "--as-user",
            "alice",
            "--target-pct",
            "35",
            "--expires",
            "2030-01-01T00:00",
            "--reason",
            "x",
        )
    assert usage.value.returncode == 2


def test_the_report_command_needs_nav_snapshots(firm):
    with pytest.raises(CommandError, match="at least two are needed") as refused:
        run("hedge_report", "--account", "alice")
    assert refused.value.returncode == 1


def test_the_task_is_thin(book, celery_sent):
    from hedging.tasks import evaluate, evaluate_all

    assert evaluate_all() == 3
    assert [name for name, _, _ in celery_sent] == ["hedging.evaluate"] * 3
    summary = evaluate(book.account.pk)  # prices from the stored candles (DatabaseQuoteSource)
    assert summary.startswith("alice: target 10")
    assert HedgeSnapshot.objects.filter(account=book.account).exists()
