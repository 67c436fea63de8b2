import json

from django.conf import settings
from django.db import models

from governance.chain import ChainRecord
from governance.querysets import AuditEventQuerySet


class AuditEvent(models.Model):
    """One action by a person or the platform. Append-only: database triggers refuse UPDATE and DELETE, and
    each row carries the hash of the one before it (see ``governance/chain.py`` and ``verify_audit``)."""

    seq = models.PositiveBigIntegerField(unique=True, editable=False)
    created_at = models.DateTimeField(editable=False, db_index=True)
    actor = models.CharField(max_length=160, editable=False, help_text="user:NAME or system:COMPONENT")
    actor_user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        editable=False,
    )
    account = models.ForeignKey(
        "accounts.Account",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="audit_events",
        editable=False,
        help_text="Empty for platform-wide events.",
    )
    action = models.CharField(max_length=100, db_index=True, editable=False)
    target_type = models.CharField(max_length=100, blank=True, editable=False)
    target_id = models.CharField(max_length=64, blank=True, editable=False)
    details_json = models.TextField(default="{}", editable=False)
    prev_hash = models.CharField(max_length=64, unique=True, editable=False)
    hash = models.CharField(max_length=64, unique=True, editable=False)

    objects = AuditEventQuerySet.as_manager()

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["account", "-seq"], name="audit_account_seq"),
            models.Index(fields=["target_type", "target_id"], name="audit_target"),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.action} by {self.actor}"

    @property
    def details(self) -> dict:
        return json.loads(self.details_json)

    def chain_record(self) -> ChainRecord:
        return ChainRecord(
            seq=self.seq,
            created_at=self.created_at,
            actor=self.actor,
            actor_user_id=self.actor_user_id,
            account_id=self.account_id,
            action=self.action,
            target_type=self.target_type,
            target_id=self.target_id,
            details_json=self.details_json,
            prev_hash=self.prev_hash,
            hash=self.hash,
        )
