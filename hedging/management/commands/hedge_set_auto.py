"""A director ends an account's manual hedge override: the automatic target resumes."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandParser

from hedging.management.commands._shared import account_from, add_account_and_director, director_from, refused
from hedging.services import hedge_set_auto


class Command(BaseCommand):
    help = (
        "Put an account's hedge back on its automatic target (--account SLUG --as-user DIRECTOR "
        "[--reason TEXT]). Audited. Safe to re-run. Exit status: 0 done, 1 refused, 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_account_and_director(parser)
        parser.add_argument("--reason", default="")

    def handle(self, *args, **options) -> None:
        account, actor = account_from(options), director_from(options)
        try:
            policy = hedge_set_auto(account=account, actor=actor, reason=options["reason"])
        except (PermissionDenied, ValidationError) as exc:
            raise refused(exc) from None
        self.stdout.write(
            self.style.SUCCESS(f"hedge_set_auto: {account.slug} is {policy.get_mode_display()}")
        )
