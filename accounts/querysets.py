"""Row-level scoping. Every read of account-owned data starts from ``for_user(user, action)``.

Superusers see everything; an anonymous or inactive user sees nothing; anybody else sees the rows of the
accounts where their membership's role allows ``action`` (see :mod:`accounts.roles`).
"""

from __future__ import annotations

from django.apps import apps
from django.db import models

from accounts.roles import roles_for


def unrestricted(user) -> bool | None:
    """True: every row; False: no row; None: filter by membership."""
    if user is None or not user.is_authenticated or not user.is_active:
        return False
    if user.is_superuser:
        return True
    return None


def member_account_ids(user, action: str) -> models.QuerySet:
    """A subquery of the ids of accounts where ``user`` holds a role that allows ``action``."""
    membership = apps.get_model("accounts", "Membership")
    return membership.objects.filter(user=user, role__in=roles_for(action)).values("account_id")


class ScopedQuerySet(models.QuerySet):
    """``for_user`` over the field named by ``scope_field`` (an account id)."""

    scope_field = "account_id"

    def for_user(self, user, action: str = "view"):
        roles_for(action)
        everything = unrestricted(user)
        if everything is not None:
            return self if everything else self.none()
        return self.filter(**{f"{self.scope_field}__in": member_account_ids(user, action)})


class AccountQuerySet(ScopedQuerySet):
    scope_field = "pk"


class AccountOwnedQuerySet(ScopedQuerySet):
    scope_field = "account_id"
