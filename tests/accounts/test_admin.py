"""The admin is scoped like every other read: outsiders get 404, viewers read but may not write (403)."""

import pytest
from django.urls import reverse

from accounts.models import Account, Membership
from accounts.roles import Role
from governance.models import AuditEvent


def change_url(obj):
    return reverse(f"admin:{obj._meta.app_label}_{obj._meta.model_name}_change", args=[obj.pk])


@pytest.fixture
def as_user(client):
    def login(user):
        client.force_login(user)
        return client

    return login


def test_changelist_lists_only_the_users_accounts(firm, as_user):
    response = as_user(firm.viewer).get(reverse("admin:accounts_account_changelist"))
    assert response.status_code == 200
    listed = {account.slug for account in response.context["cl"].result_list}
    assert listed == {"alice"}


def test_outsider_gets_404_on_another_accounts_pages(firm, as_user):
    client = as_user(firm.outsider)
    account = firm.alice_account
    for url in (
        change_url(account),
        reverse("admin:accounts_account_history", args=[account.pk]),
        change_url(Membership.objects.get(user=firm.viewer)),
    ):
        response = client.get(url)
        assert response.status_code == 404, url
        assert b"Alice" not in response.content


def test_director_of_other_accounts_gets_404_too(firm, as_user):
    response = as_user(firm.director).get(change_url(firm.alice_account))
    assert response.status_code == 404


def test_viewer_reads_but_may_not_write(firm, as_user):
    client = as_user(firm.viewer)
    url = change_url(firm.alice_account)
    page = client.get(url)
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    response = client.post(url, {"name": "Hijacked", "trading_enabled": ""})
    assert response.status_code == 403
    firm.alice_account.refresh_from_db()
    assert (firm.alice_account.name, firm.alice_account.trading_enabled) == ("Alice", True)


def test_viewer_may_not_add_memberships(firm, as_user):
    client = as_user(firm.viewer)
    response = client.post(
        reverse("admin:accounts_membership_add"),
        {"account": firm.alice_account.pk, "user": firm.viewer.pk, "role": Role.DIRECTOR},
    )
    assert response.status_code == 403
    assert Membership.objects.get(user=firm.viewer).role == Role.VIEWER


def test_director_change_goes_through_the_service_and_is_audited(firm, as_user):
    client = as_user(firm.owner)
    response = client.post(change_url(firm.alice_account), {"name": "Alice Capital", "trading_enabled": ""})
    assert response.status_code == 302
    firm.alice_account.refresh_from_db()
    assert firm.alice_account.name == "Alice Capital"
    assert firm.alice_account.trading_enabled is False
    actions = list(
        AuditEvent.objects.filter(account=firm.alice_account).order_by("seq").values_list("action", "actor")
    )
    assert actions == [("account.renamed", "user:alice"), ("account.trading_disabled", "user:alice")]
    assert firm.alice_account.history.first().history_user == firm.owner


def test_simulation_mode_is_not_editable_in_the_admin(firm, as_user):
    client = as_user(firm.owner)
    client.post(
        change_url(firm.alice_account), {"name": "Alice", "trading_enabled": "on", "simulation_mode": ""}
    )
    firm.alice_account.refresh_from_db()
    assert firm.alice_account.simulation_mode is True


def test_membership_add_offers_only_accounts_the_user_directs(firm, as_user):
    client = as_user(firm.owner)
    page = client.get(reverse("admin:accounts_membership_add"))
    offered = set(page.context["adminform"].form.fields["account"].queryset.values_list("slug", flat=True))
    assert offered == {"alice", "firm"}
    response = client.post(
        reverse("admin:accounts_membership_add"),
        {"account": firm.bob_account.pk, "user": firm.viewer.pk, "role": Role.VIEWER},
    )
    assert response.status_code == 200  # form error: not a valid choice
    assert not Membership.objects.filter(account=firm.bob_account, user=firm.viewer).exists()


def test_trading_action_changes_only_accounts_the_user_directs(firm, as_user):
    # carol directs an account of her own and only views alice's: the action is offered, but alice's
    # account must be left alone.
    carols = Account.objects.create(name="Carol", slug="carol", kind=Account.Kind.DIRECTOR)
    Membership.objects.create(user=firm.viewer, account=carols, role=Role.DIRECTOR)
    client = as_user(firm.viewer)
    response = client.post(
        reverse("admin:accounts_account_changelist"),
        {"action": "disable_trading", "_selected_action": [firm.alice_account.pk, carols.pk]},
        follow=True,
    )
    notes = [str(m) for m in response.context["messages"]]
    assert any("not a director of Alice" in note for note in notes), notes
    firm.alice_account.refresh_from_db()
    carols.refresh_from_db()
    assert firm.alice_account.trading_enabled is True
    assert carols.trading_enabled is False
    assert AuditEvent.objects.filter(account=carols, action="account.trading_disabled").count() == 1
    assert not AuditEvent.objects.filter(account=firm.alice_account).exists()


def test_last_director_cannot_be_removed_from_the_admin(firm, as_user):
    client = as_user(firm.owner)
    membership = Membership.objects.get(user=firm.owner, account=firm.alice_account)
    response = client.post(reverse("admin:accounts_membership_delete", args=[membership.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert Membership.objects.filter(pk=membership.pk).exists()


def test_history_pages_are_read_only(firm, as_user):
    client = as_user(firm.superuser)
    record = firm.alice_account.history.first()
    url = reverse("admin:accounts_account_simple_history", args=[firm.alice_account.pk, record.history_id])
    assert client.get(url).status_code == 200
    assert client.post(url, {"name": "Reverted"}).status_code == 403


def test_accounts_are_never_deleted_from_the_admin(firm, as_user):
    client = as_user(firm.superuser)
    response = client.post(
        reverse("admin:accounts_account_delete", args=[firm.alice_account.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert Account.objects.filter(pk=firm.alice_account.pk).exists()


def test_membership_form_never_offers_superusers(firm, as_user):
    page = as_user(firm.owner).get(reverse("admin:accounts_membership_add"))
    offered = set(page.context["adminform"].form.fields["user"].queryset.values_list("username", flat=True))
    assert "root" not in offered
    assert {"carol", "dave"} <= offered


def test_user_admin_is_for_superusers_only(firm, as_user):
    assert as_user(firm.owner).get(reverse("admin:accounts_user_changelist")).status_code == 403


def test_user_edits_in_the_admin_are_audited_with_history(firm, as_user):
    client = as_user(firm.superuser)
    user = firm.viewer
    url = reverse("admin:accounts_user_change", args=[user.pk])
    form = client.get(url).context["adminform"].form
    data = {name: value for name, value in form.initial.items() if value is not None and name != "password"}
    data.update(is_superuser="on", is_staff="on", is_active="on", groups=[], user_permissions=[])
    data.pop("last_login", None)
    data["date_joined_0"], data["date_joined_1"] = user.date_joined.strftime("%Y-%m-%d"), "00:00:00"
    response = client.post(url, data)
    assert response.status_code == 302, response.context["adminform"].form.errors
    event = AuditEvent.objects.get(action="user.changed")
    assert event.actor == "user:root"
    assert event.details["superuser"] is True
    assert "is_superuser" in event.details["changed"]
    assert user.history.first().history_user == firm.superuser

    password_url = reverse("admin:auth_user_password_change", args=[user.pk])
    response = client.post(
        password_url, {"password1": "a-new-long-password-42", "password2": "a-new-long-password-42"}
    )
    assert response.status_code == 302
    changed = AuditEvent.objects.get(action="user.password_changed")
    assert "a-new-long-password-42" not in changed.details_json
