from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from simple_history.admin import SimpleHistoryAdmin

from accounts.admin import ScopedHistoryAdmin
from accounts.admin_scoping import ReadOnlyAdminMixin
from accounts.selectors import user_has_role_anywhere
from learning import services
from learning.errors import ArtifactIntegrityError, PromotionRefused
from learning.models import ModelVersion, RegimeObservation, StrategyThresholds


class SharedKnowledgeAdminMixin(ReadOnlyAdminMixin):
    """Models and regimes are shared by every account: any member reads them; services write them."""

    def has_module_permission(self, request):
        return user_has_role_anywhere(user=request.user)

    def has_view_permission(self, request, obj=None):
        return user_has_role_anywhere(user=request.user)


@admin.register(ModelVersion)
class ModelVersionAdmin(SharedKnowledgeAdminMixin, SimpleHistoryAdmin):
    list_display = (
        "id",
        "scope",
        "timeframe",
        "kind",
        "status",
        "oos_sharpe",
        "horizon",
        "training_end",
        "trained_by",
        "created_at",
        "promoted_at",
    )
    list_filter = ("status", "kind", "scope", "timeframe")
    search_fields = ("scope", "artifact_sha256", "data_sha256", "trained_by")
    ordering = ("-created_at", "-id")
    actions = ("promote", "rollback")

    @admin.display(description="OOS Sharpe")
    def oos_sharpe(self, obj):
        return None if obj.score is None else round(obj.score, 3)

    def has_promote_permission(self, request):
        """Directors (of any account) promote and roll back; viewers and outsiders only read."""
        return user_has_role_anywhere(user=request.user, action="change")

    def _run(self, request, call, describe) -> None:
        try:
            version = call()
        except (PromotionRefused, ArtifactIntegrityError, PermissionDenied, ValueError) as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, describe(version))

    @admin.action(description="Promote to champion (bypasses the gate; audited)", permissions=["promote"])
    def promote(self, request, queryset):
        for version in queryset:
            self._run(
                request,
                lambda version=version: services.model_promote(
                    actor=request.user, version=version, reason=f"admin action by {request.user}"
                ),
                lambda promoted: f"Model #{promoted.pk} is now the champion of {promoted.scope}.",
            )

    @admin.action(
        description="Roll back its scope to the previous champion (audited)", permissions=["promote"]
    )
    def rollback(self, request, queryset):
        scopes = dict.fromkeys((version.scope, version.timeframe) for version in queryset)
        for scope, timeframe in scopes:
            self._run(
                request,
                lambda scope=scope, timeframe=timeframe: services.model_rollback(
                    actor=request.user,
                    scope=scope,
                    timeframe=timeframe,
                    reason=f"admin action by {request.user}",
                ),
                lambda restored: f"Model #{restored.pk} is the champion of {restored.scope} again.",
            )


@admin.register(RegimeObservation)
class RegimeObservationAdmin(SharedKnowledgeAdminMixin, admin.ModelAdmin):
    list_display = ("instrument", "timeframe", "open_time", "label", "method", "inputs")
    list_filter = ("label", "method", "instrument", "timeframe")
    list_select_related = ("instrument",)
    date_hierarchy = "open_time"
    ordering = ("-open_time",)
    show_full_result_count = False


@admin.register(StrategyThresholds)
class StrategyThresholdsAdmin(ScopedHistoryAdmin):
    """Directors set values and bounds here (through the service, audited); adaptation moves the values
    within the bounds."""

    list_display = (
        "account",
        "entry_probability",
        "stop_atr_multiple",
        "take_atr_multiple",
        "adapted_at",
        "updated_at",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter),)
    list_select_related = ("account",)
    search_fields = ("account__name", "account__slug")
    readonly_fields = ("adapted_at", "reason", "updated_at")

    def has_delete_permission(self, request, obj=None):
        return False

    def get_readonly_fields(self, request, obj=None):
        return (*self.readonly_fields, "account") if obj is not None else self.readonly_fields

    def save_model(self, request, obj, form, change):
        values = {
            name: form.cleaned_data[name] for name in services.DEFAULT_THRESHOLDS if name in form.cleaned_data
        }
        saved = services.thresholds_update(
            actor=request.user, account=obj.account, reason="admin form", **values
        )
        obj.pk = saved.pk
