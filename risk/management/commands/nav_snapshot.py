"""Record a NAV snapshot of one account or all of them now (feeds the kill switch like the schedule does)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Account
from governance.actors import SystemActor
from risk.management.commands._shared import REFUSED, USAGE
from risk.models import NavSnapshot
from risk.services import nav_snapshot_record

ACTOR = SystemActor("nav_snapshot")


class Command(BaseCommand):
    help = (
        "Mark an account's book (--account SLUG; every account without it) and record a NAV snapshot, "
        "feeding the kill switch. A held pair without a fresh price is reported and nothing is recorded for "
        "that account. Exit status: 0 all recorded, 1 some refused, 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", metavar="SLUG")
        parser.add_argument("--reason", choices=NavSnapshot.Reason.values, default=NavSnapshot.Reason.MANUAL)

    def handle(self, *args, **options) -> None:
        accounts = Account.objects.order_by("slug")
        if options["account"]:
            accounts = accounts.filter(slug=options["account"])
            if not accounts.exists():
                raise CommandError(f"--account {options['account']!r}: no such account.", returncode=USAGE)
        recorded, failed = 0, []
        for account in accounts:
            try:
                snapshot = nav_snapshot_record(account=account, actor=ACTOR, reason=options["reason"])
            except (PermissionDenied, ValidationError) as exc:
                failed.append(f"{account.slug}: {'; '.join(getattr(exc, 'messages', [str(exc)]))}")
                continue
            recorded += 1
            self.stdout.write(
                f"{account.slug}: {snapshot.equity} USD ({snapshot.broker}), day high {snapshot.day_high}, "
                f"drawdown {snapshot.drawdown_pct} %, kill switch {snapshot.kill_switch_status}"
            )
        for line in failed:
            self.stderr.write(self.style.ERROR(line))
        summary = f"nav_snapshot: {recorded} recorded, {len(failed)} refused"
        if failed:
            raise CommandError(summary, returncode=REFUSED)
        self.stdout.write(self.style.SUCCESS(summary))
