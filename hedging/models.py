"""The hedge shell's rows: each account's hedge policy (history-tracked) and its hedge history.

The rules live in :mod:`hedging.policy`; these rows store what it reads and what it decided. Written only by
``hedging/services.py``.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from simple_history.models import HistoricalRecords

from accounts.models import AccountOwned
from hedging import policy as core

PERCENT = {"max_digits": 9, "decimal_places": 4}
RATIO = {"max_digits": 9, "decimal_places": 4}
MONEY = {"max_digits": 30, "decimal_places": 12}

_DEFAULTS = core.HedgeParams()


class HedgeMode(models.TextChoices):
    AUTO = core.Mode.AUTO.value, "automatic"
    MANUAL = core.Mode.MANUAL.value, "manual override"


class SellOrder(models.TextChoices):
    VOLATILITY = core.Ordering.VOLATILITY.value, "most volatile first"
    VALUE = core.Ordering.VALUE.value, "largest first"


class HedgePolicy(AccountOwned):
    """One account's hedge: its mode (automatic, or a director's manual target with an optional expiry) and
    the automatic target's parameters (see :class:`hedging.policy.HedgeParams`). The parameters are edited
    by directors through ``hedge_policy_update``; the mode only through ``hedge_set_manual`` /
    ``hedge_set_auto`` (and an expiry lapsing in ``hedge_evaluate``)."""

    account = models.OneToOneField("accounts.Account", on_delete=models.PROTECT, related_name="hedge_policy")
    mode = models.CharField(max_length=8, choices=HedgeMode.choices, default=HedgeMode.AUTO)
    manual_target_pct = models.DecimalField(
        **PERCENT, null=True, blank=True, help_text="the director's target, % of equity in USD"
    )
    manual_expires_at = models.DateTimeField(
        null=True, blank=True, help_text="the manual target lapses here and the automatic one resumes"
    )
    manual_reason = models.TextField(blank=True)
    floor_pct = models.DecimalField(
        **PERCENT, default=_DEFAULTS.floor_pct, help_text="lowest automatic target, % of equity in USD"
    )
    ceiling_pct = models.DecimalField(
        **PERCENT, default=_DEFAULTS.ceiling_pct, help_text="highest automatic target, % of equity in USD"
    )
    vol_weight = models.DecimalField(**RATIO, default=_DEFAULTS.vol_weight, help_text="0..1")
    vol_calm_ratio = models.DecimalField(
        **RATIO,
        default=_DEFAULTS.vol_calm_ratio,
        help_text="volatility / its usual level at or below which volatility adds nothing",
    )
    vol_turmoil_ratio = models.DecimalField(
        **RATIO,
        default=_DEFAULTS.vol_turmoil_ratio,
        help_text="volatility / its usual level at or above which volatility adds its full weight",
    )
    drawdown_weight = models.DecimalField(**RATIO, default=_DEFAULTS.drawdown_weight, help_text="0..1")
    drawdown_start_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.drawdown_start_pct,
        help_text="drawdown at or below which it adds nothing",
    )
    drawdown_full_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.drawdown_full_pct,
        help_text="drawdown at or beyond which it adds its full weight",
    )
    vol_window = models.PositiveIntegerField(
        default=_DEFAULTS.vol_window, help_text="bars in the current realised volatility"
    )
    vol_lookback = models.PositiveIntegerField(
        default=_DEFAULTS.vol_lookback,
        help_text="bars of history the usual volatility (median) is taken over",
    )
    drawdown_lookback_days = models.PositiveIntegerField(
        default=_DEFAULTS.drawdown_lookback_days, help_text="days the equity high-water mark looks back"
    )
    band_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.band_pct,
        help_text="percentage points around the target: no trade inside",
    )
    min_interval = models.DurationField(
        default=_DEFAULTS.min_interval, help_text="least time between two rebalances"
    )
    order_by = models.CharField(max_length=12, choices=SellOrder.choices, default=_DEFAULTS.order_by.value)
    killswitch_warn_ratio = models.DecimalField(
        **RATIO,
        default=_DEFAULTS.killswitch_warn_ratio,
        help_text="recommend the kill switch at this share of the risk policy's daily drawdown limit",
    )
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    #: The parameters a director edits with ``hedge_policy_update`` (not the mode: that has its services).
    EDITABLE = (
        "floor_pct",
        "ceiling_pct",
        "vol_weight",
        "vol_calm_ratio",
        "vol_turmoil_ratio",
        "drawdown_weight",
        "drawdown_start_pct",
        "drawdown_full_pct",
        "vol_window",
        "vol_lookback",
        "drawdown_lookback_days",
        "band_pct",
        "min_interval",
        "order_by",
        "killswitch_warn_ratio",
    )
    #: The override's fields, changed only by ``hedge_set_manual`` / ``hedge_set_auto`` / an expiry.
    OVERRIDE = ("mode", "manual_target_pct", "manual_expires_at", "manual_reason")

    class Meta:
        ordering = ["account__name"]
        verbose_name_plural = "hedge policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(mode__in=["auto", "manual"]), name="hedge_policy_mode_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(mode="auto") | models.Q(manual_target_pct__isnull=False),
                name="hedge_policy_manual_has_target",
            ),
            models.CheckConstraint(
                condition=models.Q(manual_target_pct__isnull=True)
                | models.Q(manual_target_pct__gte=0, manual_target_pct__lte=100),
                name="hedge_policy_manual_target_range",
            ),
            models.CheckConstraint(
                condition=models.Q(order_by__in=["volatility", "value"]), name="hedge_policy_order_by_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Hedge policy of {self.account}"

    def to_params(self) -> core.HedgeParams:
        """The frozen value the decision core reads."""
        return core.HedgeParams(
            floor_pct=self.floor_pct,
            ceiling_pct=self.ceiling_pct,
            vol_weight=self.vol_weight,
            vol_calm_ratio=self.vol_calm_ratio,
            vol_turmoil_ratio=self.vol_turmoil_ratio,
            drawdown_weight=self.drawdown_weight,
            drawdown_start_pct=self.drawdown_start_pct,
            drawdown_full_pct=self.drawdown_full_pct,
            vol_window=self.vol_window,
            vol_lookback=self.vol_lookback,
            drawdown_lookback_days=self.drawdown_lookback_days,
            band_pct=self.band_pct,
            min_interval=self.min_interval,
            order_by=core.Ordering(self.order_by),
            killswitch_warn_ratio=self.killswitch_warn_ratio,
        )


class HedgeSnapshot(AccountOwned):
    """One moment of the account's hedge history: the mode and target in force, the actual USD share, the
    inputs and why the row was written. Written on every change (of the target, of the mode, an expiry)
    and every rebalance (a sell or a release), only by ``hedging/services.py``; never edited afterwards
    except that a rebalance row gets its orders' outcome once they are submitted."""

    class Event(models.TextChoices):
        TARGET_CHANGED = "target_changed", "target changed"
        MANUAL_SET = "manual_set", "manual override set"
        AUTO_SET = "auto_set", "back to automatic"
        MANUAL_EXPIRED = "manual_expired", "manual override expired"
        REBALANCE = "rebalance", "rebalance: crypto sold for USD"
        RELEASE = "release", "rebalance: USD released to the strategy"

    #: The events that count as a rebalance for the minimum interval.
    REBALANCES = (Event.REBALANCE, Event.RELEASE)

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="hedge_snapshots")
    taken_at = models.DateTimeField()
    event = models.CharField(max_length=16, choices=Event.choices)
    mode = models.CharField(max_length=8, choices=HedgeMode.choices)
    target_pct = models.DecimalField(**PERCENT, help_text="the target in force, % of equity in USD")
    auto_target_pct = models.DecimalField(
        **PERCENT, null=True, blank=True, help_text="the automatic target (when its inputs were known)"
    )
    actual_pct = models.DecimalField(
        **PERCENT, null=True, blank=True, help_text="USD share of equity when written (empty: not markable)"
    )
    broker = models.CharField(max_length=8, blank=True, help_text="the book marked: sim or kraken")
    equity = models.DecimalField(**MONEY, null=True, blank=True)
    usd = models.DecimalField(**MONEY, null=True, blank=True)
    inputs = models.JSONField(default=dict, blank=True, help_text="volatility, drawdown and what they gave")
    orders = models.JSONField(default=list, blank=True, help_text="the rebalance's orders and their outcome")
    reason = models.TextField()

    class Meta:
        ordering = ["-taken_at", "-id"]
        get_latest_by = "taken_at"
        indexes = [models.Index(fields=["account", "-taken_at"], name="hedge_snapshot_account_time")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(
                    event__in=[
                        "target_changed",
                        "manual_set",
                        "auto_set",
                        "manual_expired",
                        "rebalance",
                        "release",
                    ]
                ),
                name="hedge_snapshot_event_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(target_pct__gte=0, target_pct__lte=100), name="hedge_snapshot_target_range"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.taken_at:%Y-%m-%d %H:%M} UTC: {self.get_event_display()}"

    @property
    def target(self) -> Decimal:
        """The target as a fraction 0..1."""
        return self.target_pct / Decimal(100)
