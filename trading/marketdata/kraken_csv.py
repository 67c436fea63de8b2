"""Kraken's OHLCVT bulk files: ``time,open,high,low,close,volume,trades`` per line, no header, UTC unix
seconds, intervals with no trades simply absent. Plain Python, no Django."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime

from trading.candles import BadCandle, CandleRow, make_row


@dataclass
class CsvReport:
    rows: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason → count
    examples: list[str] = field(default_factory=list)  # "line N: reason", first few

    def skip(self, line_no: int, reason: str) -> None:
        # Count by kind of fault: the values in the message differ line by line.
        self.skipped[re.sub(r"\d{4}-\d\d-\d\dT\S+|=\S+|\d+", "…", reason)] += 1
        if len(self.examples) < 5:
            self.examples.append(f"line {line_no}: {reason}")


def parse_lines(lines: Iterable[str], *, minutes: int, report: CsvReport) -> Iterator[CandleRow]:
    """Valid rows, in file order; every bad line is counted in ``report`` with its reason, never stored."""
    for line_no, line in enumerate(lines, start=1):
        text = line.strip()
        if not text:
            continue
        fields = text.split(",")
        if len(fields) != 7:
            report.skip(line_no, f"expected 7 fields, found {len(fields)}")
            continue
        try:
            seconds = int(fields[0])
            row = make_row(
                open_time=datetime.fromtimestamp(seconds, tz=UTC),
                open=fields[1],
                high=fields[2],
                low=fields[3],
                close=fields[4],
                volume=fields[5],
                trades=int(fields[6]),
                minutes=minutes,
            )
        except (BadCandle, ValueError, OverflowError, OSError) as exc:
            report.skip(line_no, str(exc))
            continue
        report.rows += 1
        yield row
