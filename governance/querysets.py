from __future__ import annotations

from django.db import models
from django.db.models import Q

from accounts.querysets import member_account_ids, unrestricted
from accounts.roles import Role


class AuditEventQuerySet(models.QuerySet):
    def for_user(self, user, action: str = "view") -> AuditEventQuerySet:
        """Members read their accounts' events; directors also read platform-wide ones (account empty);
        nobody may change any."""
        if action != "view":
            return self.none()
        everything = unrestricted(user)
        if everything is not None:
            return self if everything else self.none()
        scope = Q(account_id__in=member_account_ids(user, "view"))
        if user.memberships.filter(role=Role.DIRECTOR).exists():
            scope |= Q(account__isnull=True)
        return self.filter(scope)
