from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError

from accounts.admin import ScopedHistoryAdmin
from accounts.admin_scoping import AccountScopedAdminMixin, ReadOnlyAdminMixin
from accounts.selectors import user_can, user_has_role_anywhere
from hedging.models import HedgePolicy, HedgeSnapshot
from hedging.services import (
    hedge_evaluate,
    hedge_policy_for,
    hedge_policy_problems,
    hedge_policy_update,
    hedge_set_auto,
    hedge_set_manual,
)


class HedgePolicyForm(forms.ModelForm):
    """The automatic target's parameters, checked by the core before anything is saved, and an optional
    override: a director sets a manual target (with an optional expiry) or goes back to automatic; each
    goes through its service (audited), never straight to the row."""

    OVERRIDE_CHOICES = (
        ("", "keep the mode as it is"),
        ("manual", "set a manual target"),
        ("auto", "back to the automatic target"),
    )
    override = forms.ChoiceField(choices=OVERRIDE_CHOICES, required=False, label="Override")
    new_manual_target_pct = forms.DecimalField(
        required=False, min_value=0, max_value=100, label="Manual target (% of equity in USD)"
    )
    new_manual_expires_at = forms.DateTimeField(required=False, label="Manual target expires at")
    override_reason = forms.CharField(required=False, widget=forms.Textarea(attrs={"rows": 2}), label="Why")

    class Meta:
        model = HedgePolicy
        fields = ("account", *HedgePolicy.EDITABLE)

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        candidate = HedgePolicy(**{name: cleaned.get(name) for name in HedgePolicy.EDITABLE})
        problems = hedge_policy_problems(candidate)
        if problems:
            raise ValidationError(problems)
        if cleaned.get("override") == "manual":
            if cleaned.get("new_manual_target_pct") is None:
                self.add_error("new_manual_target_pct", "a manual override needs a target")
            if not (cleaned.get("override_reason") or "").strip():
                self.add_error("override_reason", "say why the hedge is overridden")
        return cleaned


@admin.register(HedgePolicy)
class HedgePolicyAdmin(ScopedHistoryAdmin):
    """Directors edit; viewers read. Parameter changes go through ``hedge_policy_update``, overrides
    through ``hedge_set_manual`` / ``hedge_set_auto`` (validated, audited); history pages are read-only."""

    form = HedgePolicyForm
    list_display = (
        "account",
        "mode",
        "manual_target_pct",
        "manual_expires_at",
        "floor_pct",
        "ceiling_pct",
        "band_pct",
        "min_interval",
        "updated_at",
    )
    list_filter = ("mode", "order_by")
    list_select_related = ("account",)
    search_fields = ("account__name", "account__slug", "manual_reason")
    readonly_fields = ("mode", "manual_target_pct", "manual_expires_at", "manual_reason")
    actions = ("set_automatic", "evaluate_now")
    fieldsets = (
        (None, {"fields": ("account",)}),
        ("Mode", {"fields": ("mode", "manual_target_pct", "manual_expires_at", "manual_reason")}),
        (
            "Override",
            {"fields": ("override", "new_manual_target_pct", "new_manual_expires_at", "override_reason")},
        ),
        ("Bounds", {"fields": ("floor_pct", "ceiling_pct")}),
        (
            "Volatility",
            {"fields": ("vol_weight", "vol_calm_ratio", "vol_turmoil_ratio", "vol_window", "vol_lookback")},
        ),
        (
            "Drawdown",
            {
                "fields": (
                    "drawdown_weight",
                    "drawdown_start_pct",
                    "drawdown_full_pct",
                    "drawdown_lookback_days",
                    "killswitch_warn_ratio",
                )
            },
        ),
        ("Rebalancing", {"fields": ("band_pct", "min_interval", "order_by")}),
    )

    def get_readonly_fields(self, request, obj=None):
        fields = self.readonly_fields
        return ("account", *fields) if obj is not None else fields

    def has_delete_permission(self, request, obj=None):
        return False

    def save_model(self, request, obj, form, change):
        data = form.cleaned_data
        changes = {name: data[name] for name in HedgePolicy.EDITABLE if name in data}
        account = obj.account
        if not change:
            hedge_policy_for(account=account, actor=request.user)
        updated = hedge_policy_update(account=account, actor=request.user, **changes)
        reason = (data.get("override_reason") or "").strip()
        if data.get("override") == "manual":
            updated = hedge_set_manual(
                account=account,
                actor=request.user,
                target_pct=data["new_manual_target_pct"],
                expires_at=data.get("new_manual_expires_at"),
                reason=reason,
            )
        elif data.get("override") == "auto":
            updated = hedge_set_auto(account=account, actor=request.user, reason=reason or "set in the admin")
        obj.pk = updated.pk
        obj.refresh_from_db()

    def has_director_permission(self, request):
        return user_has_role_anywhere(user=request.user, action="change")

    def _each(self, request, queryset, verb: str, call) -> None:
        done = 0
        for policy in queryset.select_related("account"):
            if not user_can(user=request.user, account=policy.account, action="change"):
                self.message_user(request, f"You are not a director of {policy.account}.", messages.ERROR)
                continue
            try:
                text = call(policy.account)
            except (PermissionDenied, ValidationError) as exc:
                problem = "; ".join(getattr(exc, "messages", [str(exc)]))
                self.message_user(request, f"{policy.account}: {problem}", messages.ERROR)
                continue
            if text:
                self.message_user(request, f"{policy.account}: {text}")
            done += 1
        self.message_user(request, f"{done} account(s) {verb}.")

    @admin.action(
        description="Back to the automatic target (end a manual override)", permissions=["director"]
    )
    def set_automatic(self, request, queryset):
        self._each(
            request,
            queryset,
            "set to automatic",
            lambda account: (
                hedge_set_auto(account=account, actor=request.user, reason="set in the admin") and ""
            ),
        )

    @admin.action(description="Evaluate the hedge now (rebalance when due)", permissions=["director"])
    def evaluate_now(self, request, queryset):
        self._each(
            request,
            queryset,
            "evaluated",
            lambda account: hedge_evaluate(account=account, actor=request.user).summary(),
        )


@admin.register(HedgeSnapshot)
class HedgeSnapshotAdmin(ReadOnlyAdminMixin, AccountScopedAdminMixin, admin.ModelAdmin):
    """The hedge history: read-only for everyone; members see their accounts' rows."""

    list_display = (
        "taken_at",
        "account",
        "event",
        "mode",
        "target_pct",
        "auto_target_pct",
        "actual_pct",
        "equity",
        "reason",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "event", "mode")
    list_select_related = ("account",)
    search_fields = ("account__name", "account__slug", "reason")
    date_hierarchy = "taken_at"
    show_full_result_count = False
