from __future__ import annotations

from collections.abc import Iterator

from governance.chain import ChainBreak, ChainRecord, verify_chain
from governance.models import AuditEvent


def audit_chain_records(*, chunk_size: int = 2000) -> Iterator[ChainRecord]:
    """Every event in chain order, streamed."""
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=chunk_size):
        yield event.chain_record()


def audit_chain_verify() -> ChainBreak | None:
    return verify_chain(audit_chain_records())
