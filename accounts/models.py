from django.contrib.auth.models import AbstractUser
from django.db import models
from simple_history.models import HistoricalRecords

from accounts.querysets import AccountOwnedQuerySet, AccountQuerySet
from accounts.roles import Role


class User(AbstractUser):
    """A person who signs in: a director or a viewer of one or more accounts (see Membership)."""

    history = HistoricalRecords(excluded_fields=["password", "last_login"])


class Account(models.Model):
    """A trading account: the company's or one director's. Everything it owns is isolated from the others."""

    class Kind(models.TextChoices):
        COMPANY = "company", "Company"
        DIRECTOR = "director", "Director"

    class Currency(models.TextChoices):
        USD = "USD", "US dollar"

    name = models.CharField(max_length=100, unique=True)
    slug = models.SlugField(
        max_length=50, unique=True, help_text="Stable identifier used by commands and the API."
    )
    kind = models.CharField(max_length=16, choices=Kind.choices)
    simulation_mode = models.BooleanField(
        default=True, help_text="Simulated accounts never reach Kraken's private trading endpoints."
    )
    trading_enabled = models.BooleanField(
        default=True, help_text="When off, the engine opens no new positions for this account."
    )
    base_currency = models.CharField(max_length=3, choices=Currency.choices, default=Currency.USD)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()
    objects = AccountQuerySet.as_manager()

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=models.Q(base_currency="USD"), name="account_base_currency_usd"),
            models.CheckConstraint(
                condition=models.Q(kind__in=["company", "director"]), name="account_kind_valid"
            ),
        ]

    def __str__(self) -> str:
        return self.name


class AccountOwned(models.Model):
    """Base of every row that belongs to one account. Its default manager scopes with ``for_user``."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="+")

    objects = AccountOwnedQuerySet.as_manager()

    class Meta:
        abstract = True


class Membership(AccountOwned):
    """A user's role in an account. Directors administer the account; viewers only read it."""

    account = models.ForeignKey(Account, on_delete=models.PROTECT, related_name="memberships")
    user = models.ForeignKey(User, on_delete=models.PROTECT, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices)
    created_at = models.DateTimeField(auto_now_add=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["account__name", "user__username"]
        constraints = [
            models.UniqueConstraint(fields=["user", "account"], name="membership_unique_user_account"),
            models.CheckConstraint(
                condition=models.Q(role__in=["director", "viewer"]), name="membership_role_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"{self.user} — {self.get_role_display()} of {self.account}"


class KrakenCredential(AccountOwned):
    """Where an account's Kraken API key is kept, and what Kraken last said about it. The key itself lives
    only in the credential store (``accounts/credentials.py``); this row holds its reference, a
    non-reversible fingerprint and the last validation (a private ``Balance`` call)."""

    class Store(models.TextChoices):
        LOCAL = "local", "Local file (Fernet)"
        KUBERNETES = "kubernetes", "Kubernetes Secret"

    account = models.OneToOneField(Account, on_delete=models.PROTECT, related_name="kraken_credential")
    store = models.CharField(max_length=16, choices=Store.choices)
    reference = models.CharField(max_length=300, help_text="Where the store keeps the key (not the key).")
    fingerprint = models.CharField(
        max_length=16, help_text="First 16 hex digits of SHA-256 over key and secret; tells keys apart."
    )
    validated_at = models.DateTimeField(null=True, blank=True)
    validation_ok = models.BooleanField(default=False)
    validation_message = models.TextField(blank=True, help_text="Kraken's answer to the last check.")
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    history = HistoricalRecords()

    class Meta:
        ordering = ["account__name"]
        constraints = [
            models.CheckConstraint(
                condition=models.Q(store__in=["local", "kubernetes"]), name="kraken_credential_store_valid"
            ),
        ]

    def __str__(self) -> str:
        return f"Kraken key {self.fingerprint} of {self.account}"
