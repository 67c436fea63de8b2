"""Re-arm a tripped kill switch (a director; refused on the UTC day of the trip)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandParser

from risk.management.commands._shared import account_from, add_account_and_director, director_from, refused
from risk.services import killswitch_rearm


class Command(BaseCommand):
    help = (
        "Re-arm an account's tripped kill switch (--account SLUG --as-user DIRECTOR). Refused while the UTC "
        "day of the trip lasts. Audited. Exit status: 0 done, 1 refused (why is printed), 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_account_and_director(parser)
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options) -> None:
        account, actor = account_from(options), director_from(options)
        try:
            switch = killswitch_rearm(account=account, actor=actor, reason=options["reason"])
        except (PermissionDenied, ValidationError) as exc:
            raise refused(exc) from None
        self.stdout.write(self.style.SUCCESS(f"risk_rearm: {switch}"))
