from django.db import models
from simple_history.models import HistoricalRecords

from accounts.models import AccountOwned

PRICE = {"max_digits": 30, "decimal_places": 12}


class Instrument(models.Model):
    """A Kraken spot pair quoted in USD, as Kraken's AssetPairs describes it. Shared by all accounts."""

    class Status(models.TextChoices):
        ONLINE = "online"
        CANCEL_ONLY = "cancel_only"
        POST_ONLY = "post_only"
        LIMIT_ONLY = "limit_only"
        REDUCE_ONLY = "reduce_only"
        MAINTENANCE = "maintenance"
        DELISTED = "delisted", "delisted (gone from AssetPairs)"

    symbol = models.CharField(max_length=20, unique=True, help_text="WebSocket v2 name, e.g. BTC/USD")
    kraken_pair = models.CharField(max_length=20, unique=True, help_text="AssetPairs key, e.g. XXBTZUSD")
    altname = models.CharField(max_length=20, help_text="e.g. XBTUSD (Kraken's bulk files use it)")
    wsname = models.CharField(max_length=20, help_text="as AssetPairs lists it, e.g. XBT/USD")
    base = models.CharField(max_length=12, help_text="Kraken's asset code, e.g. XXBT")
    quote = models.CharField(max_length=12, help_text="Kraken's asset code: ZUSD")
    base_asset = models.CharField(max_length=12, help_text="common code, e.g. BTC")
    ordermin = models.DecimalField(**PRICE, help_text="minimum order size, in the base asset")
    costmin = models.DecimalField(**PRICE, help_text="minimum order cost, in USD")
    tick_size = models.DecimalField(**PRICE)
    pair_decimals = models.PositiveSmallIntegerField()
    lot_decimals = models.PositiveSmallIntegerField()
    cost_decimals = models.PositiveSmallIntegerField()
    status = models.CharField(max_length=16, choices=Status.choices)
    source = models.CharField(max_length=80, help_text="kraken_api, or the snapshot file and its date")
    synced_at = models.DateTimeField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["symbol"]

    def __str__(self) -> str:
        return self.symbol

    @property
    def tradable(self) -> bool:
        return self.status == self.Status.ONLINE


class Candle(models.Model):
    """One OHLCV bar. Unique per (instrument, timeframe, open time); a bar still forming has
    ``closed=False`` and is never used for a decision."""

    class Source(models.TextChoices):
        KRAKEN_WS = "kraken_ws", "Kraken WebSocket"
        KRAKEN_REST = "kraken_rest", "Kraken REST OHLC"
        KRAKEN_CSV = "kraken_csv", "Kraken OHLCVT file"
        COINGECKO = "coingecko", "CoinGecko"
        REPLAY = "replay", "replay"
        SYNTHETIC = "synthetic", "synthetic (generated, not market data)"

    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="candles")
    timeframe = models.PositiveIntegerField(help_text="minutes")
    open_time = models.DateTimeField()
    open = models.DecimalField(**PRICE)
    high = models.DecimalField(**PRICE)
    low = models.DecimalField(**PRICE)
    close = models.DecimalField(**PRICE)
    volume = models.DecimalField(max_digits=30, decimal_places=12)
    trades = models.PositiveIntegerField(
        null=True, blank=True, help_text="empty when the source has no count"
    )
    closed = models.BooleanField(default=True)
    source = models.CharField(max_length=16, choices=Source.choices)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument", "timeframe", "open_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["instrument", "timeframe", "open_time"],
                name="candle_unique_instrument_timeframe_time",
            ),
            models.CheckConstraint(
                condition=models.Q(low__lte=models.F("high")) & models.Q(low__gt=0), name="candle_prices_sane"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument} {self.timeframe}m {self.open_time:%Y-%m-%d %H:%M}"


class FeedStatus(models.Model):
    """The live feed's view of one instrument: when it last heard from Kraken, and whether it is stale."""

    instrument = models.OneToOneField(Instrument, on_delete=models.PROTECT, related_name="feed_status")
    last_message_at = models.DateTimeField(null=True, blank=True)
    last_price = models.DecimalField(**PRICE, null=True, blank=True)
    stale = models.BooleanField(default=True)
    stale_since = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument"]
        verbose_name_plural = "feed status"

    def __str__(self) -> str:
        return f"{self.instrument}: {'stale' if self.stale else 'live'}"


