"""The learning admin: models readable by members, promotion only by directors; thresholds scoped to
their account (outsider 404, viewer 403, director through the audited service)."""

import pytest
from django.urls import reverse

from accounts.models import User
from governance.models import AuditEvent
from learning import services
from learning.models import ModelVersion, StrategyThresholds
from tests.factories import UserFactory
from tests.learning.test_registry import register, trained  # noqa: F401  (module fixture)

CHANGELIST = "admin:learning_modelversion_changelist"


@pytest.fixture
def as_user(client):
    def login(user: User):
        client.force_login(user)
        return client

    return login


def test_members_read_the_registry_staff_without_a_role_do_not(firm, as_user, trained):  # noqa: F811
    version = register(trained, score=0.5)
    for user in (firm.owner, firm.viewer, firm.outsider):
        response = as_user(user).get(reverse(CHANGELIST))
        assert response.status_code == 200
        assert [row.pk for row in response.context["cl"].result_list] == [version.pk]
    stranger = UserFactory(username="erin")
    assert as_user(stranger).get(reverse(CHANGELIST)).status_code == 403


def test_only_directors_are_offered_and_may_run_the_promote_action(firm, as_user, trained):  # noqa: F811
    version = register(trained, score=0.5)
    viewer_page = as_user(firm.viewer).get(reverse(CHANGELIST))
    assert viewer_page.context["action_form"] is None  # no action is offered to a viewer
    as_user(firm.viewer).post(reverse(CHANGELIST), {"action": "promote", "_selected_action": [version.pk]})
    assert ModelVersion.objects.get(pk=version.pk).status == "candidate"

    director_page = as_user(firm.owner).get(reverse(CHANGELIST))
    assert "promote" in repr(director_page.context["action_form"].fields["action"].choices)
    response = as_user(firm.owner).post(
        reverse(CHANGELIST), {"action": "promote", "_selected_action": [version.pk]}
    )
    assert response.status_code == 302
    assert ModelVersion.objects.get(pk=version.pk).status == "champion"
    event = AuditEvent.objects.get(action="learning.model_promoted")
    assert event.actor == "user:alice"
    assert event.details["manual"] is True


def test_model_rows_cannot_be_edited_or_deleted_in_the_admin(firm, as_user, trained):  # noqa: F811
    version = register(trained, score=0.5)
    url = reverse("admin:learning_modelversion_change", args=[version.pk])
    client = as_user(firm.superuser)
    assert client.get(url).context["has_change_permission"] is False
    assert client.post(reverse("admin:learning_modelversion_delete", args=[version.pk])).status_code == 403


def test_thresholds_admin_is_scoped_to_the_account(firm, as_user):
    row = services.thresholds_ensure(actor=firm.owner, account=firm.alice_account)
    url = reverse("admin:learning_strategythresholds_change", args=[row.pk])
    assert as_user(firm.outsider).get(url).status_code == 404
    assert as_user(firm.director).get(url).status_code == 404  # director of other accounts only
    form = {name: str(value) for name, value in services.DEFAULT_THRESHOLDS.items()} | {
        "entry_probability": "0.6"
    }
    assert as_user(firm.viewer).post(url, form).status_code == 403
    assert (
        StrategyThresholds.objects.get(pk=row.pk).entry_probability
        == services.DEFAULT_THRESHOLDS["entry_probability"]
    )

    response = as_user(firm.owner).post(url, form)
    assert response.status_code == 302
    assert str(StrategyThresholds.objects.get(pk=row.pk).entry_probability) == "0.6000"
    event = AuditEvent.objects.get(action="learning.thresholds_set")
    assert event.actor == "user:alice"
    assert event.details["reason"] == "admin form"
