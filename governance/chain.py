"""The audit hash chain: canonical serialisation, SHA-256 links and verification. Plain Python, no Django.

Each event's hash covers a canonical JSON array of every recorded field plus the previous event's hash, so
editing, deleting or reordering any event breaks the chain at that point. Events are numbered ``seq`` 1, 2,
3, … without gaps; the first event links to :data:`GENESIS_HASH`.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from uuid import UUID

FORMAT = "aether-audit-v1"
GENESIS_HASH = "0" * 64


@dataclass(frozen=True, slots=True)
class ChainRecord:
    seq: int
    created_at: datetime
    actor: str
    actor_user_id: int | None
    account_id: int | None
    action: str
    target_type: str
    target_id: str
    details_json: str
    prev_hash: str
    hash: str = ""


@dataclass(frozen=True, slots=True)
class ChainBreak:
    seq: int
    reason: str


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal | UUID):
        return str(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    raise TypeError(f"audit details cannot hold a {type(value).__name__}: {value!r}")


def canonical_details(details: dict[str, Any] | None) -> str:
    """The one JSON text stored and hashed for ``details``: sorted keys, no spaces, no NaN or infinity."""
    if details is None:
        details = {}
    if not isinstance(details, dict):
        raise TypeError("audit details must be a dict")
    try:
        return json.dumps(
            details,
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
            allow_nan=False,
            default=_json_default,
        )
    except ValueError as exc:
        raise ValueError(f"audit details must be finite JSON: {exc}") from None


def canonical_bytes(record: ChainRecord) -> bytes:
    fields = [
        FORMAT,
        record.seq,
        record.created_at.astimezone(UTC).isoformat(timespec="microseconds"),
        record.actor,
        record.actor_user_id,
        record.account_id,
        record.action,
        record.target_type,
        record.target_id,
        record.details_json,
        record.prev_hash,
    ]
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def compute_hash(record: ChainRecord) -> str:
    return hashlib.sha256(canonical_bytes(record)).hexdigest()


def event_time(moment: datetime) -> datetime:
    """An event's timestamp, in UTC and cut to milliseconds: Django's serialisers (``dumpdata``) keep only
    milliseconds, and a backup restored with ``loaddata`` must still verify."""
    moment = moment.astimezone(UTC)
    return moment.replace(microsecond=moment.microsecond - moment.microsecond % 1000)


class ChainVerifier:
    """Checks records fed one at a time, in ``seq`` order; remembers how many it saw and the last one."""

    def __init__(self) -> None:
        self.count = 0
        self.head: ChainRecord | None = None

    def feed(self, record: ChainRecord) -> ChainBreak | None:
        expected_seq = self.head.seq + 1 if self.head else 1
        prev_hash = self.head.hash if self.head else GENESIS_HASH
        if record.seq != expected_seq:
            return ChainBreak(
                record.seq,
                f"expected seq {expected_seq}, found {record.seq}: events are missing or reordered",
            )
        if record.prev_hash != prev_hash:
            return ChainBreak(record.seq, "prev_hash does not match the previous event's hash")
        if compute_hash(record) != record.hash:
            return ChainBreak(record.seq, "hash does not match the event's contents: the event was altered")
        self.head = record
        self.count += 1
        return None


def verify_chain(records: Iterable[ChainRecord]) -> ChainBreak | None:
    """The first place where ``records`` (in ``seq`` order) stop forming an intact chain, or ``None``."""
    verifier = ChainVerifier()
    for record in records:
        if (broken := verifier.feed(record)) is not None:
            return broken
    return None
