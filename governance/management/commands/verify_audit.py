"""Recompute the audit hash chain and name the first broken event."""

from __future__ import annotations

import re

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from governance.chain import ChainVerifier
from governance.models import AuditEvent
from governance.protection import audit_triggers_missing
from governance.selectors import audit_chain_records

HEAD = re.compile(r"^(?P<seq>[1-9][0-9]*):(?P<hash>[0-9a-f]{64})$")


class Command(BaseCommand):
    help = (
        "Verify the audit trail: every event's hash, its link to the previous event, gap-free numbering and "
        "the append-only triggers. Exits 0 when intact; otherwise 1, naming the first broken event. "
        "--expect-head SEQ:HASH (as printed by an earlier run) also proves the tail was not cut off."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--expect-head",
            metavar="SEQ:HASH",
            help="an earlier run's head: fail unless that event is still in the chain, unchanged",
        )

    def handle(self, *args, **options) -> None:
        expected = self._parse_head(options["expect_head"])
        verifier = ChainVerifier()
        progress = tqdm(
            total=AuditEvent.objects.count(),
            unit="event",
            desc="verify_audit",
            disable=None,
            file=self.stderr._out,
        )
        with progress:
            for record in audit_chain_records():
                broken = verifier.feed(record)
                if broken is not None:
                    raise CommandError(self._describe_break(broken.seq, broken.reason), returncode=1)
                if expected is not None and record.seq == expected[0] and record.hash != expected[1]:
                    raise CommandError(
                        f"audit chain rewritten: event seq {record.seq} no longer has the expected hash",
                        returncode=1,
                    )
                progress.update()

        head = verifier.head
        if expected is not None and (head is None or head.seq < expected[0]):
            found = f"the chain now ends at seq {head.seq}" if head else "the audit table is empty"
            raise CommandError(
                f"audit chain truncated: expected event seq {expected[0]} but {found}", returncode=1
            )
        missing = audit_triggers_missing()
        if missing:
            raise CommandError(
                f"audit table unprotected: triggers missing ({', '.join(missing)}); run manage.py migrate",
                returncode=1,
            )
        if head is None:
            self.stdout.write(self.style.SUCCESS("verify_audit: no events yet; nothing to verify"))
            return
        self.stdout.write(
            self.style.SUCCESS(
                f"verify_audit: {verifier.count} events intact; head {head.seq}:{head.hash} "
                "(keep it to check the tail later with --expect-head)"
            )
        )

    def _parse_head(self, text: str | None) -> tuple[int, str] | None:
        if text is None:
            return None
        match = HEAD.match(text.strip().lower())
        if match is None:
            raise CommandError("--expect-head: expected SEQ:HASH, e.g. 42:<64 hex digits>")
        return int(match["seq"]), match["hash"]

    def _describe_break(self, seq: int, reason: str) -> str:
        where = f"seq {seq}"
        event = AuditEvent.objects.filter(seq=seq).values_list("id", "action", "created_at").first()
        if event is not None:
            where += f" (id {event[0]}, {event[1]} at {event[2].isoformat()})"
        return f"audit chain broken at event {where}: {reason}"
