"""Make an account's book agree with its broker (Kraken when live) and report every difference."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from accounts.models import Account
from governance.actors import SystemActor
from trading.brokers.base import BrokerError
from trading.models import BrokerName
from trading.services.reconcile import reconcile_account, reconcile_account_books


class Command(BaseCommand):
    help = (
        "Reconcile orders, fills and balances with the broker of the account's mode: resolve UNKNOWN orders "
        "by client order id (never resending), add missing fills, set balances to Kraken's, report drift. "
        "Exit status 1 when drift was found."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("--account", action="append", metavar="SLUG", help="repeat for several")
        target.add_argument("--all", action="store_true", help="every account")
        parser.add_argument(
            "--broker",
            choices=[BrokerName.SIM, BrokerName.KRAKEN],
            help="which book (default: the account's current mode)",
        )

    def handle(self, *args, **options) -> None:
        if options["all"]:
            accounts = list(Account.objects.order_by("slug"))
        else:
            accounts = []
            for slug in options["account"]:
                account = Account.objects.filter(slug=slug).first()
                if account is None:
                    known = ", ".join(Account.objects.values_list("slug", flat=True)) or "none"
                    raise CommandError(f"--account {slug}: no such account; known: {known}")
                accounts.append(account)
        drift = False
        actor = SystemActor("reconcile")
        for account in tqdm(accounts, desc="reconcile", unit="account", disable=None, file=self.stderr._out):
            try:
                if options["broker"]:
                    reports = [reconcile_account(account=account, actor=actor, broker_name=options["broker"])]
                else:
                    reports = reconcile_account_books(account=account, actor=actor)
            except BrokerError as exc:
                raise CommandError(f"{account.slug}: {exc}") from None
            for report in reports:
                drift = self._show(report) or drift
        if drift:
            raise SystemExit(1)

    def _show(self, report) -> bool:
        style = self.style.WARNING if report.drift else self.style.SUCCESS
        self.stdout.write(style(report.summary()))
        for line in report.never_arrived:
            self.stdout.write(f"  never reached the exchange, closed (not resent): {line}")
        for line in report.resolved:
            self.stdout.write(f"  {line}")
        for asset, values in report.balance_drift.items():
            self.stdout.write(f"  {asset}: {values}")
        for line in report.foreign_open_orders:
            self.stdout.write(f"  open on Kraken but not placed by Aether (left alone): {line}")
        for line in report.problems:
            self.stdout.write(f"  problem: {line}")
        return report.drift
