"""Account scoping for every admin of account-owned data.

Superusers see everything. Other staff see only rows of the accounts they belong to: a row of another
account answers 404 (its existence is not revealed), and a viewer's attempt to write answers 403.
"""

from __future__ import annotations

from django.http import Http404

from accounts.models import Account
from accounts.selectors import user_can, user_has_role_anywhere


class AccountScopedAdminMixin:
    """For models with an ``account`` FK (or Account itself) whose manager has ``for_user``."""

    def row_account(self, obj) -> Account:
        return obj if isinstance(obj, Account) else obj.account

    def get_queryset(self, request):
        return super().get_queryset(request).for_user(request.user, "view")

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("No such object in your accounts.")
        return obj

    def _can(self, request, obj, action: str) -> bool:
        if obj is None:
            return user_has_role_anywhere(user=request.user, action=action)
        return user_can(user=request.user, account=self.row_account(obj), action=action)

    def has_module_permission(self, request):
        return user_has_role_anywhere(user=request.user, action="view")

    def has_view_permission(self, request, obj=None):
        return self._can(request, obj, "view")

    def has_change_permission(self, request, obj=None):
        return self._can(request, obj, "change")

    def has_add_permission(self, request):
        return user_has_role_anywhere(user=request.user, action="add")

    def has_delete_permission(self, request, obj=None):
        return self._can(request, obj, "delete")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "account":
            kwargs["queryset"] = Account.objects.for_user(request.user, "add")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)


class ReadOnlyAdminMixin:
    """Nobody adds, changes or deletes these rows in the admin, superusers included: services write them."""

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
