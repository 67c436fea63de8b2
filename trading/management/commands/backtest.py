"""Backtest the strategy cycle over stored candles or Kraken OHLCVT files (see ``docs/backtest.md``)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from learning.features import BTC
from learning.selectors import candle_frame
from learning.walkforward import TrainingSpec
from risk.engine.policy import Distance, ExitRule, RiskPolicy
from trading.backtest import (
    BacktestConfig,
    BacktestError,
    PairSeries,
    kraken_file_name,
    read_kraken_file,
    run_backtest,
)
from trading.kraken_pairs import parse_asset_pairs
from trading.management.commands.sync_universe import SNAPSHOT
from trading.models import Instrument
from trading.selectors import pair_rules_for

DECIMAL_FIELDS = {
    "risk_per_trade_pct",
    "volatility_target_pct",
    "max_position_pct",
    "max_group_exposure_pct",
    "max_daily_drawdown_pct",
    "min_edge_pct",
}
RULE_FIELDS = {"stop_loss", "take_profit", "trailing"}


def policy_from_file(path: Path) -> RiskPolicy:
    """A JSON object of :class:`RiskPolicy` fields (the rest keep their defaults); exit rules as
    ``{"kind": "atr"|"percent", "value": "2"}``. Refused, naming the problem, when invalid."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"--policy-file {path}: {exc}") from None
    if not isinstance(data, dict):
        raise CommandError(f"--policy-file {path}: not a JSON object")
    known = set(RiskPolicy.__dataclass_fields__)
    unknown = sorted(set(data) - known)
    if unknown:
        raise CommandError(f"--policy-file {path}: unknown field(s) {', '.join(unknown)}")
    values = {}
    try:
        for name, value in data.items():
            if name in DECIMAL_FIELDS:
                values[name] = None if value is None else Decimal(str(value))
            elif name in RULE_FIELDS:
                values[name] = ExitRule(Distance(value["kind"]), Decimal(str(value["value"])))
            else:
                values[name] = value
    except (InvalidOperation, KeyError, TypeError, ValueError) as exc:
        raise CommandError(f"--policy-file {path}: {name}: {exc!r}") from None
    policy = RiskPolicy(**values)
    problems = policy.validate()
    if problems:
        raise CommandError(f"--policy-file {path}: " + "; ".join(problems))
    return policy


def _day(text: str) -> datetime:
    try:
        return (
            datetime.fromisoformat(text).replace(tzinfo=UTC)
            if "T" not in text
            else datetime.fromisoformat(text).astimezone(UTC)
        )
    except ValueError:
        raise CommandError(f"{text!r} is not a date (YYYY-MM-DD)") from None


