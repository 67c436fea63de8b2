"""Every fill of one account as CSV on stdout: time, price, quantity, fee and the PnL it realised."""

from __future__ import annotations

import csv
from datetime import UTC, datetime

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from accounts.models import Account
from trading.selectors import fills_for_export

COLUMNS = (
    "executed_at",
    "pair",
    "side",
    "price",
    "quantity",
    "notional_usd",
    "fee",
    "fee_currency",
    "liquidity",
    "realised_pnl_usd",
    "position_after",
    "broker",
    "client_order_id",
    "kraken_order_id",
    "trade_id",
    "order_type",
    "order_reason",
)


def _date(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise CommandError(f"--since {text!r}: expected a date like 2026-11-01 (ISO 8601)") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class Command(BaseCommand):
    help = "Write the account's fills since a date as CSV to stdout (UTC times; money in USD)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--account", required=True, metavar="SLUG")
        parser.add_argument("--since", required=True, help="date or time, UTC unless it says otherwise")
        parser.add_argument("--broker", choices=["sim", "kraken"], help="only this book (default: both)")

    def handle(self, *args, **options) -> None:
        account = Account.objects.filter(slug=options["account"]).first()
        if account is None:
            raise CommandError(f"--account {options['account']}: no such account")
        since = _date(options["since"])
        writer = csv.writer(self.stdout, lineterminator="\n")
        writer.writerow(COLUMNS)
        rows = 0
        fills = fills_for_export(account=account, since=since, broker=options["broker"])
        progress = tqdm(
            total=fills.count(), desc="export_trades", unit="fill", disable=None, file=self.stderr._out
        )
        for fill in fills.iterator():
            progress.update()
            writer.writerow(
                (
                    fill.executed_at.astimezone(UTC).isoformat(),
                    fill.instrument.symbol,
                    fill.side,
                    fill.price.normalize(),
                    fill.quantity.normalize(),
                    (fill.price * fill.quantity).normalize(),
                    fill.fee.normalize(),
                    fill.fee_currency,
                    fill.liquidity,
                    fill.realised_pnl.normalize(),
                    fill.position_after.normalize(),
                    fill.broker,
                    fill.order.client_order_id,
                    fill.order.kraken_order_id,
                    fill.trade_id,
                    fill.order.order_type,
                    fill.order.reason,
                )
            )
            rows += 1
        progress.close()
        self.stderr.write(f"export_trades: {rows} fills of {account.slug} since {since.isoformat()}")
