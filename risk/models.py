"""The risk shell's rows: each account's policy, its kill switch, and its marked NAV over time.

The rules live in :mod:`risk.engine`; these rows only store the state it reads and returns. Written only by
``risk/services.py``.
"""

from __future__ import annotations

from decimal import Decimal

from django.db import models
from simple_history.models import HistoricalRecords

from accounts.models import AccountOwned
from risk import engine

PERCENT = {"max_digits": 9, "decimal_places": 4}
MONEY = {"max_digits": 30, "decimal_places": 12}


class DistanceKind(models.TextChoices):
    ATR = engine.Distance.ATR.value, "ATR multiple"
    PERCENT = engine.Distance.PERCENT.value, "% of the price"


_DEFAULTS = engine.RiskPolicy()


class RiskPolicy(AccountOwned):
    """One account's risk limits (see :class:`risk.engine.RiskPolicy` for what each one means). Edited
    only by directors through ``risk_policy_update``, which refuses what ``validate()`` rejects."""

    account = models.OneToOneField("accounts.Account", on_delete=models.PROTECT, related_name="risk_policy")
    risk_per_trade_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.risk_per_trade_pct,
        help_text="loss at the stop one entry may risk, % of equity",
    )
    volatility_target_pct = models.DecimalField(
        **PERCENT,
        null=True,
        blank=True,
        default=_DEFAULTS.volatility_target_pct,
        help_text="largest one-bar stdev of a position's value, % of equity; empty: no cap",
    )
    max_position_pct = models.DecimalField(
        **PERCENT, default=_DEFAULTS.max_position_pct, help_text="USD exposure of one pair, % of equity"
    )
    max_group_exposure_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.max_group_exposure_pct,
        help_text="USD exposure of one correlated group, % of equity",
    )
    correlation_threshold = models.DecimalField(
        max_digits=5,
        decimal_places=4,
        default=Decimal(str(_DEFAULTS.correlation_threshold)),
        help_text="pairs correlated above this form one group",
    )
    correlation_window = models.PositiveIntegerField(
        default=_DEFAULTS.correlation_window, help_text="bars of returns the correlation is measured over"
    )
    max_daily_drawdown_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.max_daily_drawdown_pct,
        help_text="the kill switch trips this far below the UTC day's equity high",
    )
    stop_loss_kind = models.CharField(
        max_length=8, choices=DistanceKind.choices, default=_DEFAULTS.stop_loss.kind.value
    )
    stop_loss_value = models.DecimalField(**PERCENT, default=_DEFAULTS.stop_loss.value)
    take_profit_kind = models.CharField(
        max_length=8, choices=DistanceKind.choices, default=_DEFAULTS.take_profit.kind.value
    )
    take_profit_value = models.DecimalField(**PERCENT, default=_DEFAULTS.take_profit.value)
    trailing_enabled = models.BooleanField(default=_DEFAULTS.trailing_enabled)
    trailing_kind = models.CharField(
        max_length=8, choices=DistanceKind.choices, default=_DEFAULTS.trailing.kind.value
    )
    trailing_value = models.DecimalField(**PERCENT, default=_DEFAULTS.trailing.value)
    min_edge_pct = models.DecimalField(
        **PERCENT,
        default=_DEFAULTS.min_edge_pct,
        help_text="expected return an entry must keep after round-trip fees and slippage",
    )
    max_orders_per_minute = models.PositiveIntegerField(default=_DEFAULTS.max_orders_per_minute)
    max_orders_per_hour = models.PositiveIntegerField(default=_DEFAULTS.max_orders_per_hour)
    flatten_on_breach = models.BooleanField(
        default=_DEFAULTS.flatten_on_breach, help_text="a kill-switch trip also sells every position"
    )
    auto_rearm_at_day_change = models.BooleanField(
        default=_DEFAULTS.auto_rearm_at_day_change,
        help_text="a tripped kill switch re-arms itself at the next UTC day (no director needed)",
    )
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    #: The fields a director edits (everything but the account and the timestamps).
    EDITABLE = (
        "risk_per_trade_pct",
        "volatility_target_pct",
        "max_position_pct",
        "max_group_exposure_pct",
        "correlation_threshold",
        "correlation_window",
        "max_daily_drawdown_pct",
        "stop_loss_kind",
        "stop_loss_value",
        "take_profit_kind",
        "take_profit_value",
        "trailing_enabled",
        "trailing_kind",
        "trailing_value",
        "min_edge_pct",
        "max_orders_per_minute",
        "max_orders_per_hour",
        "flatten_on_breach",
        "auto_rearm_at_day_change",
    )

    class Meta:
        ordering = ["account__name"]
        verbose_name_plural = "risk policies"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(stop_loss_kind__in=DistanceKind.values)
                & models.Q(take_profit_kind__in=DistanceKind.values)
                & models.Q(trailing_kind__in=DistanceKind.values),
                name="risk_policy_distance_kinds_valid",
            ),
        ]

    def __str__(self) -> str:
        return f"Risk policy of {self.account}"

    def to_engine(self) -> engine.RiskPolicy:
        """The frozen value the decision core reads."""
        return engine.RiskPolicy(
            risk_per_trade_pct=self.risk_per_trade_pct,
            volatility_target_pct=self.volatility_target_pct,
            max_position_pct=self.max_position_pct,
            max_group_exposure_pct=self.max_group_exposure_pct,
            correlation_threshold=float(self.correlation_threshold),
            correlation_window=self.correlation_window,
            max_daily_drawdown_pct=self.max_daily_drawdown_pct,
            stop_loss=engine.ExitRule(engine.Distance(self.stop_loss_kind), self.stop_loss_value),
            take_profit=engine.ExitRule(engine.Distance(self.take_profit_kind), self.take_profit_value),
            trailing_enabled=self.trailing_enabled,
            trailing=engine.ExitRule(engine.Distance(self.trailing_kind), self.trailing_value),
            min_edge_pct=self.min_edge_pct,
            max_orders_per_minute=self.max_orders_per_minute,
            max_orders_per_hour=self.max_orders_per_hour,
            flatten_on_breach=self.flatten_on_breach,
            auto_rearm_at_day_change=self.auto_rearm_at_day_change,
        )


