"""Reads of accounts and memberships, and the 404-or-403 rule for one object."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied
from django.http import Http404

from accounts.models import Account, Membership
from accounts.roles import roles_for


def account_role(*, user, account: Account) -> str | None:
    """The user's role in ``account`` (``None`` when not a member)."""
    if user is None or not user.is_authenticated:
        return None
    return Membership.objects.filter(user=user, account=account).values_list("role", flat=True).first()


def user_can(*, user, account: Account, action: str) -> bool:
    allowed = roles_for(action)
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return account_role(user=user, account=account) in allowed


def user_has_role_anywhere(*, user, action: str = "view") -> bool:
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return Membership.objects.filter(user=user, role__in=roles_for(action)).exists()


def get_scoped_or_404(queryset, *, user, action: str = "view", **lookup):
    """One object the user may see, else 404 (not a member: the object's existence is not revealed);
    403 when the user may see it but their role does not allow ``action``."""
    try:
        obj = queryset.for_user(user, "view").get(**lookup)
    except queryset.model.DoesNotExist:
        raise Http404(f"No {queryset.model._meta.verbose_name} matches the given query.") from None
    account = obj if isinstance(obj, Account) else obj.account
    if not user_can(user=user, account=account, action=action):
        raise PermissionDenied(f"Your role in {account} does not allow '{action}'.")
    return obj


def account_list(*, user):
    return Account.objects.for_user(user).order_by("name")


def membership_list(*, user, account: Account | None = None):
    memberships = Membership.objects.for_user(user).select_related("account", "user")
    if account is not None:
        memberships = memberships.filter(account=account)
    return memberships


def require_director(actor, account: Account, what: str, *, platform_allowed: bool = False) -> None:
    """Raise ``PermissionDenied`` unless ``actor`` is a director of ``account`` (a user who may change it).
    A platform component (``SystemActor``) passes only with ``platform_allowed``. ``what`` completes "may
    not … of <account>" in the message."""
    from governance.actors import SystemActor, actor_label

    if isinstance(actor, SystemActor):
        if platform_allowed:
            return
        raise PermissionDenied(f"{actor.label} may not {what} of {account}: a director of the account must.")
    if not user_can(user=actor, account=account, action="change"):
        raise PermissionDenied(f"{actor_label(actor)} may not {what} of {account}: directors only.")
