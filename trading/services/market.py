"""Writers of the market-data tables: the universe and candles."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from aether_site.db import advisory_xact_lock
from governance.actors import actor_user
from governance.services import audit_record
from trading.candles import CandleRow, check_timeframe
from trading.fees import parse_trade_volume
from trading.kraken_pairs import PairFacts, parse_asset_pairs
from trading.marketdata.kraken_csv import CsvReport, check_interval, parse_lines
from trading.models import AccountFeeTier, Candle, FeedStatus, Instrument

FACT_FIELDS = (
    "kraken_pair",
    "altname",
    "wsname",
    "base",
    "quote",
    "base_asset",
    "ordermin",
    "costmin",
    "tick_size",
    "pair_decimals",
    "lot_decimals",
    "cost_decimals",
    "status",
)

logger = logging.getLogger(__name__)


@dataclass
class UniverseSyncReport:
    source: str
    created: list[str] = field(default_factory=list)
    changed: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # symbol → field → [before, after]
    delisted: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    kept_newer: list[str] = field(default_factory=list)  # stored facts newer than the answer's date
    rejected: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        kept = f", {len(self.kept_newer)} kept (newer facts on record)" if self.kept_newer else ""
        return (
            f"sync_universe ({self.source}): {len(self.created)} created, {len(self.changed)} changed, "
            f"{len(self.delisted)} delisted, {len(self.unchanged)} unchanged{kept}, "
            f"{len(self.rejected)} left out (not spot USD)"
        )

    def details(self) -> dict:
        return {
            "source": self.source,
            "created": self.created,
            "changed": self.changed,
            "delisted": self.delisted,
            "unchanged": len(self.unchanged),
            "kept_newer": self.kept_newer,
            "rejected": [f"{name}: {reason}" for name, reason in self.rejected],
        }


def _facts_dict(facts: PairFacts) -> dict:
    return {name: getattr(facts, name) for name in FACT_FIELDS}


def universe_sync(
    *, actor, answer: dict, source: str, delist_missing: bool, as_of: datetime | None = None
) -> UniverseSyncReport:
    """Apply a Kraken AssetPairs answer: create or update the spot USD instruments it lists and, when
    ``delist_missing`` (a full live answer), mark instruments it no longer lists as delisted. ``as_of`` is
    when a recorded answer was taken: facts synced after it are newer and are kept. One transaction, one
    audit event naming what changed."""
    universe = parse_asset_pairs(answer)
    report = UniverseSyncReport(source=source, rejected=list(universe.rejected))
    now = timezone.now()
    with transaction.atomic():
        locked = Instrument.objects.select_for_update(no_key=True)
        existing = {instrument.symbol: instrument for instrument in locked}
        for facts in universe.pairs:
            values = _facts_dict(facts)
            instrument = existing.get(facts.symbol)
            if instrument is None:
                Instrument.objects.create(
                    symbol=facts.symbol, source=source, synced_at=as_of or now, **values
                )
                report.created.append(facts.symbol)
                continue
            if as_of is not None and instrument.synced_at > as_of:
                report.kept_newer.append(facts.symbol)
                continue
            diff = {
                name: [str(getattr(instrument, name)), str(value)]
                for name, value in values.items()
                if _differs(getattr(instrument, name), value)
            }
            instrument.source, instrument.synced_at = source, as_of or now
            for name, value in values.items():
                setattr(instrument, name, value)
            instrument.save()
            if diff:
                report.changed[facts.symbol] = diff
            else:
                report.unchanged.append(facts.symbol)
        if delist_missing:
            listed = {facts.symbol for facts in universe.pairs}
            _refuse_mass_delisting(existing, listed)
            for symbol, instrument in existing.items():
                if symbol not in listed and instrument.status != Instrument.Status.DELISTED:
                    instrument.status, instrument.synced_at = Instrument.Status.DELISTED, now
                    instrument.save()
                    report.delisted.append(symbol)
        audit_record(actor=actor, action="universe.synced", details=report.details())
    return report


def _refuse_mass_delisting(existing: dict, listed: set[str]) -> None:
    """A live answer missing most of the pairs we know is far likelier a partial or broken answer than
    Kraken delisting them all at once: refuse, rather than stop trading everything."""
    live = [
        symbol for symbol, instrument in existing.items() if instrument.status != Instrument.Status.DELISTED
    ]
    missing = [symbol for symbol in live if symbol not in listed]
    if len(live) >= 3 and len(missing) * 2 > len(live):
        raise ValueError(
            f"the answer omits {len(missing)} of {len(live)} known pairs ({', '.join(sorted(missing))}); "
            "refusing to delist them from what looks like a partial answer"
        )


def _differs(current, new) -> bool:
    if isinstance(new, Decimal):
        return Decimal(current) != new
    return current != new


@dataclass(frozen=True)
class UpsertResult:
    inserted: int
    updated: int
    kept: int  # rows not written: a forming bar over a closed one, or a lower-precedence source

    @property
    def written(self) -> int:
        return self.inserted + self.updated


# Kraken's own data wins: a CoinGecko bar never replaces an existing bar, and neither does a replayed one
# (replay is for demos and tests; it must not relabel or alter real history).
INSERT_ONLY_SOURCES = frozenset({Candle.Source.COINGECKO, Candle.Source.REPLAY, Candle.Source.SYNTHETIC})
# pg_advisory_xact_lock namespace for candle series: 'CNDL' as a 32-bit integer.
CANDLE_LOCK_NAMESPACE = int.from_bytes(b"CNDL", "big", signed=True)


def _lock_series(instrument: Instrument, timeframe: int) -> None:
    """Writers of one (instrument, timeframe) series take turns, so the precedence rules below are
    decided on what is really stored."""
    advisory_xact_lock(CANDLE_LOCK_NAMESPACE, instrument.pk * 100_000 + timeframe)


UPDATE_FIELDS = ["open", "high", "low", "close", "volume", "trades", "closed", "source", "updated_at"]


def candles_upsert(
    *, instrument: Instrument, timeframe: int, rows: Iterable[CandleRow], source: str, batch_size: int = 2000
) -> UpsertResult:
    """Insert or update bars, idempotently: unique per (instrument, timeframe, open time). Duplicates in
    ``rows`` keep the last; order does not matter. A forming bar never overwrites a closed one, and a
    CoinGecko or replayed bar never overwrites an existing bar."""
    check_timeframe(timeframe)
    by_time: dict = {}
    for row in rows:
        by_time[row.open_time] = row
    if not by_time:
        return UpsertResult(0, 0, 0)
    times = sorted(by_time)
    now = timezone.now()
    with transaction.atomic():
        _lock_series(instrument, timeframe)
        existing = dict(
            Candle.objects.filter(
                instrument=instrument, timeframe=timeframe, open_time__gte=times[0], open_time__lte=times[-1]
            ).values_list("open_time", "closed")
        )
        insert_only = source in INSERT_ONLY_SOURCES
        to_write, inserted, updated, kept = [], 0, 0, 0
        for moment in times:
            row = by_time[moment]
            if moment in existing:
                if insert_only or (existing[moment] and not row.closed):
                    kept += 1
                    continue
                updated += 1
            else:
                inserted += 1
            to_write.append(
                Candle(
                    instrument=instrument,
                    timeframe=timeframe,
                    open_time=moment,
                    open=row.open,
                    high=row.high,
                    low=row.low,
                    close=row.close,
                    volume=row.volume,
                    trades=row.trades,
                    closed=row.closed,
                    source=source,
                    updated_at=now,
                )
            )
        if insert_only:
            Candle.objects.bulk_create(to_write, batch_size=batch_size, ignore_conflicts=True)
        else:
            Candle.objects.bulk_create(
                to_write,
                batch_size=batch_size,
                update_conflicts=True,
                unique_fields=["instrument", "timeframe", "open_time"],
                update_fields=UPDATE_FIELDS,
            )
    return UpsertResult(inserted, updated, kept)


def fee_tier_record(*, actor, account, answer: dict) -> list[AccountFeeTier]:
    """Store an account's own Kraken fee rates from its TradeVolume ``result``, for every instrument the
    answer covers, and audit the change (before and after). Until this has run for an account, the
    published schedule applies (see ``trading.selectors.fee_rates_for``)."""
    volume = parse_trade_volume(answer)
    by_pair = {
        instrument.kraken_pair: instrument
        for instrument in Instrument.objects.filter(kraken_pair__in=volume.rates)
    }
    unknown = sorted(set(volume.rates) - set(by_pair))
    if unknown:
        raise ValueError(f"TradeVolume names pairs outside the universe: {', '.join(unknown)}")
    now = timezone.now()
    stored, changes = [], {}
    with transaction.atomic():
        for pair, rates in sorted(volume.rates.items()):
            instrument = by_pair[pair]
            tier = (
                AccountFeeTier.objects.select_for_update()
                .filter(account=account, instrument=instrument)
                .first()
            )
            before = None if tier is None else [str(tier.maker_pct), str(tier.taker_pct)]
            if tier is None:
                tier = AccountFeeTier(account=account, instrument=instrument)
            tier.maker_pct, tier.taker_pct = rates.maker_pct, rates.taker_pct
            tier.volume_30d_usd, tier.fetched_at = volume.volume_30d_usd, now
            tier._history_user = actor_user(actor)
            tier.save()
            after = [str(rates.maker_pct), str(rates.taker_pct)]
            if before != after:
                changes[instrument.symbol] = {"before": before, "after": after}
            stored.append(tier)
        audit_record(
            actor=actor,
            account=account,
            action="fees.updated",
            details={"volume_30d_usd": volume.volume_30d_usd, "maker_taker_pct": changes},
        )
    return stored


def fee_tier_refresh(*, actor, account, client) -> list[AccountFeeTier]:
    """Ask Kraken (``client``: a ccxt client holding this account's own key) for the account's
    TradeVolume over the universe's pairs and record it."""
    pairs = ",".join(
        Instrument.objects.exclude(status=Instrument.Status.DELISTED).values_list("kraken_pair", flat=True)
    )
    answer = client.privatePostTradeVolume({"pair": pairs})
    return fee_tier_record(actor=actor, account=account, answer=answer.get("result", answer))


@dataclass
class FileImportResult:
    rows: int
    inserted: int
    updated: int
    duplicates: int  # lines repeating an earlier line's time: the last one is kept
    skipped: dict[str, int]
    examples: list[str]


def candles_import_kraken_file(
    *,
    actor,
    path,
    instrument: Instrument,
    timeframe: int,
    on_bytes=None,
    batch_size: int = 5000,
    source: str = Candle.Source.KRAKEN_CSV,
) -> FileImportResult:
    """Import one of Kraken's OHLCVT files (``time,open,high,low,close,volume,trades``) in batches; bad
    lines are counted by reason and never stored; idempotent. ``on_bytes(n)`` reports progress. One audit
    event for the run. ``source``: ``synthetic`` for generated history (insert-only, labelled as such)."""
    with open(path, encoding="utf-8") as handle:
        check_interval(Path(path).name, handle, minutes=timeframe)
    report = CsvReport()
    inserted = updated = duplicates = 0
    seen: set = set()

    def lines(handle):
        for line in handle:
            if on_bytes is not None:
                on_bytes(len(line))
            yield line

    with open(path, encoding="utf-8") as handle:
        rows = parse_lines(lines(handle), minutes=timeframe, report=report)
        while batch := list(islice(rows, batch_size)):
            for row in batch:
                duplicates += row.open_time in seen
                seen.add(row.open_time)
            result = candles_upsert(instrument=instrument, timeframe=timeframe, rows=batch, source=source)
            inserted += result.inserted
            updated += result.updated
    with transaction.atomic():
        audit_record(
            actor=actor,
            action="history.imported",
            details={
                "file": Path(path).name,
                "source": str(source),
                "symbol": instrument.symbol,
                "timeframe": timeframe,
                "rows": report.rows,
                "inserted": inserted,
                "updated": updated,
                "duplicates": duplicates,
                "skipped": dict(report.skipped),
            },
        )
    return FileImportResult(report.rows, inserted, updated, duplicates, dict(report.skipped), report.examples)


# --- The live feed's writes ------------------------------------------------------------------------------


def feed_statuses_prepare(*, instruments: Iterable[Instrument]) -> dict[str, bool]:
    """Make sure each pair has its FeedStatus row; returns symbol → stale as stored."""
    states = {}
    for instrument in instruments:
        status, _ = FeedStatus.objects.get_or_create(instrument=instrument)
        states[instrument.symbol] = status.stale
    return states


def feed_status_touch(*, seen: dict[int, tuple[datetime, Decimal | None]]) -> None:
    """Record the last message time (and price, when there is one) per instrument id: one UPDATE each."""
    now = timezone.now()
    with transaction.atomic():
        for instrument_id, (at, price) in seen.items():
            values = {"last_message_at": at, "updated_at": now}
            if price is not None:
                values["last_price"] = price
            FeedStatus.objects.filter(instrument_id=instrument_id).update(**values)


def feed_status_set_stale(
    *,
    actor,
    instrument: Instrument,
    stale: bool,
    at: datetime,
    last_seen: datetime | None,
    window_seconds: float,
    reason: str,
) -> bool:
    """Mark the pair stale or live, with its audit event (``market.stale`` / ``market.live``) in the same
    transaction. Compare-and-set: returns False, writing nothing, when the row already says so."""
    with transaction.atomic():
        status = FeedStatus.objects.select_for_update().get(instrument=instrument)
        if status.stale == stale:
            return False
        status.stale = stale
        status.stale_since = at if stale else None
        if last_seen is not None and (status.last_message_at is None or last_seen > status.last_message_at):
            status.last_message_at = last_seen
        status.save(update_fields=["stale", "stale_since", "last_message_at", "updated_at"])
        audit_record(
            actor=actor,
            action="market.stale" if stale else "market.live",
            target=status,
            details={
                "symbol": instrument.symbol,
                "reason": reason,
                "window_seconds": window_seconds,
                "last_message_at": last_seen.isoformat() if last_seen else None,
            },
        )
    return True


def feed_bars_store(
    *, instrument: Instrument, timeframe: int, rows: list[CandleRow], source: str
) -> UpsertResult:
    """Store closed bars and at most one forming bar (the newest): a forming bar older than the newest row
    written was never confirmed closed and is removed, so only the current one stays ``closed=False``.
    A replay only stores bars where none exists (``candles_upsert``) and removes only its own forming bars,
    never one from Kraken. Each closed bar of ``AETHER_TIMEFRAME`` written queues ``trading.bar_closed``
    (resting simulated orders matched, then every account's strategy cycle) once the write commits."""
    with transaction.atomic():
        result = candles_upsert(instrument=instrument, timeframe=timeframe, rows=rows, source=source)
        newest = max(row.open_time for row in rows)
        superseded = Candle.objects.filter(
            instrument=instrument, timeframe=timeframe, closed=False, open_time__lt=newest
        )
        if source == Candle.Source.REPLAY:
            superseded = superseded.filter(source=source)
        superseded.delete()
        if timeframe == settings.AETHER_TIMEFRAME and result.written:
            for row in rows:
                if row.closed:
                    transaction.on_commit(_queue_bar_closed(instrument.pk, row.open_time))
    return result


def _queue_bar_closed(instrument_id: int, open_time: datetime):
    def queue() -> None:
        from trading.tasks import bar_closed

        try:
            bar_closed.delay(instrument_id, open_time.isoformat())
        except Exception:  # the bar is stored; beat's sweep queues its cycles if it is still the newest
            logger.exception(
                "could not queue trading.bar_closed for instrument %s, bar %s: the broker refused it",
                instrument_id,
                open_time.isoformat(),
            )

    return queue
