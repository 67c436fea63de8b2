"""A director fixes an account's hedge target (% of equity in USD), optionally until an expiry."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal, InvalidOperation

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from hedging.management.commands._shared import (
    USAGE,
    account_from,
    add_account_and_director,
    director_from,
    refused,
)
from hedging.services import hedge_set_manual


class Command(BaseCommand):
    help = (
        "Override an account's hedge target (--account SLUG --as-user DIRECTOR --target-pct X --reason TEXT "
        "[--expires ISO-8601 with a time zone]). Until the expiry (or hedge_set_auto) the target is X % of "
        "equity in USD; then the automatic target resumes. Audited. Exit status: 0 done, 1 refused, 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_account_and_director(parser)
        parser.add_argument("--target-pct", required=True, help="0..100, % of equity held in USD")
        parser.add_argument(
            "--expires", default=None, help="ISO 8601 with a time zone, e.g. 2026-12-01T00:00Z"
        )
        parser.add_argument("--reason", required=True)

    def handle(self, *args, **options) -> None:
        account, actor = account_from(options), director_from(options)
        try:
            target = Decimal(options["target_pct"])
        except InvalidOperation:
            raise CommandError(
                f"--target-pct {options['target_pct']!r} is not a number", returncode=USAGE
            ) from None
        expires = None
        if options["expires"]:
            try:
                expires = datetime.fromisoformat(options["expires"].replace("Z", "+00:00"))
            except ValueError:
                raise CommandError(
                    f"--expires {options['expires']!r} is not ISO 8601", returncode=USAGE
                ) from None
            if expires.tzinfo is None:
                raise CommandError(f"--expires {options['expires']!r} needs a time zone", returncode=USAGE)
        try:
            policy = hedge_set_manual(
                account=account, actor=actor, target_pct=target, expires_at=expires, reason=options["reason"]
            )
        except (PermissionDenied, ValidationError) as exc:
            raise refused(exc) from None
        until = f" until {policy.manual_expires_at.isoformat()}" if policy.manual_expires_at else ""
        self.stdout.write(
            self.style.SUCCESS(f"hedge_set_manual: {account.slug} target {policy.manual_target_pct} %{until}")
        )