class AccountFeeTier(AccountOwned):
    """An account's Kraken fee rates for one pair, from its own TradeVolume answer. Until one is recorded
    the published schedule applies (see ``trading/fees.py``)."""

    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    maker_pct = models.DecimalField(max_digits=8, decimal_places=4)
    taker_pct = models.DecimalField(max_digits=8, decimal_places=4)
    volume_30d_usd = models.DecimalField(max_digits=24, decimal_places=4)
    fetched_at = models.DateTimeField()

    history = HistoricalRecords()

    class Meta:
        ordering = ["account", "instrument"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "instrument"], name="fee_tier_unique_account_instrument"
            )
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.instrument}: maker {self.maker_pct}% / taker {self.taker_pct}%"


# --------------------------------------------------------------------------------------------------
# Order management. Every row below belongs to one account, and every book (orders, fills, positions,
# balances, trades) is kept per broker: ``sim`` rows are the simulated book, ``kraken`` rows mirror the
# exchange. An account reads the book of its current mode; switching mode never mixes the two.
# --------------------------------------------------------------------------------------------------

MONEY = {"max_digits": 30, "decimal_places": 12}


class BrokerName(models.TextChoices):
    SIM = "sim", "simulated"
    KRAKEN = "kraken", "Kraken"


class Side(models.TextChoices):
    BUY = "buy"
    SELL = "sell"


class OrderType(models.TextChoices):
    MARKET = "market"
    LIMIT = "limit"
    STOP_LOSS = "stop-loss"
    TAKE_PROFIT = "take-profit"


class OrderStatus(models.TextChoices):
    NEW = "NEW", "new (committed, not yet sent)"
    SUBMITTED = "SUBMITTED", "submitted (sent, no answer yet)"
    OPEN = "OPEN", "open"
    PARTIALLY_FILLED = "PARTIALLY_FILLED", "partially filled"
    FILLED = "FILLED", "filled"
    CANCELED = "CANCELED", "canceled"
    REJECTED = "REJECTED", "rejected"
    UNKNOWN = "UNKNOWN", "unknown (awaiting reconciliation)"


#: Statuses an order never leaves.
FINAL_STATUSES = frozenset({OrderStatus.FILLED, OrderStatus.CANCELED, OrderStatus.REJECTED})
#: Statuses of an order that may still execute on the exchange (and so holds a reservation).
LIVE_STATUSES = frozenset(
    {
        OrderStatus.NEW,
        OrderStatus.SUBMITTED,
        OrderStatus.OPEN,
        OrderStatus.PARTIALLY_FILLED,
        OrderStatus.UNKNOWN,
    }
)


class Order(AccountOwned):
    """One intent to trade, committed before any network call. ``client_order_id`` is sent to Kraken as
    ``cl_ord_id`` so the order can always be found again; a retry with the same id returns this row."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="orders")
    client_order_id = models.CharField(max_length=36, unique=True)
    kraken_order_id = models.CharField(
        max_length=40, blank=True, db_index=True, help_text="Kraken's txid (a SIM-O id when simulated)"
    )
    broker = models.CharField(max_length=8, choices=BrokerName.choices)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    side = models.CharField(max_length=4, choices=Side.choices)
    order_type = models.CharField(max_length=12, choices=OrderType.choices)
    quantity = models.DecimalField(**MONEY, help_text="in the base asset")
    limit_price = models.DecimalField(**MONEY, null=True, blank=True)
    stop_price = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="trigger price of a stop-loss or take-profit order"
    )
    status = models.CharField(max_length=16, choices=OrderStatus.choices, default=OrderStatus.NEW)
    status_reason = models.TextField(blank=True, help_text="why it was rejected, canceled or is unknown")
    filled_quantity = models.DecimalField(**MONEY, default=0)
    average_fill_price = models.DecimalField(**MONEY, null=True, blank=True)
    fees_paid = models.DecimalField(**MONEY, default=0, help_text="in USD")
    reserved_asset = models.CharField(
        max_length=12, blank=True, help_text="USD for a buy, the base for a sell"
    )
    reserved_amount = models.DecimalField(
        **MONEY, default=0, help_text="still held while the order may execute"
    )
    reason = models.TextField(blank=True, help_text="why it was placed (strategy, exit, hedge, director)")
    placed_by = models.CharField(max_length=120, help_text="user:<name> or system:<component>")
    placed_by_user = models.ForeignKey(
        "accounts.User", on_delete=models.PROTECT, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    submitted_at = models.DateTimeField(null=True, blank=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["account", "broker", "status"], name="order_account_broker_status")]
        constraints = [
            models.CheckConstraint(condition=models.Q(quantity__gt=0), name="order_quantity_positive"),
            models.CheckConstraint(
                condition=models.Q(filled_quantity__gte=0)
                & models.Q(filled_quantity__lte=models.F("quantity")),
                name="order_filled_within_quantity",
            ),
            models.CheckConstraint(
                condition=models.Q(reserved_amount__gte=0), name="order_reserved_nonnegative"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} {self.instrument} {self.order_type} [{self.status}]"

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES


class Liquidity(models.TextChoices):
    MAKER = "maker"
    TAKER = "taker"


class Fill(AccountOwned):
    """One execution of an order: price, quantity, fee, and the realised PnL it produced."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="fills")
    order = models.ForeignKey(Order, on_delete=models.PROTECT, related_name="fills")
    broker = models.CharField(max_length=8, choices=BrokerName.choices)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    side = models.CharField(max_length=4, choices=Side.choices)
    trade_id = models.CharField(max_length=40, help_text="Kraken's trade id (a SIM- id when simulated)")
    price = models.DecimalField(**MONEY)
    quantity = models.DecimalField(**MONEY)
    fee = models.DecimalField(**MONEY)
    fee_currency = models.CharField(max_length=12)
    liquidity = models.CharField(max_length=5, choices=Liquidity.choices)
    executed_at = models.DateTimeField()
    realised_pnl = models.DecimalField(
        **MONEY, default=0, help_text="net of fees; a sell closes at average cost"
    )
    position_after = models.DecimalField(**MONEY, help_text="position quantity after this fill")
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-executed_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["account", "broker", "trade_id"], name="fill_unique_trade"),
            models.CheckConstraint(
                condition=models.Q(price__gt=0) & models.Q(quantity__gt=0) & models.Q(fee__gte=0),
                name="fill_values_sane",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.side} {self.quantity} {self.instrument} @ {self.price}"


