"""Sync the spot USD universe from Kraken's AssetPairs (live, or a committed snapshot when offline)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import ccxt
from django.core.management.base import BaseCommand, CommandError, CommandParser

from governance.actors import SystemActor
from trading.marketdata.kraken_rest import describe_error, fetch_asset_pairs
from trading.services import universe_sync

SNAPSHOT = Path(__file__).resolve().parents[2] / "data" / "kraken_asset_pairs_2026-09-25.json"


class Command(BaseCommand):
    help = (
        "Create or update the Kraken spot USD instruments from AssetPairs (KRAKEN_API_URL). Idempotent and "
        "audited; says what changed. Pairs not quoted in USD or not spot are left out with the reason; "
        "pairs Kraken no longer lists are marked delisted. --from-file loads a recorded answer instead "
        f"(default snapshot: {SNAPSHOT.name}), for machines without internet."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--from-file",
            nargs="?",
            const=str(SNAPSHOT),
            metavar="FILE",
            help="a recorded AssetPairs answer; without FILE, the committed snapshot",
        )

    def handle(self, *args, **options) -> None:
        path = options["from_file"]
        as_of = None
        if path:
            answer, source = self._read(Path(path)), f"file:{Path(path).name}"
            as_of = self._recorded_at(answer, Path(path))
        else:
            try:
                answer = fetch_asset_pairs()
            except ccxt.BaseError as exc:
                raise CommandError(
                    f"Kraken AssetPairs failed ({describe_error(exc)}); offline, use --from-file"
                ) from None
            source = "kraken_api"
        try:
            report = universe_sync(
                actor=SystemActor("sync_universe"),
                answer=answer,
                source=source,
                delist_missing=not path,
                as_of=as_of,
            )
        except ValueError as exc:
            raise CommandError(f"{source}: {exc}") from None
        for symbol in report.created:
            self.stdout.write(f"created {symbol}")
        for symbol, diff in report.changed.items():
            changes = ", ".join(f"{name} {before} → {after}" for name, (before, after) in diff.items())
            self.stdout.write(f"changed {symbol}: {changes}")
        for symbol in report.delisted:
            self.stdout.write(self.style.WARNING(f"delisted {symbol}: no longer in Kraken's AssetPairs"))
        for symbol in report.kept_newer:
            self.stdout.write(f"kept {symbol}: the facts on record are newer than {path}")
        for name, reason in report.rejected:
            self.stdout.write(f"left out {name}: {reason}")
        self.stdout.write(self.style.SUCCESS(report.summary()))

    def _recorded_at(self, answer: dict, path: Path) -> datetime:
        """When a recorded answer was taken: the file must say so in ``recorded_at`` (a file's own date
        says when it was copied, not when Kraken answered)."""
        recorded = answer.get("recorded_at") if isinstance(answer, dict) else None
        if not recorded:
            raise CommandError(
                f"--from-file {path}: no recorded_at date; add the date Kraken gave this answer, e.g. "
                '"recorded_at": "2026-09-25"'
            )
        try:
            moment = datetime.fromisoformat(recorded)
        except ValueError:
            raise CommandError(f"--from-file {path}: recorded_at={recorded!r} is not an ISO date") from None
        return moment if moment.tzinfo else moment.replace(tzinfo=UTC)

    def _read(self, path: Path) -> dict:
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise CommandError(f"--from-file {path}: file not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CommandError(f"--from-file {path}: not a JSON AssetPairs answer ({exc})") from None
