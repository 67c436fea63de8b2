"""Recompute the audit hash chain and name the first broken event."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from tqdm import tqdm

from governance.chain import verify_chain
from governance.models import AuditEvent
from governance.selectors import audit_chain_records


class Command(BaseCommand):
    help = (
        "Verify the audit trail: every event's hash, its link to the previous event and gap-free numbering. "
        "Exits 0 when intact; otherwise exits 1 naming the first broken event."
    )

    def handle(self, *args, **options) -> None:
        total = AuditEvent.objects.count()
        records = tqdm(
            audit_chain_records(),
            total=total,
            unit="event",
            desc="verify_audit",
            disable=None,
            file=self.stderr._out,
        )
        last = None

        def remember(stream):
            nonlocal last
            for record in stream:
                last = record
                yield record

        broken = verify_chain(remember(records))
        records.close()
        if broken is not None:
            event = (
                AuditEvent.objects.filter(seq=broken.seq).values_list("id", "action", "created_at").first()
            )
            where = f"seq {broken.seq}"
            if event is not None:
                where += f" (id {event[0]}, {event[1]} at {event[2].isoformat()})"
            raise CommandError(f"audit chain broken at event {where}: {broken.reason}", returncode=1)
        if last is None:
            self.stdout.write(self.style.SUCCESS("verify_audit: no events yet; nothing to verify"))
            return
        self.stdout.write(
            self.style.SUCCESS(f"verify_audit: {total} events intact; head seq {last.seq}, hash {last.hash}")
        )
