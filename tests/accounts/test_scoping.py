"""Row-level isolation in querysets and selectors, for every persona."""

import pytest
from django.contrib.auth.models import AnonymousUser
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404

from accounts.models import Account, Membership
from accounts.selectors import account_list, get_scoped_or_404, membership_list
from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.services import audit_record


def slugs(queryset):
    return sorted(queryset.values_list("slug", flat=True))


def test_accounts_for_user_by_persona(firm):
    assert slugs(Account.objects.for_user(firm.owner)) == ["alice", "firm"]
    assert slugs(Account.objects.for_user(firm.director)) == ["bob", "firm"]
    assert slugs(Account.objects.for_user(firm.viewer)) == ["alice"]
    assert slugs(Account.objects.for_user(firm.outsider)) == ["bob"]
    assert slugs(Account.objects.for_user(firm.superuser)) == ["alice", "bob", "firm"]
    assert slugs(Account.objects.for_user(AnonymousUser())) == []


def test_write_actions_are_scoped_to_director_roles(firm):
    assert slugs(Account.objects.for_user(firm.viewer, "change")) == []
    assert slugs(Account.objects.for_user(firm.owner, "change")) == ["alice", "firm"]
    assert slugs(Account.objects.for_user(firm.outsider, "delete")) == []


def test_inactive_users_see_nothing(firm):
    firm.owner.is_active = False
    firm.owner.save()
    assert slugs(Account.objects.for_user(firm.owner)) == []


def test_unknown_action_is_an_error(firm):
    with pytest.raises(ValueError, match="unknown action"):
        Account.objects.for_user(firm.owner, "launch")


def test_account_owned_rows_are_scoped(firm):
    alice_rows = Membership.objects.for_user(firm.viewer)
    assert {m.account.slug for m in alice_rows} == {"alice"}
    assert not Membership.objects.for_user(firm.outsider).filter(account=firm.alice_account).exists()
    assert Membership.objects.for_user(firm.superuser).count() == Membership.objects.count()


def test_get_scoped_or_404_personas(firm):
    lookup = {"pk": firm.alice_account.pk}
    assert (
        get_scoped_or_404(Account.objects, user=firm.owner, action="change", **lookup) == firm.alice_account
    )
    assert get_scoped_or_404(Account.objects, user=firm.viewer, action="view", **lookup) == firm.alice_account
    with pytest.raises(PermissionDenied):
        get_scoped_or_404(Account.objects, user=firm.viewer, action="change", **lookup)
    for stranger in (firm.director, firm.outsider):
        with pytest.raises(Http404):
            get_scoped_or_404(Account.objects, user=stranger, action="view", **lookup)
    membership = Membership.objects.get(user=firm.viewer)
    with pytest.raises(Http404):
        get_scoped_or_404(Membership.objects, user=firm.outsider, action="view", pk=membership.pk)
    with pytest.raises(PermissionDenied):
        get_scoped_or_404(Membership.objects, user=firm.viewer, action="delete", pk=membership.pk)


def test_audit_events_are_scoped_and_never_writable(firm):
    system = SystemActor("tests")
    with transaction.atomic():
        audit_record(actor=system, account=firm.alice_account, action="test.alice")
        audit_record(actor=system, account=firm.bob_account, action="test.bob")
        audit_record(actor=system, action="test.platform")

    def actions(user, action="view"):
        return sorted(AuditEvent.objects.for_user(user, action).values_list("action", flat=True))

    # Platform-wide events are for directors; viewers see only their accounts' events.
    assert actions(firm.owner) == ["test.alice", "test.platform"]
    assert actions(firm.director) == ["test.bob", "test.platform"]
    assert actions(firm.viewer) == ["test.alice"]
    assert actions(firm.outsider) == ["test.bob"]
    assert actions(firm.superuser) == ["test.alice", "test.bob", "test.platform"]
    assert actions(firm.superuser, "change") == []
    assert actions(AnonymousUser()) == []


def test_list_selectors_use_a_constant_number_of_queries(firm, django_assert_num_queries):
    with django_assert_num_queries(1):
        assert len(list(account_list(user=firm.owner))) == 2
    with django_assert_num_queries(1):
        rows = list(membership_list(user=firm.superuser))
        assert [str(row) for row in rows]  # touches user and account: select_related keeps it one query