class Position(AccountOwned):
    """The holding of one pair's base asset in one book. Spot only: never negative."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="positions")
    broker = models.CharField(max_length=8, choices=BrokerName.choices)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    quantity = models.DecimalField(**MONEY, default=0)
    average_cost = models.DecimalField(**MONEY, default=0, help_text="USD per unit, buy fees included")
    realised_pnl = models.DecimalField(**MONEY, default=0, help_text="USD, net of fees, since the first fill")
    opened_at = models.DateTimeField(null=True, blank=True, help_text="start of the current round trip")
    # The current round trip, accumulated fill by fill; a Trade is written from them when it closes.
    trip_max_quantity = models.DecimalField(**MONEY, default=0)
    trip_bought = models.DecimalField(**MONEY, default=0)
    trip_buy_notional = models.DecimalField(**MONEY, default=0, help_text="USD, before fees")
    trip_sold = models.DecimalField(**MONEY, default=0)
    trip_sell_notional = models.DecimalField(**MONEY, default=0, help_text="USD, before fees")
    trip_fees = models.DecimalField(**MONEY, default=0, help_text="USD, buys and sells")
    trip_buy_fees = models.DecimalField(**MONEY, default=0, help_text="USD")
    trip_realised_pnl = models.DecimalField(**MONEY, default=0, help_text="USD, net of fees")
    # The exit plan (``risk.engine.ExitPlan``), written only by ``risk.pretrade.exits_plan`` and
    # ``exits_evaluate``; empty while the position is flat or has not been planned yet.
    exit_entry_price = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="entry price the plan was computed from, before fees"
    )
    stop_price = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="current stop (rises with the trailing stop, never falls)"
    )
    initial_stop_price = models.DecimalField(**MONEY, null=True, blank=True, help_text="stop at entry")
    take_profit_price = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="fee-aware: clears the round-trip fees and the minimum edge"
    )
    trailing_distance = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="trailing distance in USD (ATR rule), fixed at entry"
    )
    trailing_pct = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="trailing distance in % of the high (percent rule)"
    )
    trail_high = models.DecimalField(
        **MONEY, null=True, blank=True, help_text="highest price since entry; empty: no trailing stop"
    )
    exit_planned_at = models.DateTimeField(null=True, blank=True)
    exits_watched_through = models.DateTimeField(
        null=True, blank=True, help_text="close time of the last bar its exits were evaluated on (once a bar)"
    )
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["account", "broker", "instrument"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "broker", "instrument"], name="position_unique_account_broker_instrument"
            ),
            models.CheckConstraint(condition=models.Q(quantity__gte=0), name="position_never_short"),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.instrument}: {self.quantity} @ {self.average_cost}"


class Balance(AccountOwned):
    """An asset held in one book. ``reserved`` is what open orders hold; it never exceeds ``total``."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="balances")
    broker = models.CharField(max_length=8, choices=BrokerName.choices)
    asset = models.CharField(max_length=12, help_text="common code: USD, BTC, ETH…")
    total = models.DecimalField(**MONEY, default=0)
    reserved = models.DecimalField(**MONEY, default=0)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["account", "broker", "asset"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "broker", "asset"], name="balance_unique_account_broker_asset"
            ),
            models.CheckConstraint(
                condition=models.Q(total__gte=0)
                & models.Q(reserved__gte=0)
                & models.Q(reserved__lte=models.F("total")),
                name="balance_never_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.asset}: {self.total} ({self.reserved} reserved)"

    @property
    def available(self):
        return self.total - self.reserved


class Trade(AccountOwned):
    """A closed round trip: from the first buy of a flat position to the sell that makes it flat again."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="trades")
    broker = models.CharField(max_length=8, choices=BrokerName.choices)
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    opened_at = models.DateTimeField()
    closed_at = models.DateTimeField()
    quantity = models.DecimalField(**MONEY, help_text="largest quantity held during the round trip")
    entry_price = models.DecimalField(**MONEY, help_text="average buy price, before fees")
    exit_price = models.DecimalField(**MONEY, help_text="average sell price, before fees")
    fees = models.DecimalField(**MONEY, help_text="USD, buys and sells")
    net_pnl = models.DecimalField(**MONEY, help_text="USD, after all fees")
    return_pct = models.DecimalField(max_digits=20, decimal_places=8, help_text="net PnL over cost, in %")
    closing_fill = models.OneToOneField(Fill, on_delete=models.PROTECT, related_name="closed_trade")

    class Meta:
        ordering = ["-closed_at", "-id"]

    def __str__(self) -> str:
        return f"{self.instrument} closed {self.closed_at:%Y-%m-%d %H:%M}: {self.net_pnl} USD"


class CycleStatus(models.TextChoices):
    RUNNING = "running"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"


class Cycle(AccountOwned):
    """One strategy cycle: one account, one pair, one closed bar. The unique key makes a retried task a
    no-op once the cycle is done; orders carry ids derived from the cycle, so a cycle resumed after a crash
    finds the orders it already placed instead of placing them again."""

    account = models.ForeignKey("accounts.Account", on_delete=models.PROTECT, related_name="cycles")
    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    timeframe = models.PositiveIntegerField(help_text="bar minutes")
    bar_open_time = models.DateTimeField(help_text="open time of the closed bar the cycle decided on")
    broker = models.CharField(max_length=8, choices=BrokerName.choices, help_text="the book it traded")
    status = models.CharField(max_length=8, choices=CycleStatus.choices, default=CycleStatus.RUNNING)
    strategy = models.CharField(max_length=40, blank=True, help_text="which strategy decided, and why")
    signal = models.CharField(max_length=16, blank=True, help_text="entry, exit or hold")
    reason = models.TextField(blank=True, help_text="the strategy's reason, or why the cycle was skipped")
    probability = models.FloatField(null=True, blank=True, help_text="the champion model's probability")
    model_version_id = models.IntegerField(null=True, blank=True)
    regime = models.CharField(max_length=16, blank=True)
    decisions = models.JSONField(
        default=list, blank=True, help_text="intents, risk verdicts and orders, in the order they were made"
    )
    error = models.TextField(blank=True)
    attempts = models.PositiveIntegerField(default=0)
    started_at = models.DateTimeField()
    lease_until = models.DateTimeField(help_text="another cycle of this account waits until then")
    finished_at = models.DateTimeField(null=True, blank=True)
    duration_ms = models.FloatField(null=True, blank=True)

    class Meta:
        ordering = ["-bar_open_time", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["account", "instrument", "timeframe", "bar_open_time"], name="cycle_once_per_bar"
            )
        ]
        indexes = [
            models.Index(fields=["account", "status"], name="cycle_account_status"),
            models.Index(fields=["account", "-finished_at"], name="cycle_account_finished"),
            models.Index(fields=["started_at"], name="cycle_started"),
        ]

    def __str__(self) -> str:
        return f"{self.account} {self.instrument} {self.bar_open_time:%Y-%m-%d %H:%M} [{self.status}]"
