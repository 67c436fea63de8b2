"""Halt new entries of an account now (a director); open entry orders are canceled, exits keep working."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandParser

from risk.management.commands._shared import account_from, add_account_and_director, director_from, refused
from risk.services import killswitch_halt


class Command(BaseCommand):
    help = (
        "Halt new entries of an account (--account SLUG --as-user DIRECTOR --reason TEXT). Open entry orders "
        "are canceled; exits keep working. Audited. Safe to re-run. Exit status: 0 done, 1 refused, 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_account_and_director(parser)
        parser.add_argument("--reason", required=True)

    def handle(self, *args, **options) -> None:
        account, actor = account_from(options), director_from(options)
        try:
            switch = killswitch_halt(account=account, actor=actor, reason=options["reason"])
        except (PermissionDenied, ValidationError) as exc:
            raise refused(exc) from None
        self.stdout.write(self.style.SUCCESS(f"risk_halt: {switch}"))
