import json

from django.contrib import admin
from django.http import Http404
from django.utils.html import format_html

from accounts.admin_scoping import ReadOnlyAdminMixin
from accounts.selectors import user_has_role_anywhere
from governance.models import AuditEvent


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    """Read-only for everyone, superusers included: the audit trail is written only by services."""

    list_display = ("seq", "created_at", "actor", "account", "action", "target_type", "target_id")
    # RelatedOnlyFieldListFilter offers only accounts present in the scoped queryset: no other names leak.
    list_filter = ("action", ("account", admin.RelatedOnlyFieldListFilter))
    search_fields = ("action", "actor", "target_type", "target_id")
    list_select_related = ("account",)
    date_hierarchy = "created_at"
    ordering = ("-seq",)
    fields = (
        "seq",
        "created_at",
        "actor",
        "actor_user",
        "account",
        "action",
        "target_type",
        "target_id",
        "details_pretty",
        "prev_hash",
        "hash",
    )
    readonly_fields = fields
    actions = None

    @admin.display(description="details")
    def details_pretty(self, obj):
        return format_html(
            "<pre>{}</pre>", json.dumps(obj.details, indent=2, sort_keys=True, ensure_ascii=False)
        )

    def get_queryset(self, request):
        return super().get_queryset(request).for_user(request.user, "view")

    def get_object(self, request, object_id, from_field=None):
        obj = super().get_object(request, object_id, from_field)
        if obj is None:
            raise Http404("No such audit event in your accounts.")
        return obj

    def has_module_permission(self, request):
        return user_has_role_anywhere(user=request.user)

    def has_view_permission(self, request, obj=None):
        if obj is None:
            return user_has_role_anywhere(user=request.user)
        return self.get_queryset(request).filter(pk=obj.pk).exists()
