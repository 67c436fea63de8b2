"""The audit admin is read-only for everyone, superusers included, and scoped like the rest."""

import pytest
from django.db import transaction
from django.urls import reverse

from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.services import audit_record


@pytest.fixture
def events(firm):
    with transaction.atomic():
        return {
            "alice": audit_record(
                actor=SystemActor("tests"), account=firm.alice_account, action="test.alice"
            ),
            "bob": audit_record(actor=SystemActor("tests"), account=firm.bob_account, action="test.bob"),
        }


def test_superuser_cannot_add_change_or_delete(firm, events, client):
    client.force_login(firm.superuser)
    event = events["alice"]
    change = reverse("admin:governance_auditevent_change", args=[event.pk])
    page = client.get(change)
    assert page.status_code == 200
    assert page.context["has_change_permission"] is False
    assert client.post(change, {"action": "forged"}).status_code == 403
    assert client.get(reverse("admin:governance_auditevent_add")).status_code == 403
    assert (
        client.post(
            reverse("admin:governance_auditevent_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )
    assert AuditEvent.objects.get(pk=event.pk).action == "test.alice"


def test_members_see_only_their_accounts_events(firm, events, client):
    client.force_login(firm.viewer)
    listing = client.get(reverse("admin:governance_auditevent_changelist"))
    assert listing.status_code == 200
    assert {e.action for e in listing.context["cl"].result_list} == {"test.alice"}
    other = reverse("admin:governance_auditevent_change", args=[events["bob"].pk])
    assert client.get(other).status_code == 404


def test_changelist_filters_do_not_reveal_other_accounts(firm, events, client):
    client.force_login(firm.viewer)
    for name in ("admin:governance_auditevent_changelist", "admin:accounts_membership_changelist"):
        page = client.get(reverse(name)).content.decode()
        assert "Alice" in page, name
        assert "Bob" not in page, name
        assert "Firm" not in page, name
