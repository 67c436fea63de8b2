from django.contrib import admin, messages
from django.contrib.admin import helpers
from django.contrib.admin.utils import unquote
from django.contrib.auth.admin import UserAdmin
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponseRedirect
from django.shortcuts import redirect
from django.template.response import TemplateResponse
from simple_history.admin import SimpleHistoryAdmin

from accounts import services
from accounts.admin_scoping import AccountScopedAdminMixin, ReadOnlyAdminMixin
from accounts.credential_services import is_director, kraken_credentials_validate
from accounts.credentials import CredentialError
from accounts.models import Account, KrakenCredential, Membership, User
from accounts.selectors import user_can, user_has_role_anywhere
from trading.services.mode import account_set_simulation


class ScopedHistoryAdmin(AccountScopedAdminMixin, SimpleHistoryAdmin):
    """History pages are read-only: a revert would write around the services and the audit trail."""

    def history_view(self, request, object_id, extra_context=None):
        if not request.user.is_superuser:
            self.get_object(request, unquote(object_id))  # 404 outside the user's accounts
        return super().history_view(request, object_id, extra_context)

    def history_form_view(self, request, object_id, version_id, extra_context=None):
        if not request.user.is_superuser:
            self.get_object(request, unquote(object_id))
        if request.method != "GET":
            raise PermissionDenied("History is read-only.")
        return super().history_form_view(request, object_id, version_id, extra_context)


def _report(modeladmin, request, exc: Exception) -> None:
    text = "; ".join(exc.messages) if isinstance(exc, ValidationError) else str(exc)
    modeladmin.message_user(request, text, level=messages.ERROR)


@admin.register(Account)
class AccountAdmin(ScopedHistoryAdmin):
    list_display = (
        "name",
        "slug",
        "kind",
        "simulation_mode",
        "trading_enabled",
        "base_currency",
        "created_at",
    )
    list_filter = ("kind", "simulation_mode", "trading_enabled")
    search_fields = ("name", "slug")
    ordering = ("name",)
    actions = ("enable_trading", "disable_trading", "switch_to_simulation", "switch_to_live")

    def has_add_permission(self, request):
        return request.user.is_active and request.user.is_superuser

    def has_delete_permission(self, request, obj=None):
        return False  # accounts own orders, fills and audit events; they are never deleted

    def get_fields(self, request, obj=None):
        if obj is None:
            return ("name", "slug", "kind")
        return ("name", "slug", "kind", "base_currency", "simulation_mode", "trading_enabled", "created_at")

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Switching to live trading needs validated Kraken credentials and a confirmation; it is not a
        # checkbox on this form.
        return ("slug", "kind", "base_currency", "simulation_mode", "created_at")

    def save_model(self, request, obj, form, change):
        if not change:
            created = services.account_create(actor=request.user, name=obj.name, slug=obj.slug, kind=obj.kind)
            obj.pk, obj.created_at = created.pk, created.created_at
            return
        data = form.cleaned_data
        if "name" in form.changed_data:
            services.account_rename(actor=request.user, account=obj, name=data["name"])
        if "trading_enabled" in form.changed_data:
            services.account_set_trading_enabled(
                actor=request.user, account=obj, enabled=data["trading_enabled"], reason="admin form"
            )

    def _set_trading(self, request, queryset, enabled: bool) -> None:
        changed = 0
        for account in queryset:
            if not user_can(user=request.user, account=account, action="change"):
                self.message_user(
                    request, f"You are not a director of {account}; it was left as it was.", messages.ERROR
                )
                continue
            services.account_set_trading_enabled(
                actor=request.user, account=account, enabled=enabled, reason="admin action"
            )
            changed += 1
        self.message_user(
            request, f"Trading {'enabled' if enabled else 'disabled'} for {changed} account(s)."
        )

    @admin.action(description="Enable trading", permissions=["change"])
    def enable_trading(self, request, queryset):
        self._set_trading(request, queryset, True)

    @admin.action(description="Disable trading (no new positions)", permissions=["change"])
    def disable_trading(self, request, queryset):
        self._set_trading(request, queryset, False)

    @admin.action(description="Switch to simulation", permissions=["change"])
    def switch_to_simulation(self, request, queryset):
        for account in queryset:
            try:
                result = account_set_simulation(account=account, enabled=True, actor=request.user)
            except (PermissionDenied, ValidationError) as exc:
                _report(self, request, exc)
                continue
            self.message_user(
                request, result.message, messages.WARNING if result.open_live_orders else messages.INFO
            )

    @admin.action(description="Switch to live trading on Kraken…", permissions=["change"])
    def switch_to_live(self, request, queryset):
        """One account at a time, through a confirmation page where the director types the slug."""
        accounts = list(queryset[:2])
        if len(accounts) != 1:
            self.message_user(
                request, "Select exactly one account to switch to live trading.", messages.ERROR
            )
            return None
        account = accounts[0]
        if not is_director(request.user, account):
            self.message_user(
                request, f"Only a director of {account} may turn live trading on.", messages.ERROR
            )
            return None
        if request.POST.get("post") == "yes":
            try:
                result = account_set_simulation(
                    account=account,
                    enabled=False,
                    actor=request.user,
                    confirm=request.POST.get("confirm_slug", ""),
                )
            except (PermissionDenied, ValidationError) as exc:
                _report(self, request, exc)
                return None
            self.message_user(request, result.message, messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Switch {account} to live trading",
            "opts": self.model._meta,
            "account": account,
            "credential": KrakenCredential.objects.filter(account=account).first(),
            "action_checkbox_name": helpers.ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/accounts/account/switch_to_live.html", context)


@admin.register(Membership)
class MembershipAdmin(ScopedHistoryAdmin):
    list_display = ("user", "account", "role", "created_at")
    list_filter = ("role", "account__kind", ("account", admin.RelatedOnlyFieldListFilter))
    search_fields = ("user__username", "user__email", "account__name", "account__slug")
    list_select_related = ("user", "account")
    actions = ("remove_memberships",)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)  # removal goes through the service, one audit event each
        return actions

    def get_fields(self, request, obj=None):
        return ("account", "user", "role")

    def formfield_for_foreignkey(self, db_field, request, **kwargs):
        if db_field.name == "user":
            # Superusers see everything anyway; a membership would mean nothing for them.
            kwargs["queryset"] = User.objects.filter(is_active=True, is_superuser=False).order_by("username")
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return ("account", "user") if obj is not None else ()

    def save_model(self, request, obj, form, change):
        if change:
            services.membership_set_role(actor=request.user, membership=obj, role=form.cleaned_data["role"])
            return
        created = services.membership_add(
            actor=request.user, account=obj.account, user=obj.user, role=obj.role
        )
        obj.pk, obj.created_at = created.pk, created.created_at

    def delete_model(self, request, obj):
        services.membership_remove(actor=request.user, membership=obj)

    def delete_view(self, request, object_id, extra_context=None):
        try:
            return super().delete_view(request, object_id, extra_context)
        except ValidationError as exc:
            _report(self, request, exc)
            return redirect("admin:accounts_membership_change", object_id)

    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        try:
            return super().changeform_view(request, object_id, form_url, extra_context)
        except ValidationError as exc:
            _report(self, request, exc)
            return HttpResponseRedirect(request.path)

    @admin.action(description="Remove selected memberships", permissions=["delete"])
    def remove_memberships(self, request, queryset):
        removed = 0
        for membership in queryset.select_related("account", "user"):
            try:
                services.membership_remove(actor=request.user, membership=membership)
                removed += 1
            except (PermissionDenied, ValidationError) as exc:
                _report(self, request, exc)
        self.message_user(request, f"Removed {removed} membership(s).")


