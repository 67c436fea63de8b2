from __future__ import annotations

from django.db import models
from django.db.models import Q

from accounts.querysets import _unrestricted, member_account_ids


class AuditEventQuerySet(models.QuerySet):
    def for_user(self, user, action: str = "view") -> AuditEventQuerySet:
        """Members read their accounts' events and platform-wide ones; nobody may change any."""
        if action != "view":
            return self.none()
        unrestricted = _unrestricted(user)
        if unrestricted is not None:
            return self if unrestricted else self.none()
        return self.filter(Q(account_id__in=member_account_ids(user, "view")) | Q(account__isnull=True))
