from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.admin import ScopedHistoryAdmin
from accounts.admin_scoping import AccountScopedAdminMixin, ReadOnlyAdminMixin
from accounts.selectors import user_can, user_has_role_anywhere
from risk.models import KillSwitch, NavSnapshot, RiskPolicy
from risk.services import (
    killswitch_halt,
    killswitch_rearm,
    killswitch_resume,
    policy_problems,
    risk_policy_for,
    risk_policy_update,
)


class RiskPolicyForm(forms.ModelForm):
    """Shows every problem the engine finds with the edited values before anything is saved."""

    class Meta:
        model = RiskPolicy
        fields = ("account", *RiskPolicy.EDITABLE)

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        candidate = RiskPolicy(**{name: cleaned.get(name) for name in RiskPolicy.EDITABLE})
        problems = policy_problems(candidate)
        if problems:
            raise ValidationError(problems)
        return cleaned


@admin.register(RiskPolicy)
class RiskPolicyAdmin(ScopedHistoryAdmin):
    """Directors edit; viewers read. Every save goes through ``risk_policy_update`` (validated, audited);
    history pages are read-only (no revert around the service)."""

    form = RiskPolicyForm
    list_display = (
        "account",
        "risk_per_trade_pct",
        "max_position_pct",
        "max_group_exposure_pct",
        "max_daily_drawdown_pct",
        "flatten_on_breach",
        "auto_rearm_at_day_change",
        "updated_at",
    )
    list_filter = ("flatten_on_breach", "auto_rearm_at_day_change", "trailing_enabled")
    list_select_related = ("account",)
    search_fields = ("account__name", "account__slug")
    fieldsets = (
        (None, {"fields": ("account",)}),
        (
            "Sizing and exposure",
            {
                "fields": (
                    "risk_per_trade_pct",
                    "volatility_target_pct",
                    "max_position_pct",
                    "max_group_exposure_pct",
                    "correlation_threshold",
                    "correlation_window",
                    "min_edge_pct",
                    "max_orders_per_minute",
                    "max_orders_per_hour",
                )
            },
        ),
        (
            "Exits",
            {
                "fields": (
                    ("stop_loss_kind", "stop_loss_value"),
                    ("take_profit_kind", "take_profit_value"),
                    "trailing_enabled",
                    ("trailing_kind", "trailing_value"),
                )
            },
        ),
        (
            "Kill switch",
            {"fields": ("max_daily_drawdown_pct", "flatten_on_breach", "auto_rearm_at_day_change")},
        ),
    )

    def get_readonly_fields(self, request, obj=None):
        return ("account",) if obj is not None else ()

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        changes = {name: form.cleaned_data[name] for name in RiskPolicy.EDITABLE if name in form.cleaned_data}
        if not change:
            risk_policy_for(account=obj.account, actor=request.user)
        updated = risk_policy_update(account=obj.account, actor=request.user, **changes)
        obj.pk = updated.pk
        obj.refresh_from_db()


@admin.register(KillSwitch)
class KillSwitchAdmin(ReadOnlyAdminMixin, ScopedHistoryAdmin):
    """Read-only; directors halt, resume and re-arm through the actions (each calls its service)."""

    list_display = (
        "account",
        "status",
        "tripped_on",
        "halted",
        "day",
        "day_high",
        "day_equity",
        "reason",
        "halt_reason",
        "updated_at",
    )
    list_filter = ("status", "halted")
    list_select_related = ("account",)
    search_fields = ("account__name", "account__slug", "reason", "halt_reason")
    actions = ("halt_entries", "resume_entries", "rearm_switch")

    def has_director_permission(self, request):
        return user_has_role_anywhere(user=request.user, action="change")

    def _each(self, request, queryset, verb: str, call) -> None:
        done = 0
        for switch in queryset.select_related("account"):
            if not user_can(user=request.user, account=switch.account, action="change"):
                self.message_user(request, f"You are not a director of {switch.account}.", messages.ERROR)
                continue
            try:
                call(switch.account)
            except (PermissionDenied, ValidationError) as exc:
                text = "; ".join(getattr(exc, "messages", [str(exc)]))
                self.message_user(request, f"{switch.account}: {text}", messages.ERROR)
                continue
            done += 1
        self.message_user(request, f"{done} account(s) {verb}.")

    @admin.action(description="Halt new entries (cancel open entry orders)", permissions=["director"])
    def halt_entries(self, request, queryset):
        self._each(
            request,
            queryset,
            "halted",
            lambda account: killswitch_halt(
                account=account, actor=request.user, reason=f"halted in the admin by {request.user}"
            ),
        )

    @admin.action(description="Resume new entries (lift a manual halt)", permissions=["director"])
    def resume_entries(self, request, queryset):
        self._each(
            request,
            queryset,
            "resumed",
            lambda account: killswitch_resume(
                account=account, actor=request.user, reason="resumed in the admin"
            ),
        )

    @admin.action(description="Re-arm the tripped kill switch", permissions=["director"])
    def rearm_switch(self, request, queryset):
        self._each(
            request,
            queryset,
            "re-armed",
            lambda account: killswitch_rearm(
                account=account, actor=request.user, reason="re-armed in the admin"
            ),
        )


@admin.register(NavSnapshot)
class NavSnapshotAdmin(ReadOnlyAdminMixin, AccountScopedAdminMixin, admin.ModelAdmin):
    list_display = (
        "taken_at",
        "account",
        "broker",
        "equity",
        "cash",
        "positions_value",
        "day_high",
        "drawdown_pct",
        "kill_switch_status",
        "reason",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "reason", "kill_switch_status")
    list_select_related = ("account",)
    date_hierarchy = "taken_at"
    show_full_result_count = False
