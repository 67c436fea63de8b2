"""Print an account's hedge performance: its return against the hedge held at the floor, fees included."""

from __future__ import annotations

from datetime import datetime, timedelta

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.utils import timezone

from hedging.management.commands._shared import REFUSED, USAGE, account_from
from hedging.selectors import hedge_latest, hedge_target_pct_for
from hedging.services import HedgeUnavailable, hedge_performance


def _moment(text: str, flag: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CommandError(f"{flag} {text!r} is not ISO 8601", returncode=USAGE) from None
    if moment.tzinfo is None:
        raise CommandError(f"{flag} {text!r} needs a time zone", returncode=USAGE)
    return moment


class Command(BaseCommand):
    help = (
        "Report an account's hedge (--account SLUG [--since ISO] [--until ISO]; default the last 30 "
        "days): the target in force, the latest snapshot, and the account's return against a "
        "counterfactual with the hedge held at the floor, fees included (docs/hedging.md). Read-only. "
        "Exit status: 0 done, 1 no data, 2 usage."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="SLUG")
        parser.add_argument("--since", default=None)
        parser.add_argument("--until", default=None)

    def handle(self, *args, **options) -> None:
        account = account_from(options)
        end = _moment(options["until"], "--until") if options["until"] else timezone.now()
        start = _moment(options["since"], "--since") if options["since"] else end - timedelta(days=30)
        self.stdout.write(
            f"hedge of {account.slug}: target in force {hedge_target_pct_for(account=account)} %"
        )
        latest = hedge_latest(account=account)
        if latest is not None:
            self.stdout.write(
                f"latest snapshot {latest.taken_at.isoformat()}: {latest.event}, {latest.mode}, target "
                f"{latest.target_pct} %, actual {latest.actual_pct} %: {latest.reason}"
            )
        try:
            performance = hedge_performance(account=account, start=start, end=end)
        except HedgeUnavailable as exc:
            raise CommandError("; ".join(exc.messages), returncode=REFUSED) from None
        rows = [
            ("period", f"{start.isoformat()} .. {end.isoformat()} ({performance.steps} intervals)"),
            ("start equity", f"{performance.start_equity} USD"),
            ("end equity", f"{performance.end_equity} USD"),
            ("account return", f"{performance.account_return_pct} %"),
            (f"hedge at the floor ({performance.floor_pct} %)", f"{performance.counterfactual_return_pct} %"),
            ("hedge value", f"{performance.hedge_value_pct} points"),
            ("hedge fees", f"{performance.hedge_fees} USD"),
            ("average USD share", f"{performance.average_usd_share_pct} %"),
        ]
        for label, value in rows:
            self.stdout.write(f"  {label:<28} {value}")
        self.stdout.write(
            self.style.SUCCESS(
                f"hedge_report: {account.slug} {performance.account_return_pct} % vs "
                f"{performance.counterfactual_return_pct} % at the floor"
            )
        )
