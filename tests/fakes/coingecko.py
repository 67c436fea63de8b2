"""A fake CoinGecko API v3 on 127.0.0.1: real HTTP on an ephemeral port, served from a background thread.

It speaks ``GET /api/v3/coins/{id}/market_chart/range?vs_currency=usd&from=<s>&to=<s>`` and
``GET /api/v3/coins/{id}/ohlc?vs_currency=usd&days=<n>`` in CoinGecko's shapes, with CoinGecko's automatic
granularity (docs, see ``shared/data/coingecko/samples.json``):

- market_chart/range: a range of at most 1 day within the last day → 5-minutely; up to 90 days → hourly;
  above 90 days → daily at 00:00 UTC. Samples sit a little after the grid time, as CoinGecko's do
  (``1704067241331`` is 00:00:41.331).
- ohlc: 1-2 days → 30-minute, 3-30 days → 4-hour, 31 days and beyond → 4-day candles; each row is
  ``[close_time_ms, open, high, low, close]``.

Prices come from a deterministic function of the sample time (``price(ms)``), the default synthetic one or
one the test gives, or from explicit ``[ms, value]`` points (served as given: duplicates, disorder and bad
values included). Every request is logged. Faults are queued with :meth:`FakeCoinGecko.inject` and apply to
the next calls (optionally after letting ``after`` calls through): HTTP 429 with ``Retry-After``, 5xx,
malformed JSON, missing keys, a dropped connection, a ``coarse`` market_chart answer (samples every ``step``
seconds, e.g. daily where the range rules say hourly, as CoinGecko may answer); data faults (bad values,
duplicated or shuffled points, gaps) are settings of the coin's series. When ``api_key`` is set, requests
without the matching header (``x-cg-demo-api-key`` or ``x-cg-pro-api-key``) get CoinGecko's 401;
``history_limit_days`` mimics the demo plan's 365-day window.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

MINUTE, HOUR, DAY = 60, 3600, 86400

RATE_LIMIT_BODY = {
    "status": {
        "error_code": 429,
        "error_message": "You've exceeded the Rate Limit. Please visit "
        "https://www.coingecko.com/en/api/pricing to subscribe to our API plans for higher rate limits.",
    }
}
HISTORY_LIMIT_MESSAGE = (
    "Your request exceeds the allowed time range. Public API users are limited to querying historical "
    "data within the past 365 days. Upgrade to a paid plan to enjoy full historical data access: "
    "https://www.coingecko.com/en/api/pricing. "
)


def default_price(ms: int) -> float:
    """A smooth, deterministic, always-positive price (two cycles: a day and about a month)."""
    seconds = ms / 1000
    return round(30_000 + 1_500 * math.sin(seconds / 13_751) + 4_000 * math.sin(seconds / 411_000), 2)


def sample_offset_ms(grid_seconds: int) -> int:
    """How far after the grid time CoinGecko's sample lands: deterministic, between 30 and 60 s."""
    return 30_000 + (grid_seconds // 300 * 7_919) % 30_000


@dataclass
class Series:
    """One coin's data. ``price`` is sampled at CoinGecko's granularity unless ``points`` is given."""

    price: Callable[[int], Any] = default_price
    points: list[list] | None = None  # explicit [ms, value] pairs, served as given
    overrides: dict[int, Any] = field(default_factory=dict)  # sample ms → value served instead (None, NaN…)
    gaps: list[tuple[int, int]] = field(default_factory=list)  # [start_ms, end_ms) without samples
    duplicate_every: int = 0  # repeat every n-th point
    shuffle: bool = False  # serve points out of order (a fixed permutation)

    def volume(self, ms: int, price: Any) -> Any:
        return price * 21_000 * 24 if isinstance(price, int | float) and math.isfinite(price) else price

    def cap(self, ms: int, price: Any) -> Any:
        return price * 19_700_000 if isinstance(price, int | float) and math.isfinite(price) else price


@dataclass
class Fault:
    kind: str  # status | malformed | missing (keys left out; OHLC rows cut short) | disconnect | coarse
    times: int
    after: int = 0
    status: int = 500
    retry_after: str | None = None
    keys: tuple[str, ...] = ("prices",)
    step: int = DAY  # coarse: seconds between the samples served, whatever the range asked
    endpoint: str | None = None  # "market_chart_range" | "ohlc" | None for any


@dataclass(frozen=True)
class LoggedRequest:
    path: str
    params: dict[str, str]
    headers: dict[str, str]
    status: int

    @property
    def endpoint(self) -> str:
        return "ohlc" if self.path.endswith("/ohlc") else "market_chart_range"


DISCONNECT = b"<close the connection without answering>"
ROUTE = re.compile(r"^/api/v3/coins/(?P<coin>[a-z0-9-]+)/(?P<endpoint>market_chart/range|ohlc)$")


class _Answer(Exception):
    def __init__(
        self, status: int, body: Any = None, *, headers: dict | None = None, raw: bytes | None = None
    ):
        self.status, self.body, self.headers, self.raw = status, body, headers or {}, raw


class FakeCoinGecko:
    def __init__(
        self,
        *,
        now: datetime | float | None = None,
        api_key: str | None = None,
        key_header: str = "x-cg-demo-api-key",
        history_limit_days: int | None = None,
    ) -> None:
        self.coins: dict[str, Series] = {"bitcoin": Series(), "ethereum": Series(), "solana": Series()}
        self._now = now.timestamp() if isinstance(now, datetime) else now
        self.api_key = api_key
        self.key_header = key_header.lower()
        self.history_limit_days = history_limit_days
        self.requests: list[LoggedRequest] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------

    def start(self) -> FakeCoinGecko:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._handle(self)

            def log_message(self, format, *args) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-coingecko",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = self._thread = None

    def __enter__(self) -> FakeCoinGecko:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/api/v3"

    # --- configuration --------------------------------------------------------------------------------------

    def now(self) -> float:
        return time.time() if self._now is None else self._now

    def set_now(self, moment: datetime | float) -> None:
        self._now = moment.timestamp() if isinstance(moment, datetime) else moment

    def series(self, coin: str, **options) -> Series:
        """Replace ``coin``'s data (see :class:`Series`) and return it."""
        self.coins[coin] = Series(**options)
        return self.coins[coin]

    def inject(self, kind: str, *, times: int = 1, after: int = 0, **options) -> Fault:
        """Queue a fault for the next ``times`` matching calls, after letting ``after`` of them through."""
        if kind not in {"status", "malformed", "missing", "disconnect", "coarse"}:
            raise ValueError(f"unknown fault {kind!r}")
        fault = Fault(kind=kind, times=times, after=after, **options)
        with self._lock:
            self.faults.append(fault)
        return fault

    def rate_limit(self, *, times: int = 1, retry_after: int | str | None = 1, after: int = 0) -> Fault:
        return self.inject(
            "status",
            status=429,
            times=times,
            after=after,
            retry_after=None if retry_after is None else str(retry_after),
        )

    def calls(self, endpoint: str | None = None) -> list[LoggedRequest]:
        with self._lock:
            return [r for r in self.requests if endpoint is None or r.endpoint == endpoint]

    # --- serving --------------------------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        parts = urlsplit(request.path)
        params = dict(parse_qsl(parts.query))
        headers = {name.lower(): value for name, value in request.headers.items()}
        try:
            self._answer(parts.path, params, headers)
        except _Answer as answer:
            status = answer.status
            with self._lock:
                self.requests.append(LoggedRequest(parts.path, params, headers, status))
            if answer.raw is DISCONNECT:
                request.close_connection = True
                return
            body = answer.raw if answer.raw is not None else json.dumps(answer.body).encode()
            request.send_response(status)
            request.send_header("Content-Type", "application/json; charset=utf-8")
            request.send_header("Content-Length", str(len(body)))
            for name, value in answer.headers.items():
                request.send_header(name, value)
            request.end_headers()
            request.wfile.write(body)

    def _answer(self, path: str, params: dict[str, str], headers: dict[str, str]) -> None:
        route = ROUTE.match(path)
        if route is None:
            raise _Answer(404, {"error": "Not Found"})
        endpoint = "ohlc" if route["endpoint"] == "ohlc" else "market_chart_range"
        fault = self._take_fault(endpoint)
        if fault is not None and fault.kind == "status":
            body = RATE_LIMIT_BODY if fault.status == 429 else {"error": "Internal Server Error"}
            extra = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
            raise _Answer(fault.status, body, headers=extra)
        if fault is not None and fault.kind == "malformed":
            raise _Answer(200, raw=b'{"prices": [[1704067241331, 42261.04], [1704070847')
        if fault is not None and fault.kind == "disconnect":
            raise _Answer(0, raw=DISCONNECT)
        if self.api_key is not None:
            given = headers.get(self.key_header) or params.get(self.key_header.replace("-", "_"))
            if given is None:
                raise _Answer(401, {"status": {"error_code": 10002, "error_message": "API Key Missing"}})
            if given != self.api_key:
                raise _Answer(401, {"status": {"error_code": 10010, "error_message": "Invalid API Key"}})
        series = self.coins.get(route["coin"])
        if series is None:
            raise _Answer(404, {"error": "coin not found"})
        if params.get("vs_currency") != "usd":
            raise _Answer(400, {"error": "invalid vs_currency"})
        missing = fault.keys if fault is not None and fault.kind == "missing" else ()
        if endpoint == "ohlc":
            rows = self._ohlc(series, params)
            raise _Answer(200, [row[:4] for row in rows] if missing else rows)
        step = fault.step if fault is not None and fault.kind == "coarse" else None
        answer = self._market_chart_range(series, params, step=step)
        raise _Answer(200, {key: value for key, value in answer.items() if key not in missing})

    def _take_fault(self, endpoint: str) -> Fault | None:
        with self._lock:
            chosen = None
            for fault in self.faults:
                if fault.times <= 0 or fault.endpoint not in (None, endpoint):
                    continue
                if fault.after > 0:
                    fault.after -= 1
                    continue
                if chosen is None:
                    chosen = fault
                    fault.times -= 1
            return chosen

    def _limit_history(self, oldest: float) -> None:
        if self.history_limit_days is not None and oldest < self.now() - self.history_limit_days * DAY - 60:
            raise _Answer(
                401, {"error": {"status": {"error_code": 10012, "error_message": HISTORY_LIMIT_MESSAGE}}}
            )

    def _samples(self, series: Series, start: float, end: float, step: int) -> list[list]:
        """``[ms, value]`` samples in ``[start, end]`` (seconds), CoinGecko-style: one per ``step``."""
        if series.points is not None:
            points = [list(p) for p in series.points if start * 1000 <= p[0] <= end * 1000]
        else:
            points = []
            grid = int(start) - int(start) % step
            offset = (lambda g: 0) if step == DAY else sample_offset_ms
            while grid <= end:
                ms = grid * 1000 + offset(grid)
                if start * 1000 <= ms <= end * 1000:
                    points.append([ms, series.overrides.get(ms, series.price(ms))])
                grid += step
        points = [p for p in points if not any(lo <= p[0] < hi for lo, hi in series.gaps)]
        if series.duplicate_every:
            points = [
                q
                for i, p in enumerate(points)
                for q in ([p, list(p)] if i % series.duplicate_every == 0 else [p])
            ]
        if series.shuffle:
            points = points[1::2][::-1] + points[0::2]
        return points

    def _market_chart_range(self, series: Series, params: dict[str, str], *, step: int | None = None) -> dict:
        try:
            start, end = float(params["from"]), float(params["to"])
        except (KeyError, ValueError):
            raise _Answer(400, {"error": "from and to must be UNIX seconds"}) from None
        if end < start:
            raise _Answer(400, {"error": "to must not be before from"})
        self._limit_history(start)
        span = end - start
        if step is not None:
            pass  # a coarse fault overrides CoinGecko's rules
        elif span <= DAY and start >= self.now() - DAY:
            step = 5 * MINUTE
        elif span <= 90 * DAY:
            step = HOUR
        else:
            step = DAY
        prices = self._samples(series, start, end, step)
        return {
            "prices": prices,
            "market_caps": [[ms, series.cap(ms, value)] for ms, value in prices],
            "total_volumes": [[ms, series.volume(ms, value)] for ms, value in prices],
        }

    def _ohlc(self, series: Series, params: dict[str, str]) -> list:
        try:
            days = int(params["days"])
        except (KeyError, ValueError):
            raise _Answer(400, {"error": "days must be a whole number"}) from None
        if days < 1:
            raise _Answer(400, {"error": "days must be at least 1"})
        now = self.now()
        self._limit_history(now - days * DAY)
        interval = 30 * MINUTE if days <= 2 else 4 * HOUR if days <= 30 else 4 * DAY
        step = 5 * MINUTE if interval == 30 * MINUTE else HOUR
        rows = []
        close = int(now) - int(now) % interval
        oldest = now - days * DAY
        while close >= oldest:
            opened = close - interval
            # A candle stamped T covers [T - interval, T]: it opens at the price at its open and closes at
            # the price at T (CoinGecko's timestamp marks the close).
            # "The price at t" is, as for market_chart, the sample CoinGecko takes just after t.
            values = [series.price(t * 1000 + sample_offset_ms(t)) for t in range(opened, close + 1, step)]
            rows.append([close * 1000, values[0], max(values), min(values), values[-1]])
            close -= interval
        return rows[::-1]


@pytest.fixture
def fake_coingecko(settings):
    """A running :class:`FakeCoinGecko`; ``settings.COINGECKO_API_URL`` points at it (demo plan, no key)."""
    with FakeCoinGecko() as fake:
        settings.COINGECKO_API_URL = fake.url
        settings.COINGECKO_API_KEY = None
        settings.COINGECKO_PLAN = "demo"
        yield fake
