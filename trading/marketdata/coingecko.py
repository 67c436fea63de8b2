"""CoinGecko history: an httpx client for API v3 and the resumable candle backfill built on it.

The client talks to ``COINGECKO_API_URL`` with the plan's key header (demo: ``x-cg-demo-api-key``, pro:
``x-cg-pro-api-key``). It waits out HTTP 429 (``Retry-After`` when given, else exponential backoff with
jitter), retries 5xx answers and transport errors a bounded number of times within a total wait budget,
and raises :class:`CoinGeckoError` naming the endpoint and status otherwise.

:func:`backfill_coingecko` fetches ``/market_chart/range`` in chunks no longer than the span CoinGecko
answers at its finest granularity (hourly up to 90 days; 5-minutely within the last day), turns each
answer into closed bars (:mod:`trading.marketdata.coingecko_candles`) and stores them chunk by chunk
through :func:`trading.services.candles_upsert` (insert-only for CoinGecko: a Kraken bar is never
replaced). See its docstring for the resume rule.

A sample taken within ``CLOSE_GRACE`` (2 minutes) after a bar boundary is the CLOSE of the bar ending there
(see :mod:`~trading.marketdata.coingecko_candles` for the bucketing rule), so a chunk of bars ``[a, b)`` is
asked for as ``from=a+grace, to=b+grace`` (the same span, so the same granularity), and the newest bar
stored is one that ended at least ``grace`` ago.

Granularity check: CoinGecko picks the granularity itself. Each chunk's answer must have a median sample
spacing of at most :data:`COARSE_FACTOR` times the spacing expected for that span (5 minutes for bars under
an hour, which are fetched within the last day; an hour otherwise). A coarser answer (daily points where
hourly ones were due) fails the chunk with a :class:`CoinGeckoError` naming both spacings, and nothing from
it is stored, so a re-run fetches it again instead of counting it complete.

``/coins/{id}/ohlc`` then refines the most recent bars: market_chart gives samples (an hourly bar built
from one sample has open = high = low = close), while /ohlc gives candles with a true high and low —
30-minute ones for days 1-2, 4-hour ones for days 3-30 (CoinGecko's documented granularity). For a
timeframe that is a multiple of 4 hours the last 30 days are refined from 4-hour candles; for another
multiple of 30 minutes, the last 2 days from 30-minute candles. A refined bar replaces a sample-built
CoinGecko bar of the same time (deleted and re-inserted in one transaction) but never a bar from any other
source; re-running refines nothing twice (an identical bar is left alone).
"""

from __future__ import annotations

import email.utils
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.db import transaction
from django.utils import timezone

from governance.actors import SystemActor
from governance.services import audit_record
from trading.candles import check_timeframe, floor_time
from trading.marketdata.backoff import jittered_backoff
from trading.marketdata.coingecko_candles import (
    VOLUME_NOTE,
    MalformedAnswer,
    close_grace,
    market_chart_to_candles,
    ohlc_to_bars,
)
from trading.models import Candle, Instrument
from trading.selectors import stored_run_end
from trading.services import candles_upsert

# CoinGecko coin id → Aether symbol, for the backfill command.
DEFAULT_COINS = {"bitcoin": "BTC/USD", "ethereum": "ETH/USD", "solana": "SOL/USD"}

KEY_HEADERS = {"demo": "x-cg-demo-api-key", "pro": "x-cg-pro-api-key"}
DEMO_HISTORY_DAYS = 365  # the public and demo plans answer only the last 365 days
HOURLY_SPAN = timedelta(days=90)  # a market_chart/range span up to 90 days comes back hourly
FIVE_MINUTE_SPAN = timedelta(days=1)  # ... and up to 1 day within the last day, 5-minutely
FIVE_MINUTES, ONE_HOUR = timedelta(minutes=5), timedelta(hours=1)  # the spacings those spans come at
COARSE_FACTOR = 1.5  # an answer whose median spacing exceeds 1.5x the expected one is refused
RESUME_GAP = timedelta(days=1)  # missing time that ends the stored run a re-run resumes after
ACTOR = SystemActor("backfill_history")
_COIN_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,99}$")


class CoinGeckoError(Exception):
    """CoinGecko did not give a usable answer; the message names the endpoint and the status."""

    def __init__(self, message: str, *, endpoint: str | None = None, status: int | None = None) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.status = status


