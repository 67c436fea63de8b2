import json

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.utils.html import format_html
from simple_history.admin import SimpleHistoryAdmin

from accounts.admin_scoping import AccountScopedAdminMixin, ReadOnlyAdminMixin
from accounts.selectors import user_can, user_has_role_anywhere
from trading.brokers.base import BrokerError
from trading.models import (
    FINAL_STATUSES,
    AccountFeeTier,
    Balance,
    Candle,
    Cycle,
    FeedStatus,
    Fill,
    Instrument,
    Order,
    Position,
    Trade,
)


class MarketDataAdminMixin(ReadOnlyAdminMixin):
    """Market data is shared by every account: any member reads it; it is written only by the sync,
    backfill and feed services."""

    def has_module_permission(self, request):
        return user_has_role_anywhere(user=request.user)

    def has_view_permission(self, request, obj=None):
        return user_has_role_anywhere(user=request.user)


@admin.register(Instrument)
class InstrumentAdmin(MarketDataAdminMixin, SimpleHistoryAdmin):
    list_display = (
        "symbol",
        "kraken_pair",
        "altname",
        "status",
        "ordermin",
        "costmin",
        "tick_size",
        "synced_at",
    )
    list_filter = ("status", "source")
    search_fields = ("symbol", "kraken_pair", "altname", "base_asset")


@admin.register(Candle)
class CandleAdmin(MarketDataAdminMixin, admin.ModelAdmin):
    list_display = (
        "instrument",
        "timeframe",
        "open_time",
        "open",
        "high",
        "low",
        "close",
        "volume",
        "closed",
        "source",
    )
    list_filter = ("instrument", "timeframe", "source", "closed")
    list_select_related = ("instrument",)
    date_hierarchy = "open_time"
    ordering = ("-open_time",)
    show_full_result_count = False  # counting millions of bars on every page view is wasteful


@admin.register(FeedStatus)
class FeedStatusAdmin(MarketDataAdminMixin, admin.ModelAdmin):
    list_display = ("instrument", "stale", "last_message_at", "last_price", "stale_since")
    list_filter = ("stale",)
    list_select_related = ("instrument",)


@admin.register(AccountFeeTier)
class AccountFeeTierAdmin(ReadOnlyAdminMixin, AccountScopedAdminMixin, SimpleHistoryAdmin):
    """Read-only: rates come from the account's own Kraken TradeVolume answer."""

    list_display = ("account", "instrument", "maker_pct", "taker_pct", "volume_30d_usd", "fetched_at")
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "instrument")
    list_select_related = ("account", "instrument")


# --------------------------------------------------------------------------------------------------
# The order book. Read-only everywhere: orders are placed and canceled through the order services (the
# "Cancel selected orders" action calls ``order_cancel``), fills and balances come from brokers.
# --------------------------------------------------------------------------------------------------


class BookAdminMixin(ReadOnlyAdminMixin, AccountScopedAdminMixin):
    list_select_related = ("account", "instrument")


class FillInline(admin.TabularInline):
    model = Fill
    fields = (
        "executed_at",
        "trade_id",
        "price",
        "quantity",
        "fee",
        "fee_currency",
        "liquidity",
        "realised_pnl",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Order)
