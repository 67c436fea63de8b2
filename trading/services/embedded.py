"""Market data for embedded mode (``make run``): history to learn from, and bars to replay on an accelerated
clock, so a new machine sees the whole platform trade within a minute, offline.

Where the bars come from, in order (the first that applies):

1. ``AETHER_HISTORY_DIR``: Kraken's OHLCVT files, named as Kraken ships them (``XBTUSD_60.csv``), one per
   traded pair; a missing file is an error naming it.
2. Online: a CoinGecko backfill of the last 90 days of hourly bars (reachable at ``COINGECKO_API_URL``).
3. Otherwise generated history (:mod:`trading.marketdata.synthetic`), stored as ``synthetic`` and labelled
   so in the console and the admin header.

Of those bars, the newest ``replay_bars`` per pair are held back in a replay file (Kraken's format) under
``work_dir``; the market feed plays them (``run_market_feed --source replay --from-csv``), so they arrive
as closed bars do live and start the strategy cycles. The older bars are stored as history. Re-running with
history already stored keeps it and the replay files as they are (the feed resumes after the newest bar).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from django.conf import settings
from django.db import transaction

from governance.services import audit_record
from trading.models import Candle, Instrument
from trading.services.market import candles_import_kraken_file

logger = logging.getLogger(__name__)

HISTORY_DIR, BACKFILL, SYNTHETIC, STORED = "history_dir", "coingecko_backfill", "synthetic", "stored"
#: CoinGecko coin ids of the pairs a backfill can fetch.
COINS = {"BTC/USD": "bitcoin", "ETH/USD": "ethereum", "SOL/USD": "solana"}
BACKFILL_DAYS = 90


class EmbeddedDataError(RuntimeError):
    """The embedded market data cannot be prepared; the message says what to do."""


@dataclass
class EmbeddedMarketData:
    kind: str  # history_dir | coingecko_backfill | synthetic | stored
    replay_files: dict[str, Path] = field(default_factory=dict)
    history_bars: dict[str, int] = field(default_factory=dict)
    replay_bars: dict[str, int] = field(default_factory=dict)
    note: str = ""

    @property
    def synthetic(self) -> bool:
        return self.kind == SYNTHETIC


def replay_file(work_dir: Path, symbol: str, timeframe: int) -> Path:
    from trading.backtest import kraken_file_name

    return work_dir / "replay" / kraken_file_name(symbol, timeframe)


def _split(lines: list[str], replay_bars: int, history_bars: int) -> tuple[list[str], list[str]]:
    lines = [line for line in lines if line.strip()]
    if len(lines) <= replay_bars:
        raise EmbeddedDataError(f"{len(lines)} bars: at least {replay_bars + 1} are needed")
    return lines[-(replay_bars + history_bars) : -replay_bars], lines[-replay_bars:]


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line if line.endswith("\n") else line + "\n" for line in lines), encoding="utf-8")
    return path


def synthetic_data_present() -> bool:
    """True when any stored bar was generated (the admin header and the console say so)."""
    return Candle.objects.filter(source=Candle.Source.SYNTHETIC).exists()


def embedded_market_data_prepare(
    *,
    actor,
    instruments: list[Instrument],
    timeframe: int,
    work_dir: Path,
    history_dir: Path | None,
    history_bars: int,
    replay_bars: int,
    now: datetime | None = None,
    online: Callable[[], bool] | None = None,
    backfill: Callable[..., object] | None = None,
    progress: Callable[[str], None] = lambda text: None,
) -> EmbeddedMarketData:
    """Store the history and write the replay files (see the module docstring)."""
    now = now or datetime.now(UTC)
    stored = {
        instrument.symbol: Candle.objects.filter(
            instrument=instrument, timeframe=timeframe, closed=True
        ).count()
        for instrument in instruments
    }
    files = {i.symbol: replay_file(work_dir, i.symbol, timeframe) for i in instruments}
    if all(stored.values()) and all(path.exists() for path in files.values()):
        kind = SYNTHETIC if synthetic_data_present() else STORED
        return EmbeddedMarketData(kind, files, stored, note="history already stored; the replay resumes")
    if history_dir is not None:
        result = _from_history_dir(
            actor, instruments, timeframe, work_dir, history_dir, history_bars, replay_bars
        )
    elif (online or _coingecko_reachable)():
        result = _from_backfill(actor, instruments, timeframe, work_dir, replay_bars, now, backfill, progress)
    else:
        result = _synthetic(actor, instruments, timeframe, work_dir, history_bars, replay_bars, now, progress)
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="history.embedded_prepared",
            details={
                "kind": result.kind,
                "history_bars": result.history_bars,
                "replay_bars": result.replay_bars,
                "note": result.note,
            },
        )
    return result


def _import(actor, instrument, timeframe, path, source) -> int:
    result = candles_import_kraken_file(
        actor=actor, path=path, instrument=instrument, timeframe=timeframe, source=source
    )
    return result.inserted + result.updated


def _from_history_dir(actor, instruments, timeframe, work_dir, history_dir, history_bars, replay_bars):
    from trading.backtest import kraken_file_name

    result = EmbeddedMarketData(HISTORY_DIR, note=f"Kraken OHLCVT files from {history_dir}")
    missing = [kraken_file_name(i.symbol, timeframe) for i in instruments]
    missing = [name for name in missing if not (history_dir / name).is_file()]
    if missing:
        raise EmbeddedDataError(
            f"AETHER_HISTORY_DIR={history_dir} has no {', '.join(missing)} (Kraken's OHLCVT files, named as "
            "Kraken ships them); add them, change AETHER_PAIRS, or unset AETHER_HISTORY_DIR"
        )
    for instrument in instruments:
        source = history_dir / kraken_file_name(instrument.symbol, timeframe)
        lines = source.read_text(encoding="utf-8").splitlines()
        try:
            history, replay = _split(lines, replay_bars, history_bars)
        except EmbeddedDataError as exc:
            raise EmbeddedDataError(f"{source}: {exc}") from None
        history_path = _write(work_dir / "history" / source.name, history)
        result.history_bars[instrument.symbol] = _import(
            actor, instrument, timeframe, history_path, Candle.Source.KRAKEN_CSV
        )
        result.replay_files[instrument.symbol] = _write(
            replay_file(work_dir, instrument.symbol, timeframe), replay
        )
        result.replay_bars[instrument.symbol] = len(replay)
    return result


def _coingecko_reachable() -> bool:
    import httpx

    try:
        httpx.get(f"{settings.COINGECKO_API_URL.rstrip('/')}/ping", timeout=3.0)
    except httpx.HTTPError:
        return False
    return True


def _from_backfill(actor, instruments, timeframe, work_dir, replay_bars, now, backfill, progress):
    """CoinGecko's last 90 days, then the newest ``replay_bars`` moved from the database to the replay file
    (they come back through the feed, as closed bars do live)."""
    from trading.marketdata.coingecko import CoinGeckoError, backfill_coingecko

    backfill = backfill or backfill_coingecko
    unknown = [i.symbol for i in instruments if i.symbol not in COINS]
    if unknown:
        raise EmbeddedDataError(
            f"no CoinGecko coin id for {', '.join(unknown)}: set AETHER_HISTORY_DIR to Kraken's files instead"
        )
    result = EmbeddedMarketData(BACKFILL, note=f"CoinGecko backfill of the last {BACKFILL_DAYS} days")
    for instrument in instruments:
        progress(f"backfilling {instrument.symbol} from CoinGecko ({BACKFILL_DAYS} days)")
        try:
            report = backfill(
                instrument=instrument,
                coin_id=COINS[instrument.symbol],
                days=BACKFILL_DAYS,
                timeframe=timeframe,
                now=now,
            )
        except CoinGeckoError as exc:
            raise EmbeddedDataError(
                f"{instrument.symbol}: CoinGecko answered but the backfill failed ({exc}); set "
                "AETHER_HISTORY_DIR to Kraken's OHLCVT files, or retry later"
            ) from exc
        if not getattr(report, "complete", True):
            raise EmbeddedDataError(f"{instrument.symbol}: CoinGecko backfill incomplete: {report.summary()}")
        tail = list(
            Candle.objects.filter(instrument=instrument, timeframe=timeframe, closed=True).order_by(
                "-open_time"
            )[:replay_bars]
        )[::-1]
        lines = [
            f"{int(c.open_time.timestamp())},{c.open},{c.high},{c.low},{c.close},{c.volume},{c.trades or 0}"
            for c in tail
        ]
        result.replay_files[instrument.symbol] = _write(
            replay_file(work_dir, instrument.symbol, timeframe), lines
        )
        result.replay_bars[instrument.symbol] = len(lines)
        with transaction.atomic():
            Candle.objects.filter(pk__in=[c.pk for c in tail]).delete()
        result.history_bars[instrument.symbol] = Candle.objects.filter(
            instrument=instrument, timeframe=timeframe, closed=True
        ).count()
    return result


def _synthetic(actor, instruments, timeframe, work_dir, history_bars, replay_bars, now, progress):
    from trading.marketdata.synthetic import synthetic_ohlcvt

    progress("no AETHER_HISTORY_DIR and no internet: generating SYNTHETIC market history")
    # The generated series ends with the last closed bar: the replay plays its newest days again, on the
    # replay's own clock (trading.clock), as a replay of real files does.
    generated = synthetic_ohlcvt(
        [i.base_asset for i in instruments], end=now, bars=history_bars + replay_bars, timeframe=timeframe
    )
    result = EmbeddedMarketData(
        SYNTHETIC,
        note="SYNTHETIC: generated random-walk history, not market data (no history files, offline)",
    )
    for instrument in instruments:
        history, replay = _split(generated[instrument.base_asset], replay_bars, history_bars)
        name = replay_file(work_dir, instrument.symbol, timeframe).name
        history_path = _write(work_dir / "history" / name, history)
        result.history_bars[instrument.symbol] = _import(
            actor, instrument, timeframe, history_path, Candle.Source.SYNTHETIC
        )
        result.replay_files[instrument.symbol] = _write(
            replay_file(work_dir, instrument.symbol, timeframe), replay
        )
        result.replay_bars[instrument.symbol] = len(replay)
    return result