@admin.register(User)
class AetherUserAdmin(SimpleHistoryAdmin, UserAdmin):
    """People are managed by superusers (Django's model permissions hide this page from everyone else);
    directors grant access to their accounts through memberships. Every change is audited."""

    list_display = ("username", "email", "first_name", "last_name", "is_staff", "is_superuser", "is_active")

    def save_model(self, request, obj, form, change):
        services.user_save(actor=request.user, user=obj, created=not change, changed_fields=form.changed_data)

    def delete_model(self, request, obj):
        services.user_delete(actor=request.user, user=obj)

    def delete_queryset(self, request, queryset):
        for user in queryset:
            services.user_delete(actor=request.user, user=user)

    def user_change_password(self, request, id, form_url=""):
        with transaction.atomic():
            response = super().user_change_password(request, id, form_url)
            if request.method == "POST" and response.status_code == 302:
                services.user_password_changed(actor=request.user, user=User.objects.get(pk=unquote(id)))
        return response


@admin.register(KrakenCredential)
class KrakenCredentialAdmin(ReadOnlyAdminMixin, ScopedHistoryAdmin):
    """Where each account's Kraken key is kept and what Kraken last said about it; never the key. Keys are
    set with ``manage.py set_kraken_key`` (read from standard input)."""

    list_display = (
        "account",
        "store",
        "fingerprint",
        "validation_ok",
        "validated_at",
        "validation_message",
        "updated_at",
    )
    list_filter = ("store", "validation_ok")
    search_fields = ("account__name", "account__slug", "fingerprint")
    list_select_related = ("account",)
    fields = (
        "account",
        "store",
        "reference",
        "fingerprint",
        "validation_ok",
        "validated_at",
        "validation_message",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields
    actions = ("revalidate",)

    def has_validate_permission(self, request) -> bool:
        return user_has_role_anywhere(user=request.user, action="change")

    @admin.action(description="Check the key with Kraken now", permissions=["validate"])
    def revalidate(self, request, queryset):
        for credential in queryset.select_related("account"):
            try:
                checked = kraken_credentials_validate(account=credential.account, actor=request.user)
            except (PermissionDenied, CredentialError) as exc:
                _report(self, request, exc)
                continue
            verdict = "accepted" if checked.validation_ok else f"refused: {checked.validation_message}"
            level = messages.INFO if checked.validation_ok else messages.ERROR
            self.message_user(request, f"{credential.account}: key {checked.fingerprint} {verdict}", level)
