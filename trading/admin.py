from django.contrib import admin
from simple_history.admin import SimpleHistoryAdmin

from accounts.admin_scoping import AccountScopedAdminMixin, ReadOnlyAdminMixin
from accounts.selectors import user_has_role_anywhere
from trading.models import AccountFeeTier, Candle, FeedStatus, Instrument


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
