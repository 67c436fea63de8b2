"""Fund (or set) a simulated account's virtual balance of one asset."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Account
from governance.actors import SystemActor
from trading.services.orders import sim_balance_set


class Command(BaseCommand):
    help = (
        "Set the simulated balance of an asset (e.g. USD) for an account. Audited; never below reservations."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="SLUG")
        parser.add_argument("--asset", default="USD")
        parser.add_argument("--amount", required=True)
        parser.add_argument("--reason", required=True)

    def handle(self, *args, **options) -> None:
        account = Account.objects.filter(slug=options["account"]).first()
        if account is None:
            raise CommandError(f"--account {options['account']}: no such account")
        try:
            amount = Decimal(options["amount"])
        except InvalidOperation:
            raise CommandError(f"--amount {options['amount']!r}: not a number") from None
        try:
            balance = sim_balance_set(
                account=account,
                asset=options["asset"],
                amount=amount,
                actor=SystemActor("set_sim_balance"),
                reason=options["reason"],
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages)) from None
        self.stdout.write(
            self.style.SUCCESS(f"set_sim_balance: {account.slug} simulated {balance.asset} = {balance.total}")
        )