class KillSwitch(AccountOwned):
    """The account's kill switch (``risk.engine.SwitchState``) and the UTC day's equity record it measures
    from (``risk.engine.DayEquity``). One row per account, locked by every writer, so snapshots and
    directors' actions are applied one at a time and in order."""

    class Status(models.TextChoices):
        ARMED = engine.Status.ARMED.value, "armed"
        TRIPPED = engine.Status.TRIPPED.value, "tripped (latched)"

    account = models.OneToOneField("accounts.Account", on_delete=models.PROTECT, related_name="kill_switch")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.ARMED)
    tripped_on = models.DateField(null=True, blank=True, help_text="UTC day of the trip")
    tripped_at = models.DateTimeField(null=True, blank=True)
    reason = models.TextField(blank=True, help_text="why it tripped")
    halted = models.BooleanField(default=False, help_text="a director stopped new entries by hand")
    halt_reason = models.TextField(blank=True)
    # The UTC day's equity record, of the book (broker) it was measured on.
    day = models.DateField(null=True, blank=True, help_text="UTC day of the equity record")
    day_broker = models.CharField(max_length=8, blank=True, help_text="book the day's equity was marked on")
    day_high = models.DecimalField(**MONEY, null=True, blank=True, help_text="the day's equity high, USD")
    day_equity = models.DecimalField(**MONEY, null=True, blank=True, help_text="the latest equity, USD")
    day_at = models.DateTimeField(null=True, blank=True, help_text="when the latest equity was marked")
    # What a trip or halt asks of the order book (cancel entries, flatten) and is not done yet. Set in the
    # transition's transaction; cleared only by a sweep that finds it done (``killswitch_enforce``).
    enforcement_due = models.BooleanField(
        default=False, help_text="the trip's or halt's cancels / flattening are not confirmed done yet"
    )
    enforcement_problems = models.TextField(blank=True, help_text="what the last enforcement sweep left")
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["account__name"]
        verbose_name_plural = "kill switches"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(status__in=["armed", "tripped"]), name="kill_switch_status_valid"
            ),
            models.CheckConstraint(
                condition=models.Q(status="armed") | models.Q(tripped_on__isnull=False),
                name="kill_switch_tripped_has_day",
            ),
        ]

    def __str__(self) -> str:
        halted = ", halted" if self.halted else ""
        return f"Kill switch of {self.account}: {self.get_status_display()}{halted}"

    def to_engine(self) -> engine.SwitchState:
        return engine.SwitchState(
            status=engine.Status(self.status),
            tripped_on=self.tripped_on,
            tripped_at=self.tripped_at,
            reason=self.reason,
            halted=self.halted,
            halt_reason=self.halt_reason,
        )

    def set_state(self, state: engine.SwitchState) -> None:
        self.status = state.status.value
        self.tripped_on = state.tripped_on
        self.tripped_at = state.tripped_at
        self.reason = state.reason
        self.halted = state.halted
        self.halt_reason = state.halt_reason

    def day_record(self, broker: str) -> engine.DayEquity | None:
        """The day's equity record when it was measured on ``broker``'s book (a mode switch starts afresh)."""
        if self.day is None or self.day_broker != broker:
            return None
        return engine.DayEquity(
            day=self.day, high_water=self.day_high, equity=self.day_equity, at=self.day_at
        )

    def set_day_record(self, record: engine.DayEquity, broker: str) -> None:
        self.day, self.day_broker = record.day, broker
        self.day_high, self.day_equity, self.day_at = record.high_water, record.equity, record.at


class NavSnapshot(AccountOwned):
    """The account's equity marked to market at one moment, with the day's high-water mark and drawdown:
    the base for the kill switch, daily PnL and reports. Written only by ``nav_snapshot_record``."""

    class Reason(models.TextChoices):
        SCHEDULE = "schedule"
        FILL = "fill"
        MANUAL = "manual"
        CYCLE = "cycle"

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="nav_snapshots")
    broker = models.CharField(max_length=8, help_text="the book marked: sim or kraken")
    taken_at = models.DateTimeField()
    equity = models.DecimalField(**MONEY, help_text="cash + positions, USD, after the taker fee to sell")
    cash = models.DecimalField(**MONEY, help_text="the whole USD balance (reservations included)")
    positions_value = models.DecimalField(
        **MONEY, help_text="what selling every position would bring, after the taker fee"
    )
    day = models.DateField(help_text="UTC day")
    day_high = models.DecimalField(**MONEY, help_text="the UTC day's equity high so far")
    drawdown_pct = models.DecimalField(max_digits=12, decimal_places=6, help_text="below the day's high, %")
    kill_switch_status = models.CharField(
        max_length=8, choices=KillSwitch.Status.choices, help_text="after this snapshot"
    )
    reason = models.CharField(max_length=8, choices=Reason.choices)

    class Meta:
        ordering = ["-taken_at", "-id"]
        get_latest_by = "taken_at"
        indexes = [models.Index(fields=["account", "-taken_at"], name="nav_snapshot_account_time")]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(reason__in=["schedule", "fill", "manual", "cycle"]),
                name="nav_snapshot_reason_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(drawdown_pct__gte=0), name="nav_snapshot_drawdown_sane"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.taken_at:%Y-%m-%d %H:%M} UTC: {self.equity} USD"
