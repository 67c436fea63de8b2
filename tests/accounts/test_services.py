"""Account and membership services: one transaction, an audit event and a history row for each change."""

import pytest
from django.core.exceptions import PermissionDenied, ValidationError

from accounts import services
from accounts.models import Account, Membership
from accounts.roles import Role
from governance.actors import SystemActor
from governance.models import AuditEvent
from governance.selectors import audit_chain_verify
from tests.factories import UserFactory

SYSTEM = SystemActor("tests")


def test_account_create_audits_and_records_history(db):
    account = services.account_create(actor=SYSTEM, name="Firm", slug="firm", kind=Account.Kind.COMPANY)
    assert account.simulation_mode is True
    assert account.base_currency == "USD"
    event = AuditEvent.objects.get(action="account.created")
    assert event.account == account
    assert event.details == {"kind": "company", "name": "Firm", "simulation_mode": True, "slug": "firm"}
    assert account.history.count() == 1


def test_only_superusers_and_system_create_accounts(firm):
    with pytest.raises(PermissionDenied):
        services.account_create(actor=firm.owner, name="Shadow", slug="shadow", kind=Account.Kind.DIRECTOR)
    assert not Account.objects.filter(slug="shadow").exists()


def test_account_create_rejects_invalid_values(db):
    with pytest.raises(ValidationError):
        services.account_create(actor=SYSTEM, name="X", slug="x", kind="hedge-fund")
    assert AuditEvent.objects.count() == 0


def test_viewer_cannot_change_an_account(firm):
    with pytest.raises(PermissionDenied):
        services.account_set_trading_enabled(actor=firm.viewer, account=firm.alice_account, enabled=False)
    with pytest.raises(PermissionDenied):
        services.account_rename(actor=firm.outsider, account=firm.alice_account, name="Mine")
    firm.alice_account.refresh_from_db()
    assert (firm.alice_account.name, firm.alice_account.trading_enabled) == ("Alice", True)
    assert AuditEvent.objects.count() == 0


def test_trading_switch_is_audited_with_before_and_after(firm):
    services.account_set_trading_enabled(
        actor=firm.owner, account=firm.alice_account, enabled=False, reason="test"
    )
    event = AuditEvent.objects.get()
    assert (event.action, event.actor_user) == ("account.trading_disabled", firm.owner)
    assert event.details == {"after": False, "before": True, "reason": "test"}
    latest = firm.alice_account.history.first()
    assert (latest.trading_enabled, latest.history_user) == (False, firm.owner)
    # Setting the same value again changes and audits nothing.
    services.account_set_trading_enabled(actor=firm.owner, account=firm.alice_account, enabled=False)
    assert AuditEvent.objects.count() == 1


def test_membership_lifecycle_is_audited(firm):
    erin = UserFactory(username="erin")
    membership = services.membership_add(
        actor=firm.owner, account=firm.alice_account, user=erin, role=Role.VIEWER
    )
    services.membership_set_role(actor=firm.owner, membership=membership, role=Role.DIRECTOR)
    services.membership_remove(actor=firm.owner, membership=membership)
    assert list(AuditEvent.objects.order_by("seq").values_list("action", flat=True)) == [
        "membership.added",
        "membership.role_changed",
        "membership.removed",
    ]
    assert not Membership.objects.filter(user=erin).exists()
    assert Membership.history.filter(user=erin).count() == 3
    assert audit_chain_verify() is None


def test_duplicate_membership_is_refused(firm):
    with pytest.raises(ValidationError):
        services.membership_add(
            actor=firm.owner, account=firm.alice_account, user=firm.viewer, role=Role.DIRECTOR
        )


def test_an_account_is_never_left_without_a_director(firm):
    only_director = Membership.objects.get(user=firm.owner, account=firm.alice_account)
    with pytest.raises(ValidationError, match="without a director"):
        services.membership_remove(actor=firm.owner, membership=only_director)
    with pytest.raises(ValidationError, match="without a director"):
        services.membership_set_role(actor=firm.owner, membership=only_director, role=Role.VIEWER)
    # The company account has two directors, so one may step down.
    company_seat = Membership.objects.get(user=firm.owner, account=firm.company)
    services.membership_set_role(actor=firm.owner, membership=company_seat, role=Role.VIEWER)
    assert Membership.objects.get(pk=company_seat.pk).role == Role.VIEWER
