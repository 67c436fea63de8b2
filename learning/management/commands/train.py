"""Train a model with walk-forward evaluation, register it and apply the promotion gate."""

from __future__ import annotations

import signal
from datetime import UTC, datetime

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from governance.actors import SystemActor
from learning import services
from learning.errors import ArtifactIntegrityError, LearningDataError, PromotionRefused
from learning.models import ModelVersion
from trading.candles import TIMEFRAMES
from trading.models import Instrument


def utc_date(text: str) -> datetime:
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError:
        raise CommandError(f"{text!r} is not a date (YYYY-MM-DD)") from None


class Terminated(Exception):
    pass


def _terminate(signum, frame):
    raise Terminated


class Command(BaseCommand):
    help = (
        "Walk-forward train a model on the stored closed candles of --pair (several with --scope pooled), "
        "print its out-of-sample figures against buy-and-hold, register it as a candidate and promote it "
        "if it beats the champion by LEARNING_PROMOTION_MARGIN. --dry-run registers nothing."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--pair", action="append", required=True, metavar="SYMBOL", help="e.g. BTC/USD")
        parser.add_argument("--since", type=utc_date, help="first bar (UTC date); default: all stored")
        parser.add_argument("--until", type=utc_date, help="end (exclusive, UTC date); default: newest")
        parser.add_argument("--timeframe", type=int, choices=TIMEFRAMES, default=None, help="minutes")
        parser.add_argument("--scope", choices=("pair", "pooled"), default="pair")
        parser.add_argument("--kind", choices=("hgb", "logistic"), default=None)
        parser.add_argument("--horizon", type=int, default=None, help="label horizon in bars")
        parser.add_argument(
            "--no-promote", action="store_true", help="register, record the gate, keep champion"
        )
        parser.add_argument("--dry-run", action="store_true", help="evaluate only; register nothing")

    def handle(self, *args, **options) -> None:
        timeframe = options["timeframe"] or settings.AETHER_TIMEFRAME
        instruments = []
        for symbol in options["pair"]:
            instrument = Instrument.objects.filter(symbol=symbol).first()
            if instrument is None:
                raise CommandError(
                    f"{symbol} is not in the synced spot USD universe (run manage.py sync_universe)"
                )
            instruments.append(instrument)
        if options["scope"] == "pair" and len(instruments) > 1:
            raise CommandError("several --pair need --scope pooled (or train them one by one)")
        scope = ModelVersion.POOLED if options["scope"] == "pooled" else instruments[0].symbol
        spec = services.default_spec(timeframe=timeframe, kind=options["kind"], horizon=options["horizon"])
        registered: list[ModelVersion] = []
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            with tqdm(
                total=spec.n_folds, unit="fold", desc=scope, disable=None, file=self.stderr._out
            ) as bar:
                outcome = services.model_train(
                    actor=SystemActor("train"),
                    instruments=instruments,
                    timeframe=timeframe,
                    scope=scope,
                    since=options["since"],
                    until=options["until"],
                    spec=spec,
                    register=not options["dry_run"],
                    promote=not options["no_promote"],
                    on_fold=lambda done, total: bar.update(1),
                    on_registered=registered.append,
                )
        except (LearningDataError, ArtifactIntegrityError, PromotionRefused) as exc:
            raise CommandError(f"{exc}; {self._what_exists(registered, scope, timeframe)}") from None
        except Terminated:
            raise CommandError(
                f"terminated by SIGTERM; {self._what_exists(registered, scope, timeframe)}"
            ) from None
        finally:
            signal.signal(signal.SIGTERM, previous)
        for pair, gaps in outcome.gaps.items():
            for gap in gaps:
                self.stdout.write(self.style.WARNING(f"{pair}: outage gap of {gap} (features skip it)"))
        for fold in outcome.result.folds:
            self.stdout.write(
                f"fold {fold['fold']}: test {fold['test'][0][:10]} → {fold['test'][1][:10]}  "
                f"hit {fold['hit_rate']:.3f}  log loss {fold['log_loss']:.4f}  "
                f"return {fold['strategy']['total_return']:+.2%} "
                f"vs buy-and-hold {fold['buy_hold']['total_return']:+.2%}"
            )
        oos = outcome.result.oos
        summary = (
            f"train {scope} {timeframe}m {spec.kind} h={spec.horizon}: "
            f"OOS Sharpe {oos['strategy']['sharpe']:.3f} "
            f"(buy-and-hold {oos['buy_hold']['sharpe']:.3f}), return {oos['strategy']['total_return']:+.2%} "
            f"(buy-and-hold {oos['buy_hold']['total_return']:+.2%})"
        )
        if outcome.version is None:
            summary += "; dry run, nothing registered"
        else:
            summary += f"; registered #{outcome.version.pk}; gate: {outcome.decision.reason}"
            if outcome.decision.promote and not options["no_promote"]:
                summary += " → champion"
        self.stdout.write(self.style.SUCCESS(summary))

    @staticmethod
    def _what_exists(registered: list[ModelVersion], scope: str, timeframe: int) -> str:
        """After a failure: exactly what this run left in the registry, read back from the database."""
        champion = ModelVersion.objects.filter(
            scope=scope, timeframe=timeframe, status=ModelVersion.Status.CHAMPION
        ).first()
        serving = f"the champion of {scope} {timeframe}m is " + (
            "none" if champion is None else f"#{champion.pk}"
        )
        if not registered:
            return f"nothing was registered; {serving} (unchanged)"
        version = ModelVersion.objects.filter(pk=registered[0].pk).first()
        if version is None:
            return f"nothing was registered; {serving}"
        gate = "its gate verdict is recorded" if version.gate else "the promotion gate did not complete"
        return f"model #{version.pk} was registered and is a {version.status}; {gate}; {serving}"
