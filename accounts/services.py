"""The only writers of accounts and memberships. Each call is one transaction with its audit event."""

from __future__ import annotations

from django.contrib.auth.password_validation import validate_password
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction

from accounts.models import Account, Membership, User
from accounts.roles import Role
from accounts.selectors import user_can
from governance.actors import SystemActor, actor_user
from governance.services import audit_record


def _require(actor, account: Account, action: str) -> None:
    """System components act with the platform's authority; users need the role for ``action``."""
    if isinstance(actor, SystemActor):
        return
    if not user_can(user=actor, account=account, action=action):
        raise PermissionDenied(f"{actor} may not {action} {account}.")


def _history_user(obj, actor) -> None:
    obj._history_user = actor_user(actor)


def _lock_account(account: Account) -> Account:
    return Account.objects.select_for_update(no_key=True).get(pk=account.pk)


def user_create(*, actor, username: str, email: str, password: str, is_staff: bool = True) -> User:
    """A person who can sign in (staff: the admin). ``password`` must pass the password validators."""
    _require_superuser(actor, "create users")
    user = User(username=username, email=email, is_staff=is_staff)
    validate_password(password, user=user)
    user.set_password(password)
    user.full_clean()
    with transaction.atomic():
        user.save()
        audit_record(
            actor=actor, action="user.created", target=user, details={"username": username, "staff": is_staff}
        )
    return user


def _require_superuser(actor, what: str) -> None:
    if not isinstance(actor, SystemActor) and not (actor.is_active and actor.is_superuser):
        raise PermissionDenied(f"Only a superuser or a platform command may {what}.")


def user_save(*, actor, user: User, created: bool, changed_fields: list[str]) -> User:
    """Save a user edited in the admin (by a superuser), with an audit event naming what changed."""
    _require_superuser(actor, "edit users")
    with transaction.atomic():
        _history_user(user, actor)
        user.save()
        audit_record(
            actor=actor,
            action="user.created" if created else "user.changed",
            target=user,
            details={
                "username": user.get_username(),
                "changed": sorted(set(changed_fields) - {"password", "password1", "password2"}),
                "active": user.is_active,
                "staff": user.is_staff,
                "superuser": user.is_superuser,
            },
        )
    return user


def user_password_changed(*, actor, user: User) -> None:
    """Record that ``actor`` set ``user``'s password (the password itself is never recorded)."""
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="user.password_changed",
            target=user,
            details={"username": user.get_username()},
        )


def user_delete(*, actor, user: User) -> None:
    _require_superuser(actor, "delete users")
    with transaction.atomic():
        audit_record(
            actor=actor, action="user.deleted", target=user, details={"username": user.get_username()}
        )
        _history_user(user, actor)
        user.delete()


def account_create(*, actor, name: str, slug: str, kind: str) -> Account:
    _require_superuser(actor, "create accounts")
    account = Account(name=name, slug=slug, kind=kind)
    account.full_clean()
    with transaction.atomic():
        _history_user(account, actor)
        account.save()
        audit_record(
            actor=actor,
            account=account,
            action="account.created",
            target=account,
            details={"name": name, "slug": slug, "kind": kind, "simulation_mode": account.simulation_mode},
        )
    return account


def account_rename(*, actor, account: Account, name: str) -> Account:
    with transaction.atomic():
        account = _lock_account(account)
        _require(actor, account, "change")
        before = account.name
        if before == name:
            return account
        account.name = name
        account.full_clean()
        _history_user(account, actor)
        account.save(update_fields=["name"])
        audit_record(
            actor=actor,
            account=account,
            action="account.renamed",
            target=account,
            details={"before": before, "after": name},
        )
    return account


def account_set_trading_enabled(*, actor, account: Account, enabled: bool, reason: str = "") -> Account:
    with transaction.atomic():
        account = _lock_account(account)
        _require(actor, account, "change")
        if account.trading_enabled == enabled:
            return account
        account.trading_enabled = enabled
        _history_user(account, actor)
        account.save(update_fields=["trading_enabled"])
        audit_record(
            actor=actor,
            account=account,
            action="account.trading_enabled" if enabled else "account.trading_disabled",
            target=account,
            details={"before": not enabled, "after": enabled, "reason": reason},
        )
    return account


def membership_add(*, actor, account: Account, user: User, role: str) -> Membership:
    with transaction.atomic():
        account = _lock_account(account)
        _require(actor, account, "add")
        membership = Membership(account=account, user=user, role=role)
        membership.full_clean()
        _history_user(membership, actor)
        membership.save()
        audit_record(
            actor=actor,
            account=account,
            action="membership.added",
            target=membership,
            details={"user": user.get_username(), "role": role},
        )
    return membership


def _other_directors(membership: Membership) -> bool:
    return (
        Membership.objects.filter(account_id=membership.account_id, role=Role.DIRECTOR)
        .exclude(pk=membership.pk)
        .exists()
    )


def membership_set_role(*, actor, membership: Membership, role: str) -> Membership:
    with transaction.atomic():
        _lock_account(membership.account)
        membership = (
            Membership.objects.select_for_update(of=("self",))
            .select_related("account", "user")
            .get(pk=membership.pk)
        )
        _require(actor, membership.account, "change")
        before = membership.role
        if before == role:
            return membership
        if before == Role.DIRECTOR and not _other_directors(membership):
            raise ValidationError(f"{membership.account} would be left without a director.")
        membership.role = role
        membership.full_clean()
        _history_user(membership, actor)
        membership.save(update_fields=["role"])
        audit_record(
            actor=actor,
            account=membership.account,
            action="membership.role_changed",
            target=membership,
            details={"user": membership.user.get_username(), "before": before, "after": role},
        )
    return membership


def membership_remove(*, actor, membership: Membership) -> None:
    with transaction.atomic():
        _lock_account(membership.account)
        membership = (
            Membership.objects.select_for_update(of=("self",))
            .select_related("account", "user")
            .get(pk=membership.pk)
        )
        _require(actor, membership.account, "delete")
        if membership.role == Role.DIRECTOR and not _other_directors(membership):
            raise ValidationError(f"{membership.account} would be left without a director.")
        audit_record(
            actor=actor,
            account=membership.account,
            action="membership.removed",
            target=membership,
            details={"user": membership.user.get_username(), "role": membership.role},
        )
        _history_user(membership, actor)
        membership.delete()