class CoinGeckoPlanLimit(CoinGeckoError):
    """The request asks for more than the configured plan serves (the demo plan's 365 days)."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5  # per request, the first one included
    base_delay: float = 1.0  # seconds; doubled on each retry, then jittered to 50-100 %
    max_delay: float = 60.0  # cap on one backoff wait
    max_total_wait: float = 300.0  # cap on all waits of one request, Retry-After included


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds to wait: delta-seconds or an HTTP date; ``None`` when absent or junk."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))


def _error_text(response: httpx.Response) -> str:
    """CoinGecko's error message from a JSON error body (``{"error": ...}`` or ``{"status": {...}}``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:200].strip()
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            error = error.get("status", error)
            if isinstance(error, dict):
                error = error.get("error_message", error)
        return str(error)[:300].strip()
    return str(body)[:200]


class CoinGeckoClient:
    """A small CoinGecko API v3 client. ``None`` arguments are read from settings; ``sleep`` and ``rng``
    are injectable so tests never wait."""

    def __init__(
        self,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        plan: str | None = None,
        timeout: float = 20.0,
        retry: RetryPolicy | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.plan = plan or settings.COINGECKO_PLAN
        if self.plan not in KEY_HEADERS:
            raise ImproperlyConfigured(
                f"COINGECKO_PLAN={self.plan!r}: expected one of {', '.join(KEY_HEADERS)}"
            )
        api_key = api_key or settings.COINGECKO_API_KEY
        if self.plan == "pro" and not api_key:
            raise ImproperlyConfigured(
                "COINGECKO_PLAN=pro needs COINGECKO_API_KEY (the pro API refuses keyless calls)"
            )
        headers = {"accept": "application/json", "user-agent": "aether-backfill"}
        if api_key:
            headers[KEY_HEADERS[self.plan]] = api_key
        self.retry = retry or RetryPolicy()
        self._sleep = sleep
        self._rng = rng or random.Random()  # noqa: S311 -- backoff jitter, not security
        self._http = httpx.Client(
            base_url=(base_url or settings.COINGECKO_API_URL).rstrip("/"),
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CoinGeckoClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _backoff(self, attempt: int) -> float:
        return jittered_backoff(
            attempt - 1, base=self.retry.base_delay, cap=self.retry.max_delay, floor=0.5, rng=self._rng.random
        )

    def get_json(self, path: str, params: dict):
        """GET ``path`` and decode its JSON, waiting out rate limits and retrying transient failures."""
        endpoint = f"GET {path}"
        waited = 0.0
        for attempt in range(1, self.retry.attempts + 1):
            try:
                response = self._http.get(path, params=params)
            except httpx.TransportError as exc:
                problem, status = f"{type(exc).__name__}: {exc}", None
                delay = self._backoff(attempt)
            else:
                status = response.status_code
                if response.is_success:
                    try:
                        return response.json()
                    except ValueError as exc:
                        raise CoinGeckoError(
                            f"CoinGecko {endpoint}: HTTP {status} with malformed JSON ({exc})",
                            endpoint=path,
                            status=status,
                        ) from None
                if status == 429:
                    header = response.headers.get("Retry-After")
                    given = parse_retry_after(header)
                    delay = self._backoff(attempt) if given is None else given
                    problem = f"HTTP 429 rate limited (Retry-After: {header or 'none'})"
                elif status >= 500:
                    delay = self._backoff(attempt)
                    problem = f"HTTP {status} {_error_text(response)}"
                else:
                    raise CoinGeckoError(
                        f"CoinGecko {endpoint}: HTTP {status}: {_error_text(response)}",
                        endpoint=path,
                        status=status,
                    )
            if attempt == self.retry.attempts:
                raise CoinGeckoError(
                    f"CoinGecko {endpoint}: gave up after {attempt} attempts; last: {problem}",
                    endpoint=path,
                    status=status,
                )
            if waited + delay > self.retry.max_total_wait:
                raise CoinGeckoError(
                    f"CoinGecko {endpoint}: {problem}; waiting {delay:.0f}s more would pass the "
                    f"{self.retry.max_total_wait:.0f}s wait budget (already waited {waited:.0f}s)",
                    endpoint=path,
                    status=status,
                )
            self._sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # pragma: no cover

    def ohlc(self, coin_id: str, *, days: int, vs_currency: str = "usd") -> list:
        """``/coins/{id}/ohlc``: candles ``[close_ms, open, high, low, close]`` over the last ``days``."""
        path = f"/coins/{_check_coin(coin_id)}/ohlc"
        answer = self.get_json(path, {"vs_currency": vs_currency, "days": days})
        if not isinstance(answer, list):
            raise CoinGeckoError(
                f"CoinGecko GET {path}: HTTP 200 without a list of candles", endpoint=path, status=200
            )
        return answer

    def market_chart_range(
        self, coin_id: str, *, start: datetime, end: datetime, vs_currency: str = "usd"
    ) -> dict:
        """``/coins/{id}/market_chart/range`` for ``[start, end]`` (UNIX seconds); the answer must have
        a ``prices`` list."""
        path = f"/coins/{_check_coin(coin_id)}/market_chart/range"
        params = {"vs_currency": vs_currency, "from": int(start.timestamp()), "to": int(end.timestamp())}
        answer = self.get_json(path, params)
        if not isinstance(answer, dict) or not isinstance(answer.get("prices"), list):
            keys = ", ".join(sorted(answer)) if isinstance(answer, dict) else type(answer).__name__
            raise CoinGeckoError(
                f"CoinGecko GET {path}: HTTP 200 without a 'prices' list (got: {keys or 'an empty object'})",
                endpoint=path,
                status=200,
            )
        return answer


def _check_coin(coin_id: str) -> str:
    if not _COIN_ID.match(coin_id):
        raise ValueError(f"{coin_id!r} is not a CoinGecko coin id (lower-case letters, digits, dashes)")
    return coin_id


# --- backfill ---------------------------------------------------------------------------------------------


@dataclass
class BackfillReport:
    coin_id: str
    symbol: str
    timeframe: int
    start: datetime  # first bar asked for
    end: datetime  # end of the last closed bar asked for (exclusive)
    resumed_from: datetime | None = None  # where fetching began when earlier bars were already stored
    chunks: int = 0
    chunks_done: int = 0
    inserted: int = 0
    kept: int = 0  # bars already stored (from any source), left as they were
    points: int = 0
    dropped: Counter = field(default_factory=Counter)  # reason → points dropped
    duplicates: int = 0
    refined: int = 0  # bars rebuilt from /ohlc candles (a true high and low)
    error: str = ""

    @property
    def complete(self) -> bool:
        return self.chunks_done == self.chunks and not self.error

    def summary(self) -> str:
        dropped = sum(self.dropped.values())
        reasons = ", ".join(f"{reason}: {n}" for reason, n in sorted(self.dropped.items()))
        return (
            f"backfill {self.symbol} from CoinGecko {self.coin_id} {self.timeframe}m "
            f"{self.start:%Y-%m-%d %H:%M} → {self.end:%Y-%m-%d %H:%M}: {self.inserted} inserted, "
            f"{self.kept} kept, {dropped} points dropped{f' ({reasons})' if reasons else ''}, "
            f"{self.chunks_done}/{self.chunks} chunks, {self.refined} bars refined from /ohlc"
            + (f"; stopped: {self.error}" if self.error else "")
        )

    def details(self) -> dict:
        return {
            "source": Candle.Source.COINGECKO.value,
            "coin": self.coin_id,
            "symbol": self.symbol,
            "timeframe": self.timeframe,
            "window": {"start": self.start, "end": self.end},
            "resumed_from": self.resumed_from,
            "chunks": self.chunks,
            "chunks_done": self.chunks_done,
            "inserted": self.inserted,
            "kept": self.kept,
            "points": self.points,
            "dropped": dict(sorted(self.dropped.items())),
            "duplicates": self.duplicates,
            "refined_from_ohlc": self.refined,
            "volume": VOLUME_NOTE,
            **({"error": self.error} if self.error else {}),
        }


def chunk_span(timeframe: int) -> timedelta:
    """The longest ``market_chart/range`` span that still comes back at the finest granularity, cut to a
    whole number of bars."""
    span = FIVE_MINUTE_SPAN if timeframe < 60 else HOURLY_SPAN
    bar = timedelta(minutes=timeframe)
    return max(bar, bar * (span // bar))


def expected_spacing(timeframe: int) -> timedelta:
    """The sample spacing a :func:`chunk_span` chunk comes back at: 5 minutes for bars under an hour
    (fetched within the last day), an hour otherwise."""
    return FIVE_MINUTES if timeframe < 60 else ONE_HOUR


def _minutes(spacing: timedelta) -> str:
    return f"{spacing / timedelta(minutes=1):.1f}".removesuffix(".0") + " min"


def check_granularity(
    spacing: timedelta | None, *, timeframe: int, points: int, path: str, start: datetime, end: datetime
) -> None:
    """Raise :class:`CoinGeckoError` when the median ``spacing`` of the answer for the bars ``[start, end)``
    is more than :data:`COARSE_FACTOR` times the expected one. Under two points there is nothing to
    measure."""
    expected = expected_spacing(timeframe)
    if spacing is not None and spacing > expected * COARSE_FACTOR:
        raise CoinGeckoError(
            f"CoinGecko GET {path} for {start:%Y-%m-%d %H:%M} → {end:%Y-%m-%d %H:%M}: answered too "
            f"coarsely: expected samples about {_minutes(expected)} apart, got {_minutes(spacing)} (median "
            f"of {points} points); nothing from this chunk was stored",
            endpoint=path,
            status=200,
        )


def plan_chunks(start: datetime, end: datetime, timeframe: int) -> list[tuple[datetime, datetime]]:
    """``[start, end)`` as consecutive bar-aligned ``(from, to)`` spans of at most :func:`chunk_span`."""
    step = chunk_span(timeframe)
    chunks, cursor = [], start
    while cursor < end:
        chunks.append((cursor, min(cursor + step, end)))
        cursor += step
    return chunks


def _ceil_time(moment: datetime, minutes: int) -> datetime:
    floor = floor_time(moment, minutes)
    return floor if floor == moment else floor + timedelta(minutes=minutes)


def ohlc_plan(timeframe: int) -> tuple[int, int] | None:
    """(days, candle minutes) of the /ohlc request that refines ``timeframe`` bars, or None."""
    if timeframe % 240 == 0:
        return 30, 240
    if timeframe % 30 == 0:
        return 2, 30
    return None


def _refine_with_ohlc(client, report: BackfillReport, *, instrument: Instrument, coin_id: str, now) -> None:
    plan = ohlc_plan(report.timeframe)
    if plan is None:
        return
    days, piece = plan
    path = f"/coins/{coin_id}/ohlc"
    try:
        bars = ohlc_to_bars(
            client.ohlc(coin_id, days=days), piece_minutes=piece, timeframe=report.timeframe, now=now
        )
    except MalformedAnswer as exc:
        raise CoinGeckoError(f"CoinGecko GET {path}: {exc}", endpoint=path, status=200) from exc
    if bars.spacing is not None and bars.spacing > timedelta(minutes=piece) * COARSE_FACTOR:
        raise CoinGeckoError(
            f"CoinGecko GET {path}?days={days}: expected {piece}-minute candles, got "
            f"{_minutes(bars.spacing)} apart; no bar was refined",
            endpoint=path,
            status=200,
        )
    report.dropped.update(bars.dropped)
    wanted = [row for row in bars.rows if report.start <= row.open_time < report.end]
    if not wanted:
        return
    with transaction.atomic():
        stored = {
            candle.open_time: candle
            for candle in Candle.objects.select_for_update().filter(
                instrument=instrument,
                timeframe=report.timeframe,
                open_time__in=[row.open_time for row in wanted],
            )
        }
        fresh = []
        for row in wanted:
            candle = stored.get(row.open_time)
            if candle is None:
                fresh.append(row)
            elif candle.source == Candle.Source.COINGECKO and (
                (candle.open, candle.high, candle.low, candle.close)
                != (row.open, row.high, row.low, row.close)
            ):
                candle.delete()  # a sample-built CoinGecko bar: replaced by the true candle below
                fresh.append(row)
        result = candles_upsert(
            instrument=instrument, timeframe=report.timeframe, rows=fresh, source=Candle.Source.COINGECKO
        )
    replaced = sum(1 for row in fresh if row.open_time in stored)
    report.refined += replaced
    report.inserted += result.inserted - replaced


def _audit(report: BackfillReport, action: str) -> None:
    with transaction.atomic():
        audit_record(actor=ACTOR, action=action, details=report.details())


def backfill_coingecko(
    *,
    instrument: Instrument,
    coin_id: str,
    days: int,
    timeframe: int,
    now: datetime | None = None,
    client: CoinGeckoClient | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> BackfillReport:
    """Store ``days`` of CoinGecko history for ``instrument`` as closed ``timeframe``-minute bars.

    The window is the closed bars between ``now - days`` (rounded up to a bar boundary) and ``now`` minus
    the close grace (a bar's closing sample comes just after its end); the bar still forming, or still
    waiting for its closing sample, is not stored (CoinGecko bars are insert-only, so it could never be
    completed). A chunk answered more coarsely than asked fails (see the module docstring).
    Each chunk is stored in its own transaction, so an interruption keeps what was stored.

    Resumable: fetching starts after the newest closed bar, from any source, of the stored run that begins
    at the window's start (:func:`trading.selectors.stored_run_end`, tolerating gaps up to
    :data:`RESUME_GAP`): a re-run after an interruption continues where the last stored chunk ended, while
    live Kraken bars from last week do not hide a missing year before them.
    Re-running adds nothing twice (the upsert is idempotent and insert-only).

    ``progress(chunks_done, chunks_total)`` is called after each chunk. One audit event is written at the
    end: ``history.backfilled``, or ``history.backfill_interrupted`` (what was stored, and the error)
    before the error propagates."""
    check_timeframe(timeframe)
    _check_coin(coin_id)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ValueError(f"days must be a whole number of days ≥ 1, not {days!r}")
    plan = settings.COINGECKO_PLAN if client is None else client.plan
    if plan == "demo" and days > DEMO_HISTORY_DAYS:
        raise CoinGeckoPlanLimit(
            f"CoinGecko's demo (and public) plan serves only the last {DEMO_HISTORY_DAYS} days of history; "
            f"{days} days were asked. Ask for at most {DEMO_HISTORY_DAYS} days, or set COINGECKO_PLAN=pro "
            "with a paid COINGECKO_API_KEY."
        )
    if timeframe < 60 and (timeframe % 5 or days > 1):
        raise ValueError(
            f"a {timeframe}-minute timeframe cannot be built from CoinGecko history: it serves 5-minute "
            "samples for the last day only and hourly ones before; use a timeframe of 60 minutes or more, "
            "or days=1 with a multiple of 5 minutes"
        )
    now = timezone.now() if now is None else now
    if timezone.is_naive(now):
        raise ValueError("now must be time-zone aware")
    start = _ceil_time(now - timedelta(days=days), timeframe)
    grace = close_grace(timeframe)
    end = floor_time(now - grace, timeframe)
    report = BackfillReport(
        coin_id=coin_id, symbol=instrument.symbol, timeframe=timeframe, start=start, end=end
    )
    newest = stored_run_end(
        instrument=instrument, timeframe=timeframe, start=start, end=end, max_gap=RESUME_GAP
    )
    fetch_from = start
    if newest is not None:
        fetch_from = report.resumed_from = newest + timedelta(minutes=timeframe)
    chunks = plan_chunks(fetch_from, end, timeframe)
    report.chunks = len(chunks)

    own_client = client is None
    client = CoinGeckoClient() if own_client else client
    try:
        for chunk_start, chunk_end in chunks:
            path = f"/coins/{coin_id}/market_chart/range"
            answer = client.market_chart_range(coin_id, start=chunk_start + grace, end=chunk_end + grace)
            try:
                conversion = market_chart_to_candles(
                    answer, timeframe=timeframe, now=now, start=chunk_start, end=chunk_end
                )
            except MalformedAnswer as exc:
                raise CoinGeckoError(f"CoinGecko GET {path}: {exc}", endpoint=path, status=200) from exc
            check_granularity(
                conversion.spacing,
                timeframe=timeframe,
                points=conversion.points + conversion.outside,
                path=path,
                start=chunk_start,
                end=chunk_end,
            )
            result = candles_upsert(
                instrument=instrument,
                timeframe=timeframe,
                rows=conversion.closed_rows,
                source=Candle.Source.COINGECKO,
            )
            report.inserted += result.inserted
            report.kept += result.kept + result.updated
            report.points += conversion.points
            report.dropped.update(conversion.dropped)
            report.duplicates += conversion.duplicates
            report.chunks_done += 1
            if progress is not None:
                progress(report.chunks_done, report.chunks)
        _refine_with_ohlc(client, report, instrument=instrument, coin_id=coin_id, now=now)
    except BaseException as exc:
        report.error = f"{type(exc).__name__}: {exc}"
        try:
            _audit(report, "history.backfill_interrupted")
        except Exception as audit_exc:
            exc.add_note(f"the audit event for the partial backfill was not written either: {audit_exc}")
        raise
    finally:
        if own_client:
            client.close()
    _audit(report, "history.backfilled")
    return report