class OrderAdmin(BookAdminMixin, SimpleHistoryAdmin):
    list_display = (
        "created_at",
        "account",
        "broker",
        "instrument",
        "side",
        "order_type",
        "quantity",
        "limit_price",
        "stop_price",
        "status",
        "filled_quantity",
        "average_fill_price",
        "fees_paid",
        "placed_by",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "status", "side", "order_type")
    search_fields = ("client_order_id", "kraken_order_id", "reason", "status_reason")
    date_hierarchy = "created_at"
    inlines = (FillInline,)
    actions = ("cancel_orders",)

    def get_actions(self, request):
        actions = super().get_actions(request)
        actions.pop("delete_selected", None)
        return actions

    def has_cancel_permission(self, request):
        return user_has_role_anywhere(user=request.user, action="change")

    @admin.action(description="Cancel selected orders", permissions=["cancel"])
    def cancel_orders(self, request, queryset):
        from trading.services.orders import order_cancel

        canceled = 0
        for order in queryset.select_related("account", "instrument"):
            if order.status in FINAL_STATUSES:
                continue
            if not user_can(user=request.user, account=order.account, action="change"):
                self.message_user(request, f"You are not a director of {order.account}.", messages.ERROR)
                continue
            try:
                result = order_cancel(order=order, actor=request.user, reason="canceled in the admin")
            except (PermissionDenied, ValidationError, BrokerError) as exc:
                self.message_user(request, f"{order.client_order_id}: {exc}", messages.ERROR)
                continue
            canceled += result.status == "CANCELED"
            if result.status != "CANCELED":
                self.message_user(
                    request,
                    f"{order.client_order_id} is {result.status}: {result.status_reason}",
                    messages.WARNING,
                )
        self.message_user(request, f"{canceled} order(s) canceled.")


@admin.register(Fill)
class FillAdmin(BookAdminMixin, admin.ModelAdmin):
    list_display = (
        "executed_at",
        "account",
        "broker",
        "instrument",
        "side",
        "price",
        "quantity",
        "fee",
        "fee_currency",
        "liquidity",
        "realised_pnl",
        "position_after",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "side", "liquidity", "instrument")
    search_fields = ("trade_id", "order__client_order_id", "order__kraken_order_id")
    date_hierarchy = "executed_at"


@admin.register(Position)
class PositionAdmin(BookAdminMixin, admin.ModelAdmin):
    list_display = (
        "account",
        "broker",
        "instrument",
        "quantity",
        "average_cost",
        "realised_pnl",
        "opened_at",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "instrument")


@admin.register(Balance)
class BalanceAdmin(BookAdminMixin, admin.ModelAdmin):
    list_display = ("account", "broker", "asset", "total", "reserved", "available", "updated_at")
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "asset")
    list_select_related = ("account",)

    @admin.display(description="available")
    def available(self, obj):
        return obj.available


@admin.register(Trade)
class TradeAdmin(BookAdminMixin, admin.ModelAdmin):
    list_display = (
        "closed_at",
        "account",
        "broker",
        "instrument",
        "quantity",
        "entry_price",
        "exit_price",
        "fees",
        "net_pnl",
        "return_pct",
        "opened_at",
    )
    list_filter = (("account", admin.RelatedOnlyFieldListFilter), "broker", "instrument")
    date_hierarchy = "closed_at"


@admin.register(Cycle)
class CycleAdmin(BookAdminMixin, admin.ModelAdmin):
    """Every strategy cycle: which strategy decided what on which bar, why, and the orders it led to."""

    list_display = (
        "bar_open_time",
        "account",
        "instrument",
        "broker",
        "status",
        "strategy",
        "signal",
        "probability",
        "regime",
        "short_reason",
        "duration_ms",
    )
    list_filter = (
        ("account", admin.RelatedOnlyFieldListFilter),
        "status",
        "strategy",
        "signal",
        "broker",
        "instrument",
    )
    list_select_related = ("account", "instrument")
    search_fields = ("reason", "error")
    date_hierarchy = "bar_open_time"
    fields = (
        "account",
        "instrument",
        "timeframe",
        "bar_open_time",
        "broker",
        "status",
        "strategy",
        "signal",
        "reason",
        "probability",
        "model_version_id",
        "regime",
        "decisions_pretty",
        "error",
        "attempts",
        "started_at",
        "finished_at",
        "duration_ms",
    )
    readonly_fields = fields

    @admin.display(description="reason")
    def short_reason(self, obj):
        return obj.reason if len(obj.reason) <= 90 else obj.reason[:89] + "…"

    @admin.display(description="decisions")
    def decisions_pretty(self, obj):
        return format_html("<pre>{}</pre>", json.dumps(obj.decisions, indent=2, ensure_ascii=False))
