"""Get embedded mode ready to trade: market data, funded simulated accounts, initial models, beat schedule."""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from accounts.models import Account
from governance.actors import SystemActor
from learning.errors import LearningDataError
from trading.models import Balance
from trading.selectors import UniverseError, traded_instruments
from trading.services.embedded import EmbeddedDataError, embedded_market_data_prepare

ACTOR = SystemActor("embedded_setup")
PLAN = "plan.json"


class Command(BaseCommand):
    help = (
        "Prepare embedded mode (make run): store market history (AETHER_HISTORY_DIR's Kraken files, else a "
        "CoinGecko backfill when online, else generated history labelled SYNTHETIC) and hold its newest "
        "EMBEDDED_REPLAY_BARS back for the replay; fund every simulated account without USD with "
        "EMBEDDED_SIM_START_USD; train an initial model per pair; install the beat schedule. Refuses to run "
        "with AETHER_ENV=production. Safe to re-run: what exists is kept."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--no-train", action="store_true", help="skip the initial models")

    def handle(self, *args, **options) -> None:
        if settings.PRODUCTION:
            raise CommandError("prepare_embedded is for embedded mode; refused with AETHER_ENV=production")
        try:
            instruments = traded_instruments()
        except UniverseError as exc:
            raise CommandError(str(exc)) from None
        timeframe = settings.AETHER_TIMEFRAME
        history_dir = Path(settings.AETHER_HISTORY_DIR) if settings.AETHER_HISTORY_DIR else None
        try:
            data = embedded_market_data_prepare(
                actor=ACTOR,
                instruments=instruments,
                timeframe=timeframe,
                work_dir=settings.EMBEDDED_DIR,
                history_dir=history_dir,
                history_bars=settings.EMBEDDED_HISTORY_BARS,
                replay_bars=settings.EMBEDDED_REPLAY_BARS,
                progress=lambda text: self.stdout.write(text),
            )
        except EmbeddedDataError as exc:
            raise CommandError(str(exc)) from None
        banner = self.style.WARNING if data.synthetic else self.style.SUCCESS
        self.stdout.write(banner(f"market data: {data.note}"))
        for symbol in data.replay_files:
            self.stdout.write(
                f"  {symbol}: {data.history_bars.get(symbol, 0)} bars of history, "
                f"{data.replay_bars.get(symbol, '?')} to replay"
            )
        self._fund()
        if not options["no_train"]:
            self._train(instruments, timeframe)
        call_command("install_beat_schedule", stdout=self.stdout)
        plan = {
            "kind": data.kind,
            "synthetic": data.synthetic,
            "replay": {symbol: str(path) for symbol, path in data.replay_files.items()},
            "seconds_per_bar": str(settings.EMBEDDED_SECONDS_PER_BAR),
        }
        settings.EMBEDDED_DIR.mkdir(parents=True, exist_ok=True)
        (settings.EMBEDDED_DIR / PLAN).write_text(json.dumps(plan, indent=2), encoding="utf-8")

    def _fund(self) -> None:
        from trading.services.orders import sim_balance_set

        amount = settings.EMBEDDED_SIM_START_USD
        for account in Account.objects.order_by("pk"):
            if not account.simulation_mode:
                self.stdout.write(f"  {account.slug}: live, not funded here")
                continue
            if Balance.objects.filter(account=account, broker="sim", asset="USD").exists():
                continue
            sim_balance_set(
                account=account,
                asset="USD",
                amount=amount,
                actor=ACTOR,
                reason="embedded mode starting funds",
            )
            self.stdout.write(f"  {account.slug}: simulated account funded with {amount} USD")

    def _train(self, instruments, timeframe: int) -> None:
        from learning.selectors import serving_champion
        from learning.services import model_train

        for instrument in tqdm(instruments, desc="initial models", unit="pair", file=self.stderr):
            if serving_champion(symbol=instrument.symbol, timeframe=timeframe) is not None:
                continue
            try:
                outcome = model_train(actor=ACTOR, instruments=[instrument], timeframe=timeframe)
            except LearningDataError as exc:
                self.stdout.write(self.style.WARNING(f"  {instrument.symbol}: no model ({exc}); rule-based"))
                continue
            decision = outcome.decision
            verdict = "champion" if decision is not None and decision.promote else "not promoted"
            why = decision.reason if decision is not None else ""
            self.stdout.write(f"  {instrument.symbol}: model #{outcome.version.pk} {verdict} ({why})")
