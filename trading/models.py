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
