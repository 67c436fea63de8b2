"""Write the walk-forward report on Kraken's hourly BTC and ETH files (docs/walk_forward.md)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from tqdm import tqdm

from learning.datasets import common_span, read_kraken_ohlcvt
from learning.features import MIN_TRAINING_BARS, prepare_candles
from learning.regime import RegimeRules, gmm_regimes, regime_labels
from learning.services import default_spec
from learning.walkforward import build_dataset, walk_forward

KRAKEN_DIR = Path(settings.BASE_DIR).parent / "shared" / "data" / "market" / "kraken"


def pct(value) -> str:
    return "n/a" if value is None else f"{value:+.1%}"


def num(value, digits=3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


class Command(BaseCommand):
    help = (
        "Walk-forward evaluate the hgb and logistic models on Kraken's hourly BTC and ETH files and write "
        "the out-of-sample figures against buy-and-hold to --output. Both files are first clipped to the "
        "span they share, then to the most recent --years (or --bars) of it; the range used is printed "
        "and written."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--btc-file", type=Path, default=KRAKEN_DIR / "XBTUSD_60.csv")
        parser.add_argument("--eth-file", type=Path, default=KRAKEN_DIR / "ETHUSD_60.csv")
        parser.add_argument("--years", type=float, default=3.0)
        parser.add_argument("--bars", type=int, default=None, help="only the last N bars (quick runs)")
        parser.add_argument("--kind", action="append", choices=("hgb", "logistic"), default=None)
        parser.add_argument(
            "--output", type=Path, default=Path(settings.BASE_DIR) / "docs" / "walk_forward.md"
        )

    def handle(self, *args, **options) -> None:
        kinds = options["kind"] or ["hgb", "logistic"]
        try:
            frames = common_span(
                {
                    pair: read_kraken_ohlcvt(options[key])
                    for pair, key in (("BTC/USD", "btc_file"), ("ETH/USD", "eth_file"))
                },
                years=options["years"],
                bars=options["bars"],
            )
            prepared = {
                pair: prepare_candles(frame, pair=pair, timeframe=60, min_bars=MIN_TRAINING_BARS)
                for pair, frame in frames.items()
            }
        except (FileNotFoundError, ValueError) as exc:  # a LearningDataError is a ValueError
            raise CommandError(str(exc)) from None
        span = self._span(frames)
        self.stdout.write(f"walk_forward_report: span used {span}")
        sections, summary = [], []
        with tqdm(total=len(kinds) * 2, unit="run", disable=None, file=self.stderr._out) as bar:
            for pair, candles in prepared.items():
                for kind in kinds:
                    spec = default_spec(timeframe=60, kind=kind)
                    started = time.perf_counter()
                    dataset = build_dataset([candles], btc=prepared["BTC/USD"], spec=spec)
                    result = walk_forward(dataset, spec)
                    seconds = time.perf_counter() - started
                    sections.append(self._section(pair, kind, result, seconds))
                    summary.append((pair, kind, result))
                    bar.update(1)
        regimes = [self._regimes(pair, candles) for pair, candles in prepared.items()]
        text = self._document(frames, prepared, summary, sections, regimes, options, span)
        options["output"].write_text(text, encoding="utf-8")
        best = max(summary, key=lambda item: item[2].score)
        self.stdout.write(
            self.style.SUCCESS(
                f"walk_forward_report: {options['output']} ({len(summary)} runs; best OOS Sharpe "
                f"{best[2].score:.3f}: {best[0]} {best[1]})"
            )
        )

    @staticmethod
    def _span(frames) -> str:
        start = min(frame.index[0] for frame in frames.values())
        end = max(frame.index[-1] for frame in frames.values())
        return f"{start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M} UTC"

    def _section(self, pair, kind, result, seconds) -> str:
        rows = [
            f"### {pair} — {kind}  ({seconds:.1f} s)",
            "",
            "| fold | test bars (UTC) | bars | base rate | hit rate | log loss | signal return | "
            "buy & hold | signal Sharpe | B&H Sharpe | signal max DD | B&H max DD | trades | exposure |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for fold in [*result.folds, {"fold": "**all OOS**", "test": ["", "", None], **result.oos}]:
            test = fold["test"]
            span = f"{test[0][:10]} → {test[1][:10]}" if test[0] else "all folds"
            bars = test[2] if test[2] is not None else fold["strategy"]["bars"]
            rows.append(
                f"| {fold['fold']} | {span} | {bars} | {num(fold['base_rate'])} | {num(fold['hit_rate'])} | "
                f"{num(fold['log_loss'], 4)} | {pct(fold['strategy']['total_return'])} | "
                f"{pct(fold['buy_hold']['total_return'])} | {num(fold['strategy']['sharpe'], 2)} | "
                f"{num(fold['buy_hold']['sharpe'], 2)} | {pct(-fold['strategy']['max_drawdown'])} | "
                f"{pct(-fold['buy_hold']['max_drawdown'])} | {fold['strategy']['trades']} | "
                f"{fold['strategy']['exposure']:.0%} |"
            )
        return "\n".join(rows)

    def _regimes(self, pair, candles) -> str:
        close = candles.frame["close"].to_numpy()
        rules = regime_labels(close, RegimeRules())
        gmm = gmm_regimes(close, window=RegimeRules().trend_window)
        both = [(a, b) for a, b in zip(rules, gmm, strict=True) if a is not None and b is not None]
        agree = np.mean([a == b for a, b in both])
        share = {
            label: np.mean([a == label for a, _ in both]) for label in ("bullish", "bearish", "sideways")
        }
        gmm_share = {
            label: np.mean([b == label for _, b in both]) for label in ("bullish", "bearish", "sideways")
        }
        return (
            f"| {pair} | {share['bullish']:.0%} / {share['bearish']:.0%} / {share['sideways']:.0%} | "
            f"{gmm_share['bullish']:.0%} / {gmm_share['bearish']:.0%} / {gmm_share['sideways']:.0%} | "
            f"{agree:.0%} |"
        )

    def _document(self, frames, prepared, summary, sections, regimes, options, span) -> str:
        spec = default_spec(timeframe=60)
        data_lines = []
        for pair, frame in frames.items():
            gaps = prepared[pair].gaps
            outages = [f"{g.bars} h from {g.start:%Y-%m-%d %H:%M}" for g in gaps if not g.filled]
            data_lines.append(
                f"- {pair}: {len(frame):,} bars, {frame.index[0]:%Y-%m-%d %H:%M} → "
                f"{frame.index[-1]:%Y-%m-%d %H:%M} UTC; {sum(g.filled for g in gaps)} short gaps filled with "
                "flat bars; outages left out of "
                f"the features: {', '.join(outages) or 'none'}"
            )
        overview = [
            "| pair | model | OOS bars | hit rate | majority class | log loss | signal return | buy & hold | "
            "signal Sharpe | B&H Sharpe | signal max DD | B&H max DD |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for pair, kind, result in summary:
            oos = result.oos
            overview.append(
                f"| {pair} | {kind} | {oos['strategy']['bars']} | {num(oos['hit_rate'])} | "
                f"{num(max(oos['base_rate'], 1 - oos['base_rate']))} | {num(oos['log_loss'], 4)} | "
                f"{pct(oos['strategy']['total_return'])} | {pct(oos['buy_hold']['total_return'])} | "
                f"{num(oos['strategy']['sharpe'], 2)} | {num(oos['buy_hold']['sharpe'], 2)} | "
                f"{pct(-oos['strategy']['max_drawdown'])} | {pct(-oos['buy_hold']['max_drawdown'])} |"
            )
        command = (
            "uv run python manage.py walk_forward_report"
            + (f" --years {options['years']:g}" if options["years"] != 3 else "")
            + (f" --bars {options['bars']}" if options["bars"] else "")
        )
        cut = f"the most recent {options['years']:g} years" + (
            f" (then the last {options['bars']} bars)" if options["bars"] else ""
        )
        return "\n".join(
            [
                "# Walk-forward report: Kraken hourly BTC/USD and ETH/USD",
                "",
                f"Generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by `{command}` from Kraken's own OHLCVT "
                "files (`../shared/data/market/kraken/`). Every figure below is that command's "
                "output; re-run it to reproduce them (the models are deterministic).",
                "",
                "## Data",
                "",
                f"Span used: {span}: both files clipped to the span they share, then to {cut} of it.",
                "",
                *data_lines,
                "",
                "## Method",
                "",
                f"- Label: 1 when the close {spec.horizon} bars later is above the entry close by more than "
                f"the round-trip taker fee ({2 * spec.taker_fee:.2%}: Kraken's base tier, "
                f"{spec.taker_fee:.2%} per side), else 0.",
                "- Features: returns over 1/4/12/24/72 h, realised volatility (24/72 h), ATR(14), bar range, "
                "trend slope (48/168 h), RSI(14), stochastic(24), volume z-score (72 h), BTC's 1 h and 24 h "
                "return and 24 h volatility (cross-asset; BTC's own for BTC), and the rules regime.",
                f"- Walk-forward: expanding window; the later half of the bars is cut into {spec.n_folds} "
                f"consecutive test folds; each fold's last training bar opens {spec.gap_bars + 1} bars "
                f"before the fold's first bar (label horizon {spec.horizon} + embargo {spec.embargo_bars} "
                f"+ 1, so {spec.gap_bars} bars lie between them): the last training label reads at most "
                "the close of the bar just before the fold, never a test price.",
                f"- Signal backtest: long-only spot; in when P(class 1) > {spec.entry_probability}, out when "
                f"< {spec.exit_probability} after holding at least {spec.horizon} bars; earns the next bar's "
                f"close-to-close return; pays {spec.taker_fee:.2%} on every entry and exit. Buy & hold over "
                "the same bars pays one entry and one exit. Sharpe is annualised from hourly returns (8,760 "
                "bars a year); max DD is the deepest fall of the equity curve.",
                "- Hit rate: share of bars where P ≥ 0.5 matches the label. Compare it with the majority "
                "class (always answering the more frequent label), not with 50 %.",
                "",
                "## Out of sample, all folds",
                "",
                *overview,
                "",
                "## Per fold",
                "",
                *[section + "\n" for section in sections],
                "## Regimes: the rule set against the Gaussian mixture",
                "",
                "Share of bars bullish / bearish / sideways under each method, and how often they agree. The "
                "rules (trend strength over 72 h, threshold 2.0) are what strategy and risk use; the mixture "
                "is fitted on the whole span (it sees the future) and is shown only for comparison.",
                "",
                "| pair | rules | Gaussian mixture | agreement |",
                "|---|---|---|---|",
                *regimes,
                "",
            ]
        )
