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


class IntervalMismatch(ValueError):
    """The file's bars are not of the timeframe the import was asked for."""


FILE_NAME = re.compile(r"^[A-Z0-9]+_(?P<minutes>\d+)\.csv$", re.IGNORECASE)


def check_interval(name: str, lines: Iterable[str], *, minutes: int) -> None:
    """Refuse a file whose bars are not ``minutes`` long, before anything is stored: by Kraken's file name
    (``XBTUSD_60.csv``) when it has one, and always by the data — every time aligned to the interval, and
    the closest two bars exactly one interval apart (a daily file's are a day apart)."""
    named = FILE_NAME.match(name)
    if named and int(named["minutes"]) != minutes:
        raise IntervalMismatch(
            f"{name} holds {named['minutes']}-minute bars (Kraken's file name says so), "
            f"not {minutes}-minute ones"
        )
    seconds = minutes * 60
    previous, closest, misaligned, total = None, None, 0, 0
    for line in lines:
        head = line.split(",", 1)[0].strip()
        if not head.isdigit():
            continue  # a bad line: parse_lines counts and reports it
        moment = int(head)
        total += 1
        misaligned += moment % seconds != 0
        if previous is not None and moment > previous:
            gap = moment - previous
            closest = gap if closest is None else min(closest, gap)
        previous = moment
    if total and misaligned * 2 > total:
        raise IntervalMismatch(f"{misaligned} of {total} bars in {name} are not aligned to {minutes} minutes")
    if closest is not None and closest != seconds:
        raise IntervalMismatch(
            f"the closest two bars in {name} are {closest // 60} minutes apart: not {minutes}-minute bars"
        )
