"""A fake Kraken WebSocket v2 server on 127.0.0.1 (ephemeral port), speaking the message shapes recorded
from Kraken in September 2026 (``shared/data/kraken/recorded_2026-09.json``, ``websocket_v2``):

- a ``status`` update on connect;
- one subscribe acknowledgement per symbol, or the recorded refusal for a pair Kraken does not know on the
  v2 socket (``XBT/USD`` by default: "Currency pair not supported XBT/USD");
- ``ticker``, ``ohlc`` and ``heartbeat`` messages the test pushes (optionally an ``ohlc`` snapshot sent on
  subscribe), and raw frames for malformed input;
- :meth:`drop` closes every connection abruptly (no close frame), as a network failure would;
- it counts connections and logs every subscribe request.

Use it inside a running event loop: ``async with FakeKrakenWS() as fake: ... fake.url ...``.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from websockets.asyncio.server import ServerConnection, serve


def _stamp(moment: datetime | None = None) -> str:
    return (moment or datetime.now(UTC)).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _begin(moment: datetime) -> str:
    # Kraken writes interval_begin with nanoseconds.
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def _num(value):
    """Kraken sends prices as JSON numbers: Decimal/str → float (short decimals print back unchanged)."""
    return float(value) if isinstance(value, Decimal | str) else value


class FakeKrakenWS:
    def __init__(
        self, *, refuse: tuple[str, ...] = ("XBT/USD",), heartbeat_every: float | None = None
    ) -> None:
        self.refuse = set(refuse)
        self.heartbeat_every = heartbeat_every
        self.connections = 0
        self.subscribe_requests: list[dict] = []  # each request's params, as received
        self.ohlc_snapshot: dict[str, list[dict]] = {}  # symbol → candles sent as a snapshot on subscribe
        self.clients: set[ServerConnection] = set()
        self._server = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v2"

    async def __aenter__(self) -> FakeKrakenWS:
        self._server = await serve(self._handler, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc) -> None:
        self._server.close()
        await self._server.wait_closed()

    # -- what the test inspects --

    def subscribed(self, channel: str) -> list[str]:
        """Every symbol subscribed on ``channel`` so far, in order, refusals included."""
        return [
            symbol
            for params in self.subscribe_requests
            if params.get("channel") == channel
            for symbol in params.get("symbol", [])
        ]

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = asyncio.get_running_loop().time() + timeout
        while not condition():
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("fake Kraken WS: condition not met in time")
            await asyncio.sleep(0.01)

    # -- the server --

    async def _handler(self, ws: ServerConnection) -> None:
        self.connections += 1
        self.clients.add(ws)
        beats = asyncio.create_task(self._beat(ws)) if self.heartbeat_every else None
        try:
            await ws.send(json.dumps(self.status_message()))
            async for raw in ws:
                request = json.loads(raw)
                if request.get("method") == "subscribe":
                    await self._on_subscribe(ws, request)
                elif request.get("method") == "ping":
                    await ws.send(json.dumps({"method": "pong", "req_id": request.get("req_id")}))
        except Exception:  # noqa: S110 - a dropped client ends its handler; the test sees the drop itself
            pass
        finally:
            self.clients.discard(ws)
            if beats is not None:
                beats.cancel()

    async def _beat(self, ws: ServerConnection) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_every)
            await ws.send(json.dumps({"channel": "heartbeat"}))

    async def _on_subscribe(self, ws: ServerConnection, request: dict) -> None:
        params = request.get("params", {})
        self.subscribe_requests.append(params)
        channel = params.get("channel")
        time_in = _stamp()
        for symbol in params.get("symbol", []):
            if symbol in self.refuse:
                await ws.send(json.dumps(self.refusal(symbol, req_id=request.get("req_id"), time_in=time_in)))
                continue
            result = {"channel": channel, "snapshot": bool(params.get("snapshot", True)), "symbol": symbol}
            if channel == "ohlc":
                result["interval"] = params.get("interval", 1)
            ack = {
                "method": "subscribe",
                "result": result,
                "success": True,
                "time_in": time_in,
                "time_out": _stamp(),
            }
            if "req_id" in request:
                ack["req_id"] = request["req_id"]
            await ws.send(json.dumps(ack))
            if channel == "ohlc" and self.ohlc_snapshot.get(symbol):
                await ws.send(
                    json.dumps(
                        {
                            "channel": "ohlc",
                            "type": "snapshot",
                            "timestamp": _stamp(),
                            "data": self.ohlc_snapshot[symbol],
                        }
                    )
                )

    # -- message shapes (as recorded) --

    @staticmethod
    def status_message() -> dict:
        return {
            "channel": "status",
            "type": "update",
            "data": [
                {
                    "version": "2.0.10",
                    "system": "online",
                    "api_version": "v2",
                    "connection_id": random.getrandbits(63),
                    "upcoming_maintenance": [],
                    "emergency": [],
                }
            ],
        }

    @staticmethod
    def refusal(symbol: str, *, req_id=None, time_in: str | None = None) -> dict:
        message = {
            "error": f"Currency pair not supported {symbol}",
            "method": "subscribe",
            "success": False,
            "symbol": symbol,
            "time_in": time_in or _stamp(),
            "time_out": _stamp(),
        }
        if req_id is not None:
            message["req_id"] = req_id
        return message

    @staticmethod
    def ticker_message(symbol: str, *, last, bid=None, ask=None, timestamp: datetime | None = None) -> dict:
        bid = last if bid is None else bid
        ask = last if ask is None else ask
        return {
            "channel": "ticker",
            "type": "update",
            "data": [
                {
                    "symbol": symbol,
                    "bid": _num(bid),
                    "bid_qty": 0.56251979,
                    "ask": _num(ask),
                    "ask_qty": 0.0004478,
                    "last": _num(last),
                    "volume": 3156.8478211,
                    "vwap": _num(last),
                    "low": _num(last),
                    "high": _num(last),
                    "change": -429.3,
                    "change_pct": -0.51,
                    "trades": 135262,
                    "timestamp": _stamp(timestamp),
                }
            ],
        }

    @staticmethod
    def candle(
        symbol: str, *, begin: datetime, interval: int, open, high, low, close, volume="1.5", trades=3
    ) -> dict:
        return {
            "symbol": symbol,
            "open": _num(open),
            "high": _num(high),
            "low": _num(low),
            "close": _num(close),
            "trades": trades,
            "volume": _num(volume),
            "vwap": _num(close),
            "interval_begin": _begin(begin),
            "interval": interval,
            "timestamp": _stamp(begin),
        }

    # -- pushing to every connected client --

    async def send(self, message: dict) -> None:
        await self.send_raw(json.dumps(message))

    async def send_raw(self, text: str) -> None:
        for ws in list(self.clients):
            await ws.send(text)

    async def ticker(self, symbol: str, **fields) -> None:
        await self.send(self.ticker_message(symbol, **fields))

    async def ohlc(self, symbol: str, **fields) -> None:
        await self.send(
            {
                "channel": "ohlc",
                "type": "update",
                "timestamp": _stamp(),
                "data": [self.candle(symbol, **fields)],
            }
        )

    async def heartbeat(self) -> None:
        await self.send({"channel": "heartbeat"})

    async def drop(self) -> None:
        """Cut every connection abruptly: no close frame, as when the network fails."""
        for ws in list(self.clients):
            ws.transport.abort()
        self.clients.clear()