class Command(BaseCommand):
    help = (
        "Run the strategy cycle (strategy, hedge cap, risk sizing and checks, exits, kill switch, simulated "
        "fills) over history, without Celery or the database per bar; print the report (--json: one object)."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--pair", action="append", required=True, help="e.g. BTC/USD (repeatable)")
        parser.add_argument("--timeframe", type=int, default=60, help="bar minutes (default 60)")
        parser.add_argument("--from", dest="start", required=True, help="first day traded, UTC (YYYY-MM-DD)")
        parser.add_argument("--to", dest="end", required=True, help="end day, UTC, exclusive")
        parser.add_argument(
            "--history-dir",
            type=Path,
            help="a folder of Kraken OHLCVT files named as Kraken ships them (XBTUSD_60.csv); "
            "default: the stored candles",
        )
        parser.add_argument("--equity", default="100000", help="starting USD (default 100000)")
        parser.add_argument("--policy-file", type=Path, help="a JSON risk policy (default: the engine's)")
        parser.add_argument("--train-days", type=int, default=365, help="bars a model is fitted on, in days")
        parser.add_argument("--retrain-days", type=int, default=7, help="refit every N days (default 7)")
        parser.add_argument("--no-model", action="store_true", help="rule-based strategy only, no model")
        parser.add_argument("--no-hedge", action="store_true", help="hedge target 0 (no hedging.policy)")
        parser.add_argument("--json", action="store_true", help="print one JSON object")

    def handle(self, *args, **options) -> None:
        start, end = _day(options["start"]), _day(options["end"])
        timeframe = options["timeframe"]
        try:
            equity = Decimal(options["equity"])
        except InvalidOperation:
            raise CommandError(f"--equity {options['equity']!r} is not a number") from None
        policy = policy_from_file(options["policy_file"]) if options["policy_file"] else RiskPolicy()
        pairs = list(dict.fromkeys(options["pair"]))
        bars_per_day = 24 * 60 // timeframe
        history_days = options["train_days"] + 30
        since = start - timedelta(days=history_days)
        rules, rules_source = self._rules(pairs + ([BTC] if BTC not in pairs else []))
        frames = {
            symbol: self._frame(symbol, timeframe, since, end, options["history_dir"]) for symbol in rules
        }
        series = {symbol: PairSeries(rules[symbol], frames[symbol]) for symbol in pairs}
        try:
            config = BacktestConfig(
                start=start,
                end=end,
                equity=equity,
                timeframe=timeframe,
                policy=policy,
                training=None
                if options["no_model"]
                else TrainingSpec(kind="hgb", horizon=24, timeframe=timeframe),
                train_bars=options["train_days"] * bars_per_day,
                retrain_every=options["retrain_days"] * bars_per_day,
                **({"hedge": None} if options["no_hedge"] else {}),
            )
            total = len(range(0, int((end - start) / timedelta(minutes=timeframe))))
            with tqdm(total=total, unit="bar", desc="backtest", disable=None, file=self.stderr._out) as bar:
                done = [0]

                def progress(steps: int, _total: int) -> None:
                    bar.update(steps - done[0])
                    done[0] = steps

                result = run_backtest(
                    series,
                    config,
                    btc_frame=frames.get(BTC) if BTC not in pairs else None,
                    on_progress=progress,
                )
        except BacktestError as exc:
            raise CommandError(str(exc)) from None
        report = result.report()
        report["pair_rules_source"] = rules_source
        report["data_source"] = str(options["history_dir"]) if options["history_dir"] else "stored candles"
        if options["json"]:
            self.stdout.write(json.dumps(report))
            return
        self._human(report)

    def _rules(self, symbols: list[str]) -> tuple[dict, str]:
        """Each pair's Kraken rules: the synced instrument, else the committed AssetPairs snapshot (said so
        in the report)."""
        found = {item.symbol: pair_rules_for(item) for item in Instrument.objects.filter(symbol__in=symbols)}
        missing = [symbol for symbol in symbols if symbol not in found]
        if not missing:
            return found, "synced instruments"
        from trading.brokers.base import PairRules

        universe = parse_asset_pairs(json.loads(SNAPSHOT.read_text()))
        facts = {pair.symbol: pair for pair in universe.pairs}
        for symbol in missing:
            fact = facts.get(symbol)
            if fact is None:
                raise CommandError(f"--pair {symbol}: not a Kraken spot USD pair ({SNAPSHOT.name})")
            found[symbol] = PairRules(
                symbol=fact.symbol,
                kraken_pair=fact.kraken_pair,
                base_asset=fact.base_asset,
                quote_asset="USD",
                ordermin=fact.ordermin,
                costmin=fact.costmin,
                tick_size=fact.tick_size,
                pair_decimals=fact.pair_decimals,
                lot_decimals=fact.lot_decimals,
                cost_decimals=fact.cost_decimals,
                status=fact.status,
            )
        return found, f"{SNAPSHOT.name} for {', '.join(missing)} (not synced)"

    def _frame(self, symbol: str, timeframe: int, since: datetime, end: datetime, folder: Path | None):
        if folder is not None:
            path = folder / kraken_file_name(symbol, timeframe)
            if not path.is_file():
                raise CommandError(f"{symbol}: {path} not found (Kraken names it {path.name})")
            frame = read_kraken_file(path, until=end)
            return frame[frame.index >= since]
        instrument = Instrument.objects.filter(symbol=symbol).first()
        if instrument is None:
            raise CommandError(
                f"{symbol}: not in the synced universe (run sync_universe) and no --history-dir"
            )
        frame = candle_frame(instrument=instrument, timeframe=timeframe, since=since, until=end)
        if frame.empty:
            raise CommandError(f"{symbol}: no stored {timeframe}m candles before {end:%Y-%m-%d}")
        return frame

    def _human(self, report: dict) -> None:
        write = self.stdout.write
        write(
            f"Backtest {', '.join(report['pairs'])} {report['timeframe']}m {report['from']} → {report['to']}"
        )
        write(f"  data: {report['data_source']}; pair rules: {report['pair_rules_source']}")
        write(f"  equity {report['starting_equity']} → {Decimal(report['final_equity']):.2f} USD")
        write(
            f"  total return {report['total_return']:+.2%} (buy and hold {report['benchmark_return']:+.2%}), "
            f"max drawdown {report['max_drawdown']:.2%}, worst day {report['worst_day_return']:+.2%}, "
            f"Sharpe {report['sharpe']:.2f}"
        )
        write(
            f"  {report['trades']} fills, {report['round_trips']} round trips, "
            f"fees {report['fees_paid']:.2f} USD, "
            f"{report['rejected_entries']} entries refused by the risk check"
        )
        write(
            f"  kill switch: {report['kill_switch_trips']} trip(s) at a daily limit of "
            f"{report['daily_drawdown_limit']:.2%}; hedge target mean {report['hedge_target_mean']:.1%}, "
            f"{report['hedge_sells']} hedge sell(s)"
        )
        runs = ", ".join(f"{name} {count}" for name, count in report["strategy_runs"].items())
        write(f"  strategies: {runs}; models fitted: {report['models_trained']}")
        write(
            f"  speed: {report['bar_steps']} bar-steps in {report['loop_seconds']:.3f} s = "
            f"{report['bar_steps_per_s']:,.0f} bar-steps/s "
            f"(training {report['training_seconds']:.1f} s excluded)"
        )
        write("  daily returns:")
        for day, value in report["daily_returns"].items():
            write(f"    {day} {value:+.3%}")
