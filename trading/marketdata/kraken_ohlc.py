"""Kraken's public OHLC endpoint: rows ``[time, open, high, low, close, vwap, volume, count]``; the last row
is the bar still forming and ``last`` is one interval before it; at most the latest 720 bars are served,
those after ``since``."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from trading.candles import BadCandle, CandleRow, make_row

WINDOW = 720


class OhlcAnswerError(ValueError):
    """An OHLC answer that cannot be read; nothing from it is stored."""


@dataclass
class OhlcPage:
    rows: list[CandleRow]
    last: int  # Kraken's cursor: pass it as ``since`` for the next page
    bad: list[str] = field(default_factory=list)


def parse_ohlc_answer(answer: Mapping[str, Any], *, minutes: int) -> OhlcPage:
    if not isinstance(answer, Mapping):
        raise OhlcAnswerError("OHLC answer is not a JSON object")
    if answer.get("error"):
        raise OhlcAnswerError(f"Kraken OHLC error: {', '.join(map(str, answer['error']))}")
    result = answer.get("result")
    if not isinstance(result, Mapping) or "last" not in result:
        raise OhlcAnswerError("OHLC answer has no result or no 'last' cursor")
    series = [value for key, value in result.items() if key != "last"]
    if len(series) != 1 or not isinstance(series[0], list):
        raise OhlcAnswerError("OHLC answer should hold exactly one pair's rows")
    try:
        last = int(result["last"])
    except (TypeError, ValueError):
        raise OhlcAnswerError(f"OHLC 'last' cursor {result['last']!r} is not a timestamp") from None
    raw_rows = series[0]
    page = OhlcPage(rows=[], last=last)
    for index, raw in enumerate(raw_rows):
        forming = index == len(raw_rows) - 1  # Kraken's last row is the bar still forming
        try:
            if not isinstance(raw, list) or len(raw) != 8:
                raise BadCandle(f"expected 8 fields, got {raw!r}")
            page.rows.append(
                make_row(
                    open_time=datetime.fromtimestamp(int(raw[0]), tz=UTC),
                    open=raw[1],
                    high=raw[2],
                    low=raw[3],
                    close=raw[4],
                    volume=raw[6],
                    trades=int(raw[7]),
                    closed=not forming,
                    minutes=minutes,
                )
            )
        except (BadCandle, ValueError, TypeError, OverflowError) as exc:
            page.bad.append(str(exc))
    return page


def fetch_pages(
    fetch: Callable[[int | None], Mapping[str, Any]],
    *,
    minutes: int,
    since: datetime | None,
    max_pages: int = 50,
):
    """Yield pages from ``since`` (exclusive) until Kraken has nothing newer; ``fetch(since_seconds)`` calls
    the endpoint. Kraken serves only the latest 720 bars, so history older than that is out of reach."""
    cursor = None if since is None else int(since.timestamp())
    for _ in range(max_pages):
        page = parse_ohlc_answer(fetch(cursor), minutes=minutes)
        yield page
        closed_times = [row.open_time for row in page.rows if row.closed]
        if not closed_times or page.last == cursor:
            return
        cursor = page.last


def reachable_since(now: datetime, minutes: int) -> datetime:
    """The oldest bar Kraken's OHLC endpoint still serves."""
    return now - timedelta(minutes=minutes * WINDOW)
