"""Reads of market data."""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings

from aether_site.rows import select_values
from trading.fees import FeeRates, published_rates
from trading.kraken_pairs import common_code
from trading.models import AccountFeeTier, Candle, Instrument


class UniverseError(Exception):
    """A traded pair that is not a tradable Kraken spot USD instrument; the message says which and why."""


def traded_instruments(symbols: list[str] | None = None) -> list[Instrument]:
    """The configured traded pairs (``AETHER_PAIRS``), each checked against the synced universe. Never
    silently drops a pair: any that is unknown, not USD, or not online is an error naming it."""
    symbols = list(settings.AETHER_PAIRS if symbols is None else symbols)
    found = {instrument.symbol: instrument for instrument in Instrument.objects.filter(symbol__in=symbols)}
    problems = []
    for symbol in symbols:
        instrument = found.get(symbol)
        base, _, quote = symbol.partition("/")
        if instrument is None and quote != "USD":
            problems.append(f"{symbol} is not quoted in USD: Aether trades spot USD pairs only")
        elif instrument is None and common_code(base) != base:
            problems.append(f"{symbol} is Kraken's legacy name: use {common_code(base)}/USD")
        elif instrument is None:
            problems.append(f"{symbol} is not in the synced spot USD universe (run manage.py sync_universe)")
        elif not instrument.tradable:
            problems.append(f"{symbol} is {instrument.status} on Kraken")
    if problems:
        raise UniverseError("AETHER_PAIRS: " + "; ".join(problems))
    return [found[symbol] for symbol in symbols]


def closed_candles(*, instrument: Instrument, timeframe: int, since=None, until=None):
    """Closed bars only, oldest first: what every decision reads."""
    candles = Candle.objects.filter(instrument=instrument, timeframe=timeframe, closed=True)
    if since is not None:
        candles = candles.filter(open_time__gte=since)
    if until is not None:
        candles = candles.filter(open_time__lt=until)
    return candles.order_by("open_time")


def fee_rates_for(*, account, instrument: Instrument) -> FeeRates:
    """The rates an order of ``account`` on ``instrument`` pays: its own TradeVolume answer when recorded,
    else Kraken's published base tier."""
    # One row per account and pair (a unique key), read on every cycle and order: ``aether_site.rows``.
    tier = select_values(
        AccountFeeTier,
        ("maker_pct", "taker_pct"),
        "account_id = %s AND instrument_id = %s",
        [account.pk, instrument.pk],
        limit=1,
    )
    if not tier:
        return published_rates()
    maker_pct, taker_pct = tier[0]
    return FeeRates(maker_pct=maker_pct, taker_pct=taker_pct)


def stored_run_end(*, instrument: Instrument, timeframe: int, start, end, max_gap: timedelta | None = None):
    """The newest closed bar of the stored run that begins at ``start``: bars are followed from ``start``
    while no more than ``max_gap`` (default: nothing, one bar after another) is missing before the next.
    ``None`` when nothing is stored at ``start``. A backfill resumes after it, so holes get filled."""
    bar = timedelta(minutes=timeframe)
    allowed = max_gap or timedelta(0)
    expected, newest = start, None
    times = (
        Candle.objects.filter(
            instrument=instrument, timeframe=timeframe, closed=True, open_time__gte=start, open_time__lt=end
        )
        .order_by("open_time")
        .values_list("open_time", flat=True)
    )
    for moment in times.iterator():
        if moment - expected > allowed:
            break
        newest, expected = moment, moment + bar
    return newest


# The feed flushes its status every few seconds: a message may be this much older than the window and
# the pair still live.
FEED_FLUSH_ALLOWANCE = timedelta(seconds=5)


def pair_staleness(*, now=None) -> dict[str, tuple[bool, float | None]]:
    """For each traded pair: (stale?, seconds since the feed's last message or None). Stale when the feed
    says so, never heard of the pair, or has not heard from it within ``MARKET_STALE_SECONDS`` (plus the
    flush allowance), which also catches a feed that died without marking anything."""
    from django.utils import timezone

    from trading.models import FeedStatus

    now = now or timezone.now()
    limit = timedelta(seconds=settings.MARKET_STALE_SECONDS) + FEED_FLUSH_ALLOWANCE
    statuses = {
        status.instrument.symbol: status
        for status in FeedStatus.objects.select_related("instrument").filter(
            instrument__symbol__in=settings.AETHER_PAIRS
        )
    }
    result = {}
    for symbol in settings.AETHER_PAIRS:
        status = statuses.get(symbol)
        last = None if status is None else status.last_message_at
        age = None if last is None else (now - last).total_seconds()
        stale = status is None or status.stale or last is None or now - last > limit
        result[symbol] = (stale, age)
    return result


def fills_for_export(*, account, since, broker: str | None = None):
    """An account's fills since ``since``, oldest first, with their order and pair."""
    from trading.models import Fill

    fills = Fill.objects.filter(account=account, executed_at__gte=since).select_related("order", "instrument")
    if broker:
        fills = fills.filter(broker=broker)
    return fills.order_by("executed_at", "pk")


def pair_rules_for(instrument: Instrument):
    """An instrument's Kraken rules as the broker interface carries them (``brokers.base.PairRules``)."""
    from trading.brokers.base import PairRules

    return PairRules(
        symbol=instrument.symbol,
        kraken_pair=instrument.kraken_pair,
        base_asset=instrument.base_asset,
        quote_asset=instrument.symbol.partition("/")[2],
        ordermin=instrument.ordermin,
        costmin=instrument.costmin,
        tick_size=instrument.tick_size,
        pair_decimals=instrument.pair_decimals,
        lot_decimals=instrument.lot_decimals,
        cost_decimals=instrument.cost_decimals,
        status=instrument.status,
    )


def book_of(account) -> str:
    """The book (broker) an account trades in now: ``sim`` in simulation mode, else ``kraken``."""
    from trading.models import BrokerName

    return BrokerName.SIM if account.simulation_mode else BrokerName.KRAKEN
