from django.core.validators import MaxValueValidator, MinValueValidator
from django.db import models
from simple_history.models import HistoricalRecords

from accounts.models import Account, AccountOwned
from learning.regime import BEARISH, BULLISH, SIDEWAYS
from learning.storage import artifact_storage
from trading.models import Instrument


class ModelVersion(models.Model):
    """One trained model: what it was trained on, how it scored out of sample, and its artifact.

    Not account-owned: a model is shared market knowledge, the same for every account, like candles. Staff
    with a role in any account may read the registry; only directors promote or roll back, and only through
    the services (each change audited). At most one champion per (scope, timeframe)."""

    class Kind(models.TextChoices):
        HGB = "hgb", "HistGradientBoosting"
        LOGISTIC = "logistic", "logistic regression"

    class Status(models.TextChoices):
        CANDIDATE = "candidate"
        CHAMPION = "champion"
        RETIRED = "retired"

    POOLED = "pooled"

    scope = models.CharField(max_length=20, help_text="the pair (e.g. BTC/USD), or 'pooled'")
    pairs = models.JSONField(default=list, help_text="the pairs whose candles it was trained on")
    timeframe = models.PositiveIntegerField(help_text="minutes")
    kind = models.CharField(max_length=16, choices=Kind.choices)
    features = models.JSONField(default=list)
    params = models.JSONField(default=dict, help_text="model parameters and the training specification")
    horizon = models.PositiveIntegerField(help_text="label horizon, in bars")
    training_start = models.DateTimeField()
    training_end = models.DateTimeField(help_text="open time of the last bar with a label")
    data_sha256 = models.CharField(max_length=64, help_text="SHA-256 of the training candles")
    metrics = models.JSONField(default=dict, help_text="walk-forward out-of-sample metrics, per fold")
    artifact = models.FileField(storage=artifact_storage, upload_to="models/", max_length=200)
    artifact_sha256 = models.CharField(max_length=64)
    trained_by = models.CharField(max_length=160, help_text="the user or component that trained it")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.CANDIDATE)
    gate = models.JSONField(default=dict, blank=True, help_text="the promotion gate's last verdict")
    created_at = models.DateTimeField(auto_now_add=True)
    promoted_at = models.DateTimeField(null=True, blank=True)
    retired_at = models.DateTimeField(null=True, blank=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(
                fields=["scope", "timeframe"],
                condition=models.Q(status="champion"),
                name="learning_one_champion_per_scope",
            ),
            models.CheckConstraint(
                condition=models.Q(status__in=["candidate", "champion", "retired"]),
                name="learning_model_status_valid",
            ),
            models.CheckConstraint(
                condition=models.Q(kind__in=["hgb", "logistic"]), name="learning_model_kind_valid"
            ),
        ]
        indexes = [models.Index(fields=["scope", "timeframe", "status"], name="learning_model_scope_idx")]

    def __str__(self) -> str:
        return f"#{self.pk} {self.scope} {self.timeframe}m {self.kind} ({self.status})"

    @property
    def score(self) -> float | None:
        return self.metrics.get("score")


class RegimeObservation(models.Model):
    """The regime of one pair at one closed bar, with the inputs that decided it. ``rules`` is the label
    strategy and risk read; ``gmm`` rows, when recorded, are for comparison only (see learning/regime.py)."""

    class Label(models.TextChoices):
        BULLISH = BULLISH
        BEARISH = BEARISH
        SIDEWAYS = SIDEWAYS

    class Method(models.TextChoices):
        RULES = "rules", "trend and volatility rules"
        GMM = "gmm", "Gaussian mixture (comparison)"

    instrument = models.ForeignKey(Instrument, on_delete=models.PROTECT, related_name="+")
    timeframe = models.PositiveIntegerField(help_text="minutes")
    open_time = models.DateTimeField(help_text="open time of the closed bar labelled")
    label = models.CharField(max_length=10, choices=Label.choices)
    method = models.CharField(max_length=8, choices=Method.choices, default=Method.RULES)
    inputs = models.JSONField(default=dict, blank=True)
    recorded_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["instrument", "timeframe", "method", "open_time"]
        constraints = [
            models.UniqueConstraint(
                fields=["instrument", "timeframe", "method", "open_time"], name="learning_regime_unique_bar"
            ),
            models.CheckConstraint(
                condition=models.Q(label__in=[BULLISH, BEARISH, SIDEWAYS]), name="learning_regime_label_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.instrument} {self.timeframe}m {self.open_time:%Y-%m-%d %H:%M}: {self.label}"


PROBABILITY = {
    "max_digits": 5,
    "decimal_places": 4,
    "validators": [MinValueValidator(0), MaxValueValidator(1)],
}
MULTIPLE = {"max_digits": 6, "decimal_places": 3, "validators": [MinValueValidator(0)]}


class StrategyThresholds(AccountOwned):
    """An account's strategy thresholds and the policy bounds adaptation keeps them within."""

    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="strategy_thresholds")
    entry_probability = models.DecimalField(**PROBABILITY, help_text="enter when the model says more")
    stop_atr_multiple = models.DecimalField(**MULTIPLE, help_text="stop-loss distance, in ATRs")
    take_atr_multiple = models.DecimalField(**MULTIPLE, help_text="take-profit distance, in ATRs")
    entry_probability_min = models.DecimalField(**PROBABILITY)
    entry_probability_max = models.DecimalField(**PROBABILITY)
    stop_atr_multiple_min = models.DecimalField(**MULTIPLE)
    stop_atr_multiple_max = models.DecimalField(**MULTIPLE)
    take_atr_multiple_min = models.DecimalField(**MULTIPLE)
    take_atr_multiple_max = models.DecimalField(**MULTIPLE)
    adapted_at = models.DateTimeField(null=True, blank=True, help_text="last automatic adjustment")
    reason = models.TextField(blank=True, help_text="why the values are what they are")
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["account__name"]
        verbose_name_plural = "strategy thresholds"
        constraints = [
            models.CheckConstraint(
                condition=models.Q(entry_probability__gte=models.F("entry_probability_min"))
                & models.Q(entry_probability__lte=models.F("entry_probability_max")),
                name="learning_entry_within_bounds",
            ),
            models.CheckConstraint(
                condition=models.Q(stop_atr_multiple__gte=models.F("stop_atr_multiple_min"))
                & models.Q(stop_atr_multiple__lte=models.F("stop_atr_multiple_max")),
                name="learning_stop_within_bounds",
            ),
            models.CheckConstraint(
                condition=models.Q(take_atr_multiple__gte=models.F("take_atr_multiple_min"))
                & models.Q(take_atr_multiple__lte=models.F("take_atr_multiple_max")),
                name="learning_take_within_bounds",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.account}: enter > {self.entry_probability}, stop {self.stop_atr_multiple} ATR"
