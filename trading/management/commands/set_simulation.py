"""Switch an account between simulation and live trading (see trading/services/mode.py)."""

from __future__ import annotations

from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from accounts.models import Account, User
from governance.actors import SystemActor
from trading.services.mode import account_set_simulation

ACTOR = SystemActor("set_simulation")
USAGE, REFUSED = 2, 1


class Command(BaseCommand):
    help = (
        "Put an account in simulation mode (--simulation; safe at any time) or live mode (--live --confirm "
        "SLUG --as-user DIRECTOR). Going live needs a director of the account (the platform may not do it on "
        "its own), a Kraken key that Kraken accepts now, and no open simulated orders. Audited. Exit status: "
        "0 done (or nothing to do), 1 refused (the reason is printed), 2 bad usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="SLUG")
        mode = parser.add_mutually_exclusive_group(required=True)
        mode.add_argument("--live", action="store_true", help="trade live on Kraken")
        mode.add_argument("--simulation", action="store_true", help="trade against the simulator")
        parser.add_argument("--confirm", metavar="SLUG", help="with --live: the account's slug again")
        parser.add_argument(
            "--as-user",
            metavar="USERNAME",
            help="the director on whose authority this runs (required with --live; recorded in the audit)",
        )

    def handle(self, *args, **options) -> None:
        account = Account.objects.filter(slug=options["account"]).first()
        if account is None:
            raise CommandError(f"--account {options['account']!r}: no such account.", returncode=USAGE)
        actor = ACTOR
        if options["as_user"]:
            actor = User.objects.filter(username=options["as_user"], is_active=True).first()
            if actor is None:
                raise CommandError(
                    f"--as-user {options['as_user']!r}: no such active user.", returncode=USAGE
                )
        if options["live"]:
            if actor is ACTOR:
                raise CommandError(
                    "--live needs --as-user DIRECTOR: only a director may go live.", returncode=USAGE
                )
            if not options["confirm"]:
                raise CommandError(f"--live needs --confirm {account.slug}.", returncode=USAGE)
        elif options["confirm"]:
            raise CommandError("--confirm goes with --live only.", returncode=USAGE)
        try:
            result = account_set_simulation(
                account=account, enabled=options["simulation"], actor=actor, confirm=options["confirm"]
            )
        except ValidationError as exc:
            raise CommandError("; ".join(exc.messages), returncode=REFUSED) from None
        except PermissionDenied as exc:
            raise CommandError(str(exc), returncode=REFUSED) from None
        style = self.style.WARNING if result.open_live_orders else self.style.SUCCESS
        self.stdout.write(style(f"set_simulation: {result.message}"))
